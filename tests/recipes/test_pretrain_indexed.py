"""pretrain.llm on Megatron indexed data and on a `datasets` stream: the examples train,
validate and resume exactly; `automodel preprocess` keeps an existing output."""

from __future__ import annotations

from pathlib import Path

from _shared import REPO

CONFIG = REPO / "examples/llm_pretrain/tiny_pretrain_indexed.yaml"
STREAMING = REPO / "examples/llm_pretrain/tiny_pretrain_streaming.yaml"
ASSETS = REPO / "examples/llm_pretrain/assets"
STEPS, MIDDLE = 6, 3


def overrides(run_dir: Path, *extra: str) -> list[str]:
    return [
        f"--step_scheduler.max_steps={STEPS}",
        f"--step_scheduler.ckpt_every_steps={MIDDLE}",
        f"--step_scheduler.val_every_steps={MIDDLE}",
        "--step_scheduler.log_every_steps=1",
        f"--logging.run_dir={run_dir}",
        f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        f"--dataset.index_cache_dir={run_dir}/index_cache",
        f"--validation_dataset.index_cache_dir={run_dir}/index_cache",
        "--logging.progress=false",
        "--lr_scheduler.warmup_steps=1",
        *extra,
    ]


def test_the_blend_trains_on_full_windows_and_resumes_exactly(
    tmp_path, run_recipe, jsonl_rows, resume_dir_from
) -> None:
    first = tmp_path / "first"
    recipe = run_recipe(CONFIG, overrides(first))
    rows = jsonl_rows(first / "training.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["num_label_tokens"] == 16 * 63 for r in rows)  # 64-token windows, no padding
    assert [r["step"] for r in jsonl_rows(first / "validation.jsonl")] == [0, MIDDLE, STEPS]
    shares = recipe.train_set.weights.tolist()
    assert [round(w, 6) for w in shares] == [0.7, 0.3]
    cached = sorted(p.suffix for p in (first / "index_cache").iterdir())
    assert cached == [".npy"] * 16  # per part: 2 datasets x 3 orders, the blend's 2 arrays

    second = tmp_path / "second"
    resume_dir_from(first, second, MIDDLE)
    run_recipe(CONFIG, overrides(second, "--checkpoint.restore_from=latest"))
    assert [r["loss"] for r in jsonl_rows(second / "training.jsonl")] == [r["loss"] for r in rows]


def test_automodel_preprocess_refuses_to_replace_an_output(tmp_path, capsys) -> None:
    """(The documented commands, run by tests/docs, write the example's shipped corpora byte
    for byte.) An existing output is kept unless --overwrite says otherwise."""
    from automodel.recipes.preprocess import main

    argv = ["-i", str(ASSETS / "copy_text.jsonl"), "-o", str(tmp_path / "copy"), "--tokenizer",
            str(REPO / "examples/llm_finetune/assets/tiny_tokenizer"), "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    first = (tmp_path / "copy.bin").read_bytes()
    assert (tmp_path / "copy.bin").read_bytes() == (ASSETS / "indexed/copy.bin").read_bytes()
    assert main(argv) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "copy.bin").read_bytes() == first
    assert main([*argv, "--overwrite"]) == 0


def test_the_stream_trains_and_resumes_exactly(
    tmp_path, run_recipe, jsonl_rows, resume_dir_from
) -> None:
    common = [
        f"--step_scheduler.max_steps={STEPS}",
        f"--step_scheduler.ckpt_every_steps={MIDDLE}",
        f"--step_scheduler.val_every_steps={MIDDLE}",
        "--step_scheduler.log_every_steps=1",
        "--logging.progress=false",
        "--lr_scheduler.warmup_steps=1",
    ]

    def where(run_dir: Path) -> list[str]:
        return [
            f"--logging.run_dir={run_dir}",
            f"--checkpoint.checkpoint_dir={run_dir}/checkpoints",
        ]

    first = tmp_path / "first"
    run_recipe(STREAMING, [*common, *where(first)])
    rows = jsonl_rows(first / "training.jsonl")
    assert all(r["num_label_tokens"] == 16 * 63 for r in rows)
    assert [r["step"] for r in jsonl_rows(first / "validation.jsonl")] == [0, MIDDLE, STEPS]
    second = tmp_path / "second"
    resume_dir_from(first, second, MIDDLE)
    run_recipe(STREAMING, [*common, *where(second), "--checkpoint.restore_from=latest"])
    assert [r["loss"] for r in jsonl_rows(second / "training.jsonl")] == [r["loss"] for r in rows]
