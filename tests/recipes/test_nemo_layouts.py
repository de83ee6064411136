"""Their newer layout spellings (section objects with a `_target_`), their own config classes,
the kernel-only loss and the keys that only schedule communication, translated (in-process)."""

from __future__ import annotations

import pytest

from automodel.core.config import ConfigError, resolve_target
from automodel.core.config._nemo_compat import translate

RECIPE = "TrainFinetuneRecipeForNextTokenPrediction"
THEIRS = "nemo_automodel.components"


def test_their_section_objects_merge_into_distributed() -> None:
    """`distributed_config: FSDP2Config`, `autopipeline: PipelineConfig` and their MoE
    `parallelizer:` become keys of `distributed:` (the pipeline read as their subsection)."""
    data = {
        "recipe": RECIPE,
        "step_scheduler": {
            "global_batch_size": 16,
            "local_batch_size": 4,
            "loss_average_window_steps": 50,  # their rolling mean of the logged loss
        },
        "distributed": {
            "pp_size": 2,
            "ep_size": 1,
            # their VLM towers' sharding and frame splitting: where, not what, is computed
            "multimodal": {"frozen_sharding": "per_layer", "vision": {"frame_sharding": {}}},
        },
        "distributed_config": {
            "_target_": f"{THEIRS}.distributed.config.FSDP2Config",
            "sequence_parallel": False,
            "enable_fsdp2_prefetch": True,
            "fsdp2_backward_prefetch_depth": 2,
            "enable_async_tensor_parallel": False,
            "patch_is_packed_sequence": True,
            "enable_compile": True,
        },
        "autopipeline": {
            "_target_": f"{THEIRS}.distributed.pipelining.config.PipelineConfig",
            "pp_schedule": "interleaved1f1b",
            "pp_microbatch_size": 4,
            "layers_per_stage": 2,
            "patch_inner_model": False,
        },
        "parallelizer": {
            "_target_": f"{THEIRS}.moe.parallelizer.parallelize_model",
            "activation_checkpointing": True,
        },
    }
    t = translate(data, {"autopipeline.layers_per_stage": "cfg.yaml:12"}, "cfg.yaml", 4)
    assert t.data["distributed"] == {
        "pp_size": 2,
        "ep_size": 1,
        "strategy": "fsdp2",
        "sequence_parallel": False,
        "activation_checkpointing": True,
        "pp_schedule": "interleaved_1f1b",
        "pp_layers_per_stage": 2,
    }
    assert t.data["compile"] == {"enabled": True}  # their per-layer compile
    assert "loss_average_window_steps" not in t.data["step_scheduler"]
    assert not {"distributed_config", "autopipeline", "parallelizer"} & set(t.data)
    assert t.where["distributed.pp_layers_per_stage"] == "cfg.yaml:12"  # errors point there
    assert any("enable_fsdp2_prefetch dropped" in n for n in t.notes)
    assert any("multimodal dropped" in n for n in t.notes), t.notes
    assert any("parallelizer: merged into distributed" in n for n in t.notes)

    data["distributed_config"] = {
        "_target_": f"{THEIRS}.distributed.config.FSDP2Config",
        "pp_size": 4,  # says otherwise than distributed.pp_size
    }
    with pytest.raises(ConfigError) as info:
        translate(data, {}, "cfg.yaml", 4)
    assert [p.key for p in info.value.problems] == ["distributed_config.pp_size"]


def test_their_kernel_loss_and_config_classes() -> None:
    """TEParallelCrossEntropy is our masked CE (same sum, same normaliser); their config class
    of a family transformers has is transformers' class, which a config may call."""
    model = {
        "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_config",
        "config": {
            "_target_": f"{THEIRS}.models.deepseek_v4.config.DeepseekV4Config.from_pretrained",
            "pretrained_model_name_or_path": "/checkpoints/base",
            "num_nextn_predict_layers": 0,
        },
    }
    loss = {"_target_": f"{THEIRS}.loss.te_parallel_ce.TEParallelCrossEntropy", "reduction": "sum"}
    t = translate({"recipe": RECIPE, "model": model, "loss_fn": loss}, {}, "cfg.yaml", 1)
    assert t.data["loss_fn"] == {"_target_": "automodel.core.losses.MaskedCrossEntropy"}
    assert any("Transformer Engine" in n for n in t.notes)
    config = t.data["model"]["config"]
    assert config["_target_"] == "transformers.DeepseekV4Config.from_pretrained"
    assert config["num_nextn_predict_layers"] == 0
    resolved = resolve_target(config["_target_"])
    assert resolved.__self__.model_type == "deepseek_v4"
    # a config class named by its module path, as their configs sometimes do
    glm = resolve_target("transformers.models.glm4_moe_lite.configuration_glm4_moe_lite.Glm4MoeLiteConfig")  # fmt: skip
    assert glm.model_type == "glm4_moe_lite"

    ling = f"{THEIRS}.models.ling_v2.config.BailingMoeV2Config.from_pretrained"
    bad = {
        "recipe": RECIPE,
        "loss_fn": {**loss, "reduction": "mean"},
        "model": {**model, "config": {"_target_": ling}},
    }
    with pytest.raises(ConfigError) as info:
        translate(bad, {}, "cfg.yaml", 1)
    problems = {p.key: p.message for p in info.value.problems}
    assert "reduction='mean' is not supported" in problems["loss_fn.reduction"]
    assert "transformers has no BailingMoeV2 model class" in problems["model.config._target_"]


def test_their_loaders_and_mock_data() -> None:
    """A torch DataLoader target is our plain keys (its defaults written out); their mock
    datasets are random token rows (synthetic_text_dataset) with their defaults written out."""
    import inspect

    data = {
        "recipe": RECIPE,
        "dataloader": {"_target_": "torch.utils.data.DataLoader", "num_workers": 0},
    }
    t = translate(data, {}, "cfg.yaml", 1)
    assert t.data["dataloader"] == {"num_workers": 0, "shuffle": False, "drop_last": False}
    mock = f"{THEIRS}.datasets.llm.mock_iterable_dataset.MockIterableDataset"
    data["dataset"] = {"_target_": mock, "seq_len": 128, "vocab_size": 100}
    node = translate(data, {}, "cfg.yaml", 1).data["dataset"]
    assert node == {
        "_target_": "automodel.core.data.synthetic_text_dataset",
        "seq_length": 128,
        "vocab_size": 100,
        "num_samples": 1000000,  # their default
    }
    unpacked = {
        "_target_": f"{THEIRS}.datasets.llm.mock.build_unpacked_dataset",
        "mean_len": 4096,
        "std_len": 0,
        "max_sentence_len": 4096,
        "seed": 0,
    }
    node = translate({"recipe": RECIPE, "dataset": unpacked}, {}, "cfg.yaml", 1).data["dataset"]
    assert node == {
        "_target_": "automodel.core.data.synthetic_text_dataset",
        "seq_length": 4096,
        "length_std": 0,
        "max_length": 4096,
        "seed": 0,
        "num_samples": 10,
        "vocab_size": 100,
    }
    arguments = {k: v for k, v in node.items() if k != "_target_"}
    inspect.signature(resolve_target(node["_target_"])).bind(None, **arguments)
    data["dataset"] = {"_target_": mock, "batch_size": 4}
    with pytest.raises(ConfigError) as info:
        translate(data, {}, "cfg.yaml", 1)
    (problem,) = info.value.problems
    assert (
        problem.key == "dataset.batch_size" and "step_scheduler.local_batch_size" in problem.message
    )


def test_their_megatron_pretraining_reads_our_indexed_windows(tmp_path) -> None:
    """MegatronPretraining is `indexed_dataset`: a glob of their prefixes, their split string,
    and windows of their seq_length inputs plus the last target (seq_length + 1 tokens)."""
    from _shared import REPO

    from automodel.core.data import BlendedWindows

    their = {
        "_target_": f"{THEIRS}.datasets.llm.megatron_dataset.MegatronPretraining",
        "paths": str(REPO / "examples/llm_pretrain/assets/indexed/*"),
        "index_mapping_dir": str(tmp_path / "mapping"),
        "tokenizer": {"_target_": "nemo_automodel.NeMoAutoTokenizer.from_pretrained"},
        "seq_length": 16,
        "split": "0.9, 0.1, 0.0",
        "splits_to_build": "validation",
        "num_val_samples": 40,
    }
    loader = {
        "_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
        "collate_fn": "torch.utils.data.default_collate",
        "dataloader_type": "single",
    }
    data = {"recipe": RECIPE, "validation_dataset": their, "validation_dataloader": loader}
    t = translate(data, {}, "cfg.yaml", 1)
    node = t.data["validation_dataset"]
    assert node["_target_"] == "automodel.core.data.indexed_dataset"
    assert t.data["validation_dataloader"] == {"shuffle": False, "drop_last": False}
    args = {k: v for k, v in node.items() if k != "_target_"}
    assert args["seq_length"] == 17 and args["part"] == "validation" and args["seed"] == 1234
    dataset = resolve_target(node["_target_"])(**args)
    assert isinstance(dataset, BlendedWindows) and len(dataset) == 40
    assert len(dataset.datasets) == 2  # copy and reverse, both matched by the pattern
    assert dataset[0]["input_ids"].shape == (17,)
    loader["dataloader_type"] = "random"
    with pytest.raises(ConfigError, match="dataloader_type 'random'"):
        translate(data, {}, "cfg.yaml", 1)


def test_their_squad_padding_dataset_tokenizer_and_teacher_meshes() -> None:
    """SQuAD padded to `max_length` and truncated there is our truncation at seq_length (the
    padding is masked out); a dataset's own tokenizer becomes the run's; `separate_meshes`
    without the teacher's layout (teacher_distributed:) is refused by name."""
    squad = {
        "_target_": f"{THEIRS}.datasets.llm.squad.make_squad_dataset",
        "dataset_name": "rajpurkar/squad",
        "seq_length": 256,
        "padding": "max_length",
        "truncation": True,
        "tokenizer": {"pretrained_model_name_or_path": "org/their-tokenizer"},
    }
    model = {
        "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
        "pretrained_model_name_or_path": "/checkpoints/base",
    }
    val = {**squad, "truncation": False, "padding": False}
    data = {"recipe": RECIPE, "model": model, "dataset": squad, "validation_dataset": val}
    t = translate(data, {}, "cfg.yaml", 1)
    assert t.data["dataset"] == {
        "_target_": "automodel.core.data.squad_dataset",
        "path": "rajpurkar/squad",
        "seq_length": 256,
        "truncation": "truncate",
        "prompt_format": "nemo_automodel",
    }
    # without truncation their seq_length only pads: dropped
    assert "seq_length" not in t.data["validation_dataset"]
    assert t.data["tokenizer"] == {
        "_target_": "automodel.core.models.load_tokenizer",
        "path_or_name": "org/their-tokenizer",
    }
    data["tokenizer"] = {
        "_target_": "nemo_automodel.NeMoAutoTokenizer.from_pretrained",
        "pretrained_model_name_or_path": "org/another",
    }
    data["separate_meshes"] = True
    with pytest.raises(ConfigError) as info:
        translate(data, {}, "cfg.yaml", 1)
    keys = [p.key for p in info.value.problems]
    assert keys == ["separate_meshes", "dataset.tokenizer", "validation_dataset.tokenizer"]


def test_their_text_datasets_keep_their_tokens() -> None:
    """Their SQuAD, HellaSwag and column-mapped datasets are ours with `prompt_format:
    nemo_automodel` (their prompts, tokens and loss masks), their chat_template, chat-template
    switch and whole-text loss kept: arguments our builders take."""
    import inspect

    llm = f"{THEIRS}.datasets.llm"
    column = f"{llm}.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset"
    data = {
        "recipe": RECIPE,
        "dataset": {"_target_": f"{llm}.squad.make_squad_dataset", "chat_template": "t.jinja"},
        "validation_dataset": {
            "_target_": f"{llm}.hellaswag.HellaSwag",
            "path_or_dataset": "rowan/hellaswag",
            "pad_to_max_length": True,
        },
    }
    t = translate(data, {}, "cfg.yaml", 1).data
    theirs = {"prompt_format": "nemo_automodel"}
    assert t["dataset"] == {
        "_target_": "automodel.core.data.squad_dataset",
        "chat_template": "t.jinja",
        "path": "squad",
        **theirs,
    }
    assert t["validation_dataset"] == {
        "_target_": "automodel.core.data.hellaswag_dataset",
        "path": "rowan/hellaswag",
        **theirs,
    }
    data["dataset"] = {
        "_target_": column,
        "path_or_dataset_id": "rows.jsonl",
        "column_mapping": {"context": "c", "answer": "a"},
        "answer_only_loss_mask": False,
        "use_hf_chat_template": True,
    }
    t = translate(data, {}, "cfg.yaml", 1).data
    assert t["dataset"] == {
        "_target_": "automodel.core.data.instruction_dataset",
        "path": "rows.jsonl",
        "column_mapping": {"context": "c", "answer": "a"},
        "answer_only_loss": False,
        "use_chat_template": True,
        **theirs,
    }
    for node in (t["dataset"], t["validation_dataset"]):
        arguments = {k: v for k, v in node.items() if k != "_target_"}
        inspect.signature(resolve_target(node["_target_"])).bind(None, **arguments)


def test_their_vlm_datasets_collate_and_triton_lora() -> None:
    """RDR, CORD-v2 and Shopify are image_qa_dataset with their question and answer columns
    (CORD's parse as Donut tags); their Qwen2.5 collate is the recipe's own; their Triton
    LoRA with dropout after the adapter input is the plain path here."""
    vlm = f"{THEIRS}.datasets.vlm"
    data = {
        "recipe": "FinetuneRecipeForVLM",
        "dataset": {
            "_target_": f"{vlm}.datasets.make_cord_v2_dataset",
            "path_or_dataset": "/data/cord",
            "split": "train",
            "limit_dataset_samples": 100,
        },
        "validation_dataset": {"_target_": f"{vlm}.datasets.make_rdr_dataset"},
        "dataloader": {"collate_fn": {"_target_": f"{vlm}.collate_fns.qwen2_5_collate_fn"}},
        "peft": {
            "_target_": f"{THEIRS}._peft.lora.PeftConfig",
            "target_modules": ["*_proj"],
            "dropout": 0.1,
            "use_triton": True,
        },
    }
    t = translate(data, {}, "cfg.yaml", 1)
    qa = "automodel.core.data.image_qa_dataset"
    assert t.data["dataset"] == {
        "_target_": qa,
        "path": "/data/cord",
        "split": "train[:100]",
        "answer_column": "ground_truth",
        "answer_format": "donut",
        "question": "Describe this image.",
    }
    assert t.data["validation_dataset"] == {
        "_target_": qa,
        "path": "quintend/rdr-items",
        "answer_column": "text",
        "question": "Describe this image.",
    }
    assert "dataloader" not in t.data or "collate_fn" not in t.data["dataloader"]
    assert "use_triton" not in t.data["peft"] and t.data["peft"]["dropout_position"] == "post"
    data["dataset"] = {"_target_": f"{vlm}.datasets.make_shopify_product_catalogue_dataset"}
    data["peft"]["dropout_position"] = "pre"
    t = translate(data, {}, "cfg.yaml", 1)
    assert t.data["dataset"]["image_column"] == "product_image"
    assert t.data["dataset"]["answer_column"] == "ground_truth_category"
    assert t.data["peft"]["use_triton"] is True  # dropout before the adapter: our kernel's
    # their LLaVA-OneVision-1.5 collate takes the same steps as the Qwen2.5 one: ours too
    data["dataloader"] = {
        "collate_fn": {"_target_": f"{vlm}.collate_fns.llava_onevision_collate_fn"}
    }
    t = translate(data, {}, "cfg.yaml", 1)
    assert "dataloader" not in t.data or "collate_fn" not in t.data["dataloader"]


def test_their_gemma4_collate_and_processor_keys() -> None:
    """Their Gemma 4 collate is `collate.assistant_prefix` (its empty thinking channel, no loss
    on it); their target-less `processor:` keys go to the model's own processor."""
    gemma4 = f"{THEIRS}.datasets.vlm.collate_fns.gemma4_prefix_collate_fn"
    data = {
        "recipe": "FinetuneRecipeForVLM",
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained",
            "pretrained_model_name_or_path": "google/gemma-4-31B-it",
        },
        "processor": {"padding_side": "right"},
        "dataloader": {"collate_fn": {"_target_": gemma4}},
        "validation_dataloader": {"collate_fn": {"_target_": gemma4, "max_length": 4096}},
    }
    t = translate(data, {}, "cfg.yaml", 1)
    assert t.data["collate"] == {"assistant_prefix": "<|channel>thought\n<channel|>"}
    assert "processor" not in t.data  # the model's own, padded on the right as here
    assert not t.data.get("dataloader") and not t.data.get("validation_dataloader")
    data["processor"] = {"padding_side": "right", "max_pixels": 1003520}
    data["validation_dataloader"] = {
        "collate_fn": {"_target_": f"{THEIRS}.datasets.vlm.collate_fns.default_collate_fn"}
    }
    with pytest.raises(ConfigError) as info:
        translate(data, {}, "cfg.yaml", 1)
    assert [p.key for p in info.value.problems] == ["validation_dataloader.collate_fn"]
    del data["validation_dataloader"]
    t = translate(data, {}, "cfg.yaml", 1)
    assert t.data["processor"] == {
        "_target_": "automodel.core.models.load_processor",
        "path_or_name": "google/gemma-4-31B-it",
        "max_pixels": 1003520,
    }


def test_a_swapped_family_gets_a_moe_section_in_the_llm_and_vlm_recipes_only() -> None:
    """Their Qwen3.5 MoE class's aux loss: finetune.llm and finetune.vlm get a moe: section that
    keeps it; a recipe without one (the bi-encoder) trains the Hugging Face model as it is, so
    the config is refused there."""
    model = {
        "_target_": "nemo_automodel.NeMoAutoModelForImageTextToText.from_pretrained",
        "pretrained_model_name_or_path": "Qwen/Qwen3.5-35B-A3B",
    }
    t = translate({"recipe": "FinetuneRecipeForVLM", "model": model}, {}, "cfg.yaml", 1)
    assert t.recipe == "finetune.vlm" and t.data["moe"] == {"balancing": "nemo_automodel"}
    model["_target_"] = "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained"
    t = translate({"recipe": RECIPE, "model": model}, {}, "cfg.yaml", 1)
    assert t.data["moe"] == {"balancing": "nemo_automodel"}
    with pytest.raises(ConfigError) as info:
        translate({"recipe": "TrainBiEncoderRecipe", "model": model}, {}, "cfg.yaml", 1)
    assert "finetune.bi_encoder has no moe: section" in str(info.value)


def test_their_mixed_precision_policy_pipeline_dtype_and_no_validation() -> None:
    """`distributed.mp_policy` (torch's MixedPrecisionPolicy) is FSDP2's param and reduce
    dtypes here; `pipeline.dtype` equal to the compute dtype is dropped, another is an error;
    `validation_dataset: none` turns validation off, as there."""
    policy = {
        "_target_": "torch.distributed.fsdp.MixedPrecisionPolicy",
        "param_dtype": "bfloat16",
        "reduce_dtype": "float32",
        "output_dtype": "bfloat16",
        "cast_forward_inputs": True,
    }
    data = {
        "recipe": RECIPE,
        "model": {"pretrained_model_name_or_path": "x", "torch_dtype": "bf16"},
        "step_scheduler": {"global_batch_size": 8, "local_batch_size": 4},
        "distributed": {
            "pp_size": 2,
            "mp_policy": policy,
            "pipeline": {"pp_schedule": "1f1b", "dtype": "torch.bfloat16"},
        },
        "validation_dataset": "none",
        "validation_dataloader": "none",
    }
    t = translate(data, {}, "cfg.yaml", 4)
    dist = t.data["distributed"]
    assert (dist["mp_param_dtype"], dist["mp_reduce_dtype"]) == ("bfloat16", "float32")
    assert "mp_policy" not in dist and "pipeline" not in dist
    assert not {"validation_dataset", "validation_dataloader"} & set(t.data)
    assert any("pipeline.dtype: torch.bfloat16 dropped" in n for n in t.notes)

    data["distributed"]["pipeline"]["dtype"] = "float32"  # the blocks compute in bf16
    data["distributed"]["mp_policy"] = dict(policy, output_dtype="float32", foo=1)
    with pytest.raises(ConfigError) as info:
        translate(data, {}, "cfg.yaml", 4)
    assert sorted(p.key for p in info.value.problems) == [
        "distributed.mp_policy.foo",
        "distributed.mp_policy.output_dtype",
        "distributed.pipeline.dtype",
    ]


def test_mp_reduce_dtype_reaches_fsdp2() -> None:
    """`distributed.mp_reduce_dtype` is FSDP2's gradient-reduction dtype (default float32)."""
    import torch

    from automodel.core.config import ConfigNode
    from automodel.recipes._parallel import read_distributed, strategy_of

    for given, reduced in (({"mp_reduce_dtype": "bf16"}, torch.bfloat16), ({}, torch.float32)):
        dist = {"strategy": "fsdp2", "mp_param_dtype": "bf16", **given}
        cfg = ConfigNode({"distributed": dist})
        policy = strategy_of(cfg, read_distributed(cfg, world_size=2)[0]).mp_policy()
        assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, reduced)


def test_their_autopipeline_object_and_benchmark_json_path() -> None:
    """`autopipeline: {_target_: ...AutoPipeline}` reads as their PipelineConfig; the
    benchmark's `json_output_path` is our `summary_file`."""
    data = {
        "recipe": "BenchmarkingRecipeForNextTokenPrediction",
        "step_scheduler": {"global_batch_size": 8, "local_batch_size": 2, "max_steps": 5},
        "distributed": {"pp_size": 2},
        "autopipeline": {
            "_target_": f"{THEIRS}.distributed.pipelining.AutoPipeline",
            "pp_schedule": "1f1b",
            "layers_per_stage": 2,
        },
        "benchmark": {"seq_len": 64, "json_output_path": "logs/b.json"},
    }
    t = translate(data, {}, "cfg.yaml", 4)
    assert t.data["distributed"]["pp_layers_per_stage"] == 2
    assert t.data["benchmark"]["summary_file"] == "logs/b.json"
    assert "json_output_path" not in t.data["benchmark"]


def test_their_agent_and_xlam_datasets_are_tool_call_data() -> None:
    """make_agent_chat_dataset and make_xlam_dataset are tool_call_dataset in their format
    (their turn spans); filter_overlong drops what truncate_history cannot fit; a limit the
    split slice already gives is dropped; tool_call_eval and nvtx are dropped with notes."""
    import inspect

    llm = f"{THEIRS}.datasets.llm"
    data = {
        "recipe": RECIPE,
        "nvtx": False,
        "prewarm": {"mamba_ssd_autotune": True},
        "_validation_dataset": {"_target_": f"{llm}.hellaswag.HellaSwag"},  # switched off
        "dataset": {
            "_target_": f"{llm}.agent_chat.make_agent_chat_dataset",
            "dataset_name": "julien-c/synthtraces",
            "revision": "refs/convert/parquet",
            "filter_no_assistant": True,
            "filter_overlong": True,
            "trim_incomplete_last_turn": True,
            "truncate_history": True,
            "truncation": True,
            "seq_length": 8192,
            "chat_template": "t.jinja",
        },
        "validation_dataset": {
            "_target_": f"{llm}.xlam.make_xlam_dataset",
            "split": "train[:256]",
            "limit_dataset_samples": 256,
        },
        "tool_call_eval": {"_target_": f"{THEIRS}.eval.tool_call_evaluator.X", "split": "train"},
    }
    t = translate(data, {}, "cfg.yaml", 1)
    assert t.data["dataset"] == {
        "_target_": "automodel.core.data.tool_call_dataset",
        "path": "julien-c/synthtraces",
        "revision": "refs/convert/parquet",
        "trim_incomplete_last_turn": True,
        "truncate_history": True,
        "truncation": "drop",
        "seq_length": 8192,
        "chat_template": "t.jinja",
        "prompt_format": "nemo_automodel",
    }
    assert t.data["validation_dataset"] == {
        "_target_": "automodel.core.data.tool_call_dataset",
        "split": "train[:256]",
        "path": "Salesforce/xlam-function-calling-60k",
        "schema": "xlam",
        "prompt_format": "nemo_automodel",
    }
    assert not {"nvtx", "prewarm", "tool_call_eval", "_validation_dataset"} & set(t.data)
    assert any("tool-call accuracy evaluation is not run here" in n for n in t.notes)
    for node in (t.data["dataset"], t.data["validation_dataset"]):
        arguments = {k: v for k, v in node.items() if k != "_target_"}
        inspect.signature(resolve_target(node["_target_"])).bind(None, **arguments)

    data["dataset"] |= {"mask_reasoning_content": True, "filter_overlong": False}
    data["validation_dataset"]["limit_dataset_samples"] = 100  # fewer rows than the slice
    with pytest.raises(ConfigError) as info:
        translate(data, {}, "cfg.yaml", 1)
    assert sorted(p.key for p in info.value.problems) == [
        "dataset.mask_reasoning_content",
        "validation_dataset.limit_dataset_samples",
    ]


def test_their_mock_vlm_data_is_synthetic_image_chats() -> None:
    """build_mock_vlm_dataset: random-noise images and filler answers of their word count."""
    import inspect

    data = {
        "recipe": "FinetuneRecipeForVLM",
        "dataset": {
            "_target_": f"{THEIRS}.datasets.vlm.mock.build_mock_vlm_dataset",
            "num_samples": 16,
            "image_size": [896, 896],
            "max_length": 2048,
            "seed": 43,
            "pretokenize": False,
        },
    }
    node = translate(data, {}, "cfg.yaml", 1).data["dataset"]
    assert node == {
        "_target_": "automodel.core.data.synthetic_image_chat_dataset",
        "num_samples": 16,
        "image_size": [896, 896],
        "response_words": 2048,
        "seed": 43,
    }
    arguments = {k: v for k, v in node.items() if k != "_target_"}
    inspect.signature(resolve_target(node["_target_"])).bind(**arguments)


def test_their_chunked_loss_compile_switch_is_dropped_with_a_note() -> None:
    """ChunkedCrossEntropy(compile=...) there only chooses torch.compile for the same loss."""
    loss = {"_target_": f"{THEIRS}.loss.chunked_ce.ChunkedCrossEntropy", "compile": True}
    t = translate({"recipe": RECIPE, "loss_fn": loss}, {}, "cfg.yaml", 1)
    assert t.data["loss_fn"] == {"_target_": "automodel.core.losses.ChunkedCrossEntropy"}
    assert any("compile dropped" in note for note in t.notes), t.notes
