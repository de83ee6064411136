"""finetune.vlm: the tiny LLaVA example trains, checkpoints load in transformers, peft and the
recipe again; freeze keys, LoRA on the language model, and errors that name the row and file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _shared import REPO
from safetensors.torch import load_file

from automodel.core.data import DataError, image_chat_dataset

VLM = REPO / "examples/vlm_finetune/tiny_vlm.yaml"
VLM_ASSETS = REPO / "examples/vlm_finetune/assets"
STEPS, MIDDLE = 6, 3


def head_with_absolute_images(name: str, dst: Path, lines: int) -> Path:
    """The first `lines` rows of an example file, its image paths made absolute."""
    rows = [json.loads(line) for line in (VLM_ASSETS / name).read_text().splitlines()[:lines]]
    for row in rows:
        for part in row["messages"][0]["content"]:
            if part["type"] == "image":
                part["image"] = str(VLM_ASSETS / part["image"])
    dst.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return dst


@pytest.fixture(scope="module")
def vlm_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vlm_data")
    head_with_absolute_images("train.jsonl", root / "train.jsonl", 64)
    head_with_absolute_images("validation.jsonl", root / "val.jsonl", 8)
    return root


def vlm_overrides(run_dir: Path, data: Path, *extra: str) -> list[str]:
    """6 steps of global batch 8 (local 2, 4 micro-batches), validation and a checkpoint at
    steps 3 and 6."""
    return [
        "--step_scheduler.global_batch_size=8",
        "--step_scheduler.local_batch_size=2",
        f"--step_scheduler.max_steps={STEPS}",
        f"--step_scheduler.val_every_steps={MIDDLE}",
        f"--step_scheduler.ckpt_every_steps={MIDDLE}",
        "--step_scheduler.log_every_steps=1",
        f"--dataset.path={data / 'train.jsonl'}",
        f"--validation_dataset.path={data / 'val.jsonl'}",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        "--logging.progress=false",
        "--lr_scheduler.warmup_steps=1",
        *extra,
    ]


def run_vlm(overrides: list[str]) -> Any:
    """The VLM recipe set up and trained in this process; the recipe."""
    from automodel.core.config import load_config
    from automodel.recipes.vlm import SECTIONS, FinetuneRecipeForVLM

    recipe = FinetuneRecipeForVLM(load_config(VLM, overrides, sections=SECTIONS))
    recipe.setup()
    recipe.run_train_validation_loop()
    return recipe


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, vlm_data, monkeypatch_module) -> tuple[Path, Any]:
    run_dir = tmp_path_factory.mktemp("vlm_one")
    recipe = run_vlm(vlm_overrides(run_dir, vlm_data))
    return run_dir, recipe


def test_the_example_trains_validates_and_saves_a_folder_transformers_loads(one_process):
    """Rows for every step, validation with the answer accuracy, and a checkpoint that
    AutoModelForImageTextToText + AutoProcessor load and generate from, with our weights."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from automodel.core.data import VisionChatCollator

    run_dir, recipe = one_process
    rows = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    val = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [0, MIDDLE, STEPS]
    assert all(0.0 <= r["answer/accuracy"] <= 1.0 for r in val)
    assert val[-1]["loss"] < val[0]["loss"]
    folder = run_dir / f"checkpoints/epoch_0_step_{STEPS}/model"
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    ours = {k: v.detach() for k, v in recipe.unwrapped.state_dict().items()}
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, ours[name], msg=name)
    sample = image_chat_dataset(VLM_ASSETS / "validation.jsonl")[0]
    prompt = sample["messages"][:1]
    text = processor.apply_chat_template(prompt, add_generation_prompt=True)
    inputs = processor(
        text=text, images=sample["images"], add_special_tokens=False, return_tensors="pt"
    )
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    # the saved processor batches exactly as the one trained with
    batch = VisionChatCollator(processor)([sample])
    reference = VisionChatCollator(recipe.preprocessor)([sample])
    assert batch.keys() == reference.keys()
    for key in batch:
        torch.testing.assert_close(batch[key], reference[key], msg=key)


def test_a_run_resumes_exactly_from_its_middle_checkpoint(
    one_process, vlm_data, tmp_path, monkeypatch_module, resume_dir_from
):
    """Restarted from step 3, the run repeats steps 4-6 and ends with the same weights."""
    reference, _ = one_process
    resume_dir_from(reference, tmp_path, MIDDLE)
    run_vlm(vlm_overrides(tmp_path, vlm_data, "--checkpoint.restore_from=latest"))
    rows = [json.loads(line) for line in (tmp_path / "training.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (reference / "training.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]
    final = f"checkpoints/epoch_0_step_{STEPS}/model/model.safetensors"
    ours, theirs = load_file(tmp_path / final), load_file(reference / final)
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "key", ["vision_tower", "multimodal_projector", "language_model", "embeddings"]
)
def test_each_freeze_key_stops_exactly_its_parameters(key, monkeypatch_module):
    """freeze.<key> turns off gradients for that part's parameters and no others."""
    from automodel.core.config import ConfigNode
    from automodel.core.models import AutoModelForImageTextToText
    from automodel.recipes import Freeze
    from automodel.recipes._freeze import apply_freeze

    model = AutoModelForImageTextToText.from_config(VLM_ASSETS / "tiny_llava", seed=0)
    prefix = {
        "vision_tower": "model.vision_tower.",
        "multimodal_projector": "model.multi_modal_projector.",
        "language_model": "model.language_model.",
        "embeddings": "model.language_model.embed_tokens.",
    }[key]
    apply_freeze(model, Freeze(**{key: True}), ConfigNode({}))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def test_freezing_a_part_a_model_lacks_names_the_key(monkeypatch_module, tiny_llama_config):
    from transformers import AutoModelForCausalLM

    from automodel.core.config import ConfigError, ConfigNode
    from automodel.recipes import Freeze
    from automodel.recipes._freeze import apply_freeze

    model = AutoModelForCausalLM.from_config(tiny_llama_config())
    with pytest.raises(ConfigError, match="has no vision tower to freeze") as info:
        apply_freeze(model, Freeze(vision_tower=True), ConfigNode({}))
    assert info.value.problems[0].key == "freeze.vision_tower"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, vlm_data, monkeypatch_module) -> tuple[Path, Any]:
    run_dir = tmp_path_factory.mktemp("vlm_lora")
    peft = [
        "--+peft._target_=automodel.peft.LoraConfig",
        "--+peft.match_all_linear=true",
        "--+peft.dim=4",
        "--optimizer.lr=3e-2",
    ]
    return run_dir, run_vlm(vlm_overrides(run_dir, vlm_data, *peft))


def test_lora_trains_the_language_model_only_and_peft_loads_the_adapter(lora_run):
    """match_all_linear adapts the language model's linear layers, never the vision tower or
    the projector; peft loads the saved adapter onto the base and gives our logits."""
    from peft import PeftModel

    from automodel.core.data import VisionChatCollator
    from automodel.core.models import AutoModelForImageTextToText

    run_dir, recipe = lora_run
    adapted = {
        n.rsplit(".lora_", 1)[0] for n, _ in recipe.unwrapped.named_parameters() if ".lora_" in n
    }
    assert adapted and all(n.startswith("model.language_model.") for n in adapted), adapted
    trained = {n for n, p in recipe.unwrapped.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    folder = run_dir / f"checkpoints/epoch_0_step_{STEPS}/model"
    assert (folder / "adapter_config.json").is_file()
    base = AutoModelForImageTextToText.from_config(VLM_ASSETS / "tiny_llava", seed=1234)
    loaded = PeftModel.from_pretrained(base, folder).eval()
    batch = VisionChatCollator(recipe.preprocessor)(
        [recipe.val_loader.dataset[i] for i in range(2)]
    )
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        want = recipe.unwrapped.eval()(**inputs).logits
        got = loaded(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_missing_and_unreadable_images_name_the_row_and_file(tmp_path):
    good = VLM_ASSETS / "images/train/00000.png"
    rows = [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": str(good)}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "nope.png"}]}]},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"sample 1: image file not found: .*nope\.png"):
        image_chat_dataset(path)
    (tmp_path / "nope.png").write_bytes(b"not a png")
    data = image_chat_dataset(path)
    assert data[0]["images"][0].size == (32, 32)
    with pytest.raises(DataError, match=r"sample 1: cannot read image .*nope\.png"):
        data[1]
    rows[1]["messages"][0]["content"][0]["image"] = "https://example.com/cat.png"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        DataError, match=r"sample 1: image 'https://example\.com/cat\.png' is a URL"
    ):
        image_chat_dataset(path)


def test_without_pillow_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r"pip install 'automodel-core\[vision\]'"):
        image_chat_dataset(VLM_ASSETS / "validation.jsonl")


def test_layouts_vlms_lack_yet_are_config_errors(monkeypatch_module):
    from automodel.core.config import ConfigError, load_config
    from automodel.recipes.vlm import SECTIONS
    from automodel.recipes.vlm.finetune import check

    cfg = load_config(VLM, ["--+distributed.cp_size=2"], sections=SECTIONS)
    monkeypatch_module.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="cp_size > 1 is not supported for VLMs yet"):
        check(cfg)
    monkeypatch_module.delenv("WORLD_SIZE")


@pytest.fixture(scope="module")
def moe_vlm(tmp_path_factory) -> Path:
    """The tiny LLaVA with a Qwen3-MoE language model (the LLM example's, 8 experts, top-2)
    over the example's 32-token vocabulary: a folder of its config."""
    folder = tmp_path_factory.mktemp("tiny_llava_moe")
    config = json.loads((VLM_ASSETS / "tiny_llava/config.json").read_text())
    text = json.loads(
        (REPO / "examples/llm_finetune/assets/tiny_qwen3_moe/config.json").read_text()
    )
    keep = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
    config["text_config"] = {**text, **{k: config["text_config"][k] for k in keep}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def moe_overrides(folder: Path, balancing: str) -> list[str]:
    return [f"--model.config={folder}", f"--+moe={{balancing: {balancing}}}"]


@pytest.fixture(scope="module")
def moe_one_process(tmp_path_factory, vlm_data, moe_vlm, monkeypatch_module) -> Path:
    """The MoE VLM without balancing loss in this process: the run expert parallelism matches
    (the aux loss is per micro-batch, and 2 ranks group the samples otherwise)."""
    run_dir = tmp_path_factory.mktemp("vlm_moe_one")
    run_vlm(vlm_overrides(run_dir, vlm_data, *moe_overrides(moe_vlm, "none")))
    return run_dir


def test_moe_blocks_of_the_language_model_train_with_the_aux_loss(
    vlm_data, moe_vlm, tmp_path, monkeypatch_module
):
    """`moe:` in finetune.vlm: the language model's MoE blocks are automodel.moe's (the vision
    tower untouched), trained with the aux loss and reported; the checkpoint loads in plain
    transformers (its own MoE blocks) with the same logits."""
    from transformers import AutoModelForImageTextToText

    recipe = run_vlm(vlm_overrides(tmp_path, vlm_data, *moe_overrides(moe_vlm, "aux_loss")))
    blocks = [n for n, m in recipe.unwrapped.named_modules() if type(m).__name__ == "MoE"]
    assert len(blocks) == 2 and all(".language_model." in n for n in blocks), blocks
    rows = [json.loads(line) for line in (tmp_path / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["moe/aux_loss"] > 0 and r["moe/imbalance_max"] >= 1.0 for r in rows)
    folder = tmp_path / f"checkpoints/epoch_0_step_{STEPS}/model"
    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(loaded.model.language_model.layers[0].mlp).__name__ == "Qwen3MoeSparseMoeBlock"
    batch = next(iter(recipe.val_loader))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    recipe.unwrapped.eval()
    with torch.no_grad():
        ours, theirs = recipe.unwrapped(**inputs).logits, loaded(**inputs).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


FUSED = "automodel.core.losses.FusedLinearCrossEntropy"
LAYOUTS = {  # 2 processes each, in one launch; moe_ep with its own model (see moe_vlm)
    "fsdp2": (2, ["--distributed.strategy=fsdp2"]),
    "ddp": (2, ["--distributed.strategy=ddp"]),
    "moe_ep": (2, ["--distributed.strategy=fsdp2", "--+distributed.ep_size=2"]),
    "tp": (2, ["--distributed.strategy=fsdp2", "--+distributed.tp_size=2"]),
    # the fused loss's model is the FSDP2 root: its forward gives validation logits too
    "fused_fsdp2": (2, ["--distributed.strategy=fsdp2", f"--+loss_fn={{_target_: {FUSED}}}"]),
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory, vlm_data, moe_vlm, pooled_layouts):
    """`launched(layout)`: (run dir, stderr) of LAYOUTS, all in one torchrun launch."""

    def overrides(run_dir: Path, *extra: str) -> list[str]:
        moe = moe_overrides(moe_vlm, "none") if "--+distributed.ep_size=2" in extra else []
        return vlm_overrides(run_dir, vlm_data, *moe, *extra)

    return pooled_layouts(tmp_path_factory, "vlm", VLM, LAYOUTS, overrides, ("finetune", "vlm"))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_ranks_train_as_one_process(
    layout, launched, one_process, moe_one_process, assert_same_training
):
    """2 data-parallel ranks (each half of every global batch) give one process's losses,
    gradient norms, validation and final weights; DDP lets the vision tower's unused norm be;
    with MoE blocks, each rank holds 4 of every layer's 8 experts (the saved weights whole);
    with tp 2, the language model's layers are split over both ranks (its tensor-parallel plan)
    and the vision tower replicated; with the fused loss, the same training as the
    cross-entropy, validation's answer accuracy included."""
    run_dir, stderr = launched(layout)
    strategy = "ddp" if layout == "ddp" else "fsdp2"
    dp_size = 1 if layout == "tp" else 2
    assert f"data parallel: {strategy} over 2 process(es) (rank 0 of {dp_size})" in stderr
    assert ("tensor parallel 2" in stderr) == (layout == "tp")
    assert ("expert parallel 2" in stderr) == (layout == "moe_ep")
    reference = moe_one_process if layout == "moe_ep" else one_process[0]
    assert_same_training(run_dir, reference, range(1, STEPS + 1), MIDDLE)
    val, val_ref = (
        [json.loads(line)["answer/accuracy"] for line in (d / "validation.jsonl").open()]
        for d in (run_dir, reference)
    )
    assert val == val_ref


def test_vqa_rows_from_jsonl_and_from_a_parquet_image_feature(tmp_path):
    """image_qa_dataset: (image, question, answer) rows as one-turn conversations, from a
    JSONL of paths and from parquet with a `datasets` Image feature, decoded when read."""
    import datasets

    from automodel.core.data import image_qa_dataset

    files = [VLM_ASSETS / f"images/validation/0000{i}.png" for i in range(2)]
    rows = [{"img": str(f), "q": f"question {i}", "a": f"answer {i}"} for i, f in enumerate(files)]
    path = tmp_path / "vqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "vqa.parquet"
    table = datasets.Dataset.from_list(rows).cast_column("img", datasets.Image())
    table.to_parquet(str(parquet))
    for source in (path, parquet):
        data = image_qa_dataset(source, image_column="img", question_column="q", answer_column="a")
        item = data[1]
        assert item["messages"] == [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "question 1"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "answer 1"}]},
        ]
        (image,) = item["images"]
        assert image.mode == "RGB" and image.size == (32, 32)
        from PIL import Image

        with Image.open(files[1]) as expected:
            assert list(image.getdata()) == list(expected.convert("RGB").getdata())
    with pytest.raises(DataError, match="missing columns 'question', 'answer'; the dataset has"):
        image_qa_dataset(path, image_column="img")


def test_one_question_for_every_row_and_donut_parses(tmp_path):
    """`question` asks every row the same; `answer_format: donut` writes a CORD-style ground
    truth (JSON text with gt_parse) as Donut's tags, keys in reverse order, lists by <sep/>."""
    from automodel.core.data import image_qa_dataset

    image = str(VLM_ASSETS / "images/validation/00000.png")
    parse = {"menu": [{"nm": "tea", "cnt": "2"}, {"nm": "cake"}], "total": {"price": "9"}}
    rows = [
        {"image": image, "ground_truth": json.dumps({"gt_parse": parse, "meta": {}})},
        {"image": image, "ground_truth": json.dumps({"valid_line": []})},
    ]
    path = tmp_path / "receipts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = image_qa_dataset(
        path, answer_column="ground_truth", question="Describe this image.", answer_format="donut"
    )
    user, answer = data[0]["messages"]
    assert user["content"][1] == {"type": "text", "text": "Describe this image."}
    assert answer["content"][0]["text"] == (
        "<s_total><s_price>9</s_price></s_total>"
        "<s_menu><s_nm>tea</s_nm><s_cnt>2</s_cnt><sep/><s_nm>cake</s_nm></s_menu>"
    )
    with pytest.raises(DataError, match="sample 1: answer_format donut needs a JSON object"):
        data[1]
    with pytest.raises(DataError, match="answer_format must be one of text, donut"):
        image_qa_dataset(path, answer_column="ground_truth", question="q", answer_format="xml")


def test_chat_rows_from_parquet_take_images_from_the_images_column(tmp_path):
    """image_chat_dataset on parquet with a `datasets` Image list column: each image part
    without a file takes the row's next image, in order."""
    import datasets
    from PIL import Image

    files = [VLM_ASSETS / f"images/validation/0000{i}.png" for i in range(3)]
    question = {"type": "text", "text": "same or different?"}
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "image"}, question]},
                {"role": "assistant", "content": [{"type": "text", "text": "different"}]},
            ],
            "images": [str(files[0]), str(files[2])],
        }
    ]
    features = datasets.Features(
        {
            "messages": [
                {
                    "role": datasets.Value("string"),
                    "content": [
                        {"type": datasets.Value("string"), "text": datasets.Value("string")}
                    ],
                }
            ],
            "images": datasets.Sequence(datasets.Image()),
        }
    )
    parquet = tmp_path / "chat.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(parquet))
    item = image_chat_dataset(parquet)[0]
    assert [p["type"] for p in item["messages"][0]["content"]] == ["image", "image", "text"]
    for image, file in zip(item["images"], [files[0], files[2]], strict=True):
        with Image.open(file) as expected:
            assert list(image.getdata()) == list(expected.convert("RGB").getdata())


@pytest.mark.slow  # two real training processes
def test_sigterm_saves_after_the_step_and_the_same_command_finishes_the_run(vlm_data, tmp_path):
    """A real `automodel finetune vlm` process: SIGTERM finishes the step, saves, exits 0; the
    identical command continues from that step to the end without repeating a row."""
    import signal
    import subprocess
    import time

    from automodel.checkpoint import Checkpointer, read_checkpoint_info

    automodel = Path(sys.executable).with_name("automodel")
    overrides = vlm_overrides(tmp_path, vlm_data, "--step_scheduler.max_steps=60")
    command = [str(automodel), "finetune", "vlm", "-c", str(VLM), *overrides]
    log = tmp_path / "training.jsonl"

    def steps() -> list[int]:
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line)["step"] for line in lines if line.strip()]

    proc = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(steps()) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    stopped = steps()[-1]
    assert proc.returncode == 0 and stopped < 60, err[-3000:]
    assert f"stopped by SIGTERM after step {stopped}" in err
    latest = Checkpointer(tmp_path / "checkpoints").latest()
    assert latest is not None and read_checkpoint_info(latest).step == stopped
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {stopped}" in again.stderr
    assert steps() == list(range(1, 61))


def test_synthetic_images_train_without_data(tmp_path, monkeypatch_module):
    """synthetic_image_chat_dataset (their mock VLM data's equivalent): random-noise images of
    the size asked and filler answers of the length asked, the same sample for the same index
    and seed, through the recipe like any image chat data."""
    from automodel.core.data import synthetic_image_chat_dataset

    data = synthetic_image_chat_dataset(
        6, num_images_per_sample=2, image_size=[40, 24], response_words=7, seed=3
    )
    item = data[4]
    assert [im.size for im in item["images"]] == [(40, 24), (40, 24)]
    assert [p["type"] for p in item["messages"][0]["content"]] == ["image", "image", "text"]
    assert len(item["messages"][1]["content"][0]["text"].split()) == 7
    again = synthetic_image_chat_dataset(6, num_images_per_sample=2, image_size=[40, 24], response_words=7, seed=3)[4]  # fmt: skip
    assert again["messages"] == item["messages"]
    assert all(
        a.tobytes() == b.tobytes() for a, b in zip(again["images"], item["images"], strict=True)
    )
    other = synthetic_image_chat_dataset(6, image_size=[40, 24], response_words=7, seed=4)[4]
    assert other["images"][0].tobytes() != item["images"][0].tobytes()
    with pytest.raises(DataError, match=r"image_size must be \[width, height\]"):
        synthetic_image_chat_dataset(2, image_size=[32])

    synthetic = [
        "--dataset._target_=automodel.core.data.synthetic_image_chat_dataset",
        "--~dataset.path",
        "--+dataset.num_samples=16",
        "--+dataset.image_size=[32,32]",
        "--+dataset.response_words=6",
        "--~validation_dataset",
    ]
    overrides = [
        o
        for o in vlm_overrides(tmp_path, tmp_path, *synthetic)
        if not o.startswith(("--dataset.path", "--validation_dataset.path", "--step_scheduler.v"))
    ]
    recipe = run_vlm([*overrides, "--step_scheduler.max_steps=2"])
    assert len(recipe.train_set) == 16
    rows = [json.loads(line) for line in (tmp_path / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] > 0 for r in rows)


def test_the_fused_loss_trains_as_the_cross_entropy(one_process, vlm_data, tmp_path):
    """FusedLinearCrossEntropy on the VLM (their Qwen3.5 config's loss): the image features go
    through the multimodal model before the fused head; the same losses, validation losses and
    answer accuracy as the plain cross-entropy, step for step."""
    fused = f"--+loss_fn={{_target_: {FUSED}}}"
    recipe = run_vlm(vlm_overrides(tmp_path, vlm_data, fused))
    assert type(recipe.model).__name__ == "FusedLossModel"
    reference, _ = one_process
    for log in ("training.jsonl", "validation.jsonl"):
        ours, theirs = (
            [json.loads(line) for line in (d / log).read_text().splitlines()]
            for d in (tmp_path, reference)
        )
        assert [r["step"] for r in ours] == [r["step"] for r in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (log, a["step"])
            assert a.get("answer/accuracy") == b.get("answer/accuracy")
