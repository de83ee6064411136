"""benchmark.llm: the summary's numbers agree with each other, warm-up and profiled steps are left
out, the profile window writes a Chrome trace, bad `benchmark:` values exit 2, the examples
validate, and the documented 2-process layouts (FSDP2 + LoRA, DDP, tp, cp, pp, MoE with ep)
run and report themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _shared import REPO

from automodel.core.training import dense_decoder_flops_per_token
from automodel.recipes.llm.benchmark import main

TINY = REPO / "examples/llm_benchmark/tiny_cpu.yaml"
EXAMPLES = ("tiny_cpu.yaml", "llama3_2_1b.yaml", "llama3_1_8b.yaml")
SEQ, GLOBAL_BATCH = 32, 4


def overrides(run_dir: Path, steps: int, warmup: int, *extra: str) -> list[str]:
    """A short run of the tiny example: `steps` steps of 4 rows x 32 tokens (2 x 2 accumulated)."""
    return [
        f"--logging.run_dir={run_dir}",
        "--+logging.progress=false",
        f"--benchmark.seq_length={SEQ}",
        f"--benchmark.warmup_steps={warmup}",
        f"--step_scheduler.global_batch_size={GLOBAL_BATCH}",
        "--step_scheduler.local_batch_size=2",
        f"--step_scheduler.max_steps={steps}",
        *extra,
    ]


def benchmark(run_dir: Path, steps: int, warmup: int, *extra: str) -> dict:
    """Run the tiny example in this process; its summary."""
    assert main(["-c", str(TINY), *overrides(run_dir, steps, warmup, *extra)]) == 0
    return json.loads((run_dir / "benchmark.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, monkeypatch_module) -> tuple[Path, dict]:
    """7 steps, 2 of them warm-up: 5 measured (an odd number: the median is one of them)."""
    run_dir = tmp_path_factory.mktemp("benchmark_tiny")
    return run_dir, benchmark(run_dir, 7, 2)


def test_summary_numbers_are_consistent(tiny):
    _, summary = tiny
    assert summary["world_size"] == 1 and summary["device"] == "cpu"
    assert summary["layout"]["strategy"] == "none" and summary["layout"]["lora"] is False
    assert summary["torch_version"] and summary["model"]["class"] == "LlamaForCausalLM"
    assert summary["model"]["parameters"] == summary["model"]["trainable_parameters"] > 0
    assert (summary["seq_length"], summary["global_batch_size"]) == (SEQ, GLOBAL_BATCH)
    assert summary["tokens_per_step"] == GLOBAL_BATCH * SEQ
    assert summary["grad_acc_steps"] == 2
    # warm-up left out: the statistics are those of the steps after it
    assert (summary["steps"], summary["measured_steps"]) == (7, 7 - 2)
    measured = summary["step_times_s"][2:]
    assert len(summary["step_times_s"]) == 7
    time = summary["step_time_s"]
    assert (time["min"], time["max"]) == (min(measured), max(measured))
    assert time["median"] == sorted(measured)[2]
    assert time["mean"] == pytest.approx(sum(measured) / 5)
    # tokens/s = tokens per step / step time; per GPU = over the world size
    tokens, tps = summary["tokens_per_step"], summary["tokens_per_s"]
    assert tps["median"] == pytest.approx(tokens / time["median"], rel=1e-9)
    assert tps["max"] == pytest.approx(tokens / time["min"], rel=1e-9)
    assert tps["min"] == pytest.approx(tokens / time["max"], rel=1e-9)
    assert summary["tokens_per_s_per_gpu"] == pytest.approx(tps)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(REPO / "examples/llm_finetune/assets/tiny_llama")
    assert summary["flops_per_token"] == dense_decoder_flops_per_token(config, SEQ)
    tflops = summary["tflops_per_gpu"]["median"]
    assert tflops == pytest.approx(tps["median"] * summary["flops_per_token"] / 1e12, rel=1e-9)
    assert summary["mfu"] is None and summary["peak_tflops_per_device"] is None  # CPU, no peak
    assert summary["peak_memory_gib"] > 0 and summary["profile"] is None


def test_every_step_is_a_training_jsonl_row(tiny):
    run_dir, summary = tiny
    rows = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert [r["step_time"] for r in rows] == summary["step_times_s"]
    for row in rows:
        assert row["tps"] == pytest.approx(summary["tokens_per_step"] / row["step_time"])
        assert row["num_label_tokens"] == GLOBAL_BATCH * (SEQ - 1)  # next-token labels
        assert row["loss"] > 0 and row["mfu"] is None


def test_profile_window_writes_a_chrome_trace_and_is_not_measured(tmp_path, monkeypatch_module):
    """In a run_dir that holds an earlier benchmark: its results are moved aside, not deleted."""
    (tmp_path / "training.jsonl").write_text('{"step": 1, "earlier": true}\n')
    (tmp_path / "benchmark.json").write_text('{"earlier": true}\n')
    summary = benchmark(
        tmp_path, 5, 1, "--benchmark.profile={start_step: 2, end_step: 3}",
        "--benchmark.peak_tflops=0.5",
    )  # fmt: skip
    trace = json.loads((tmp_path / "profile/trace_rank0.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert "aten::mm" in names and len(trace["traceEvents"]) > 100
    assert summary["profile"] == {"start_step": 2, "end_step": 3}
    assert summary["measured_steps"] == 2  # steps 4 and 5
    assert summary["step_time_s"]["max"] == max(summary["step_times_s"][3:])
    # a given peak: MFU on CPU too
    assert summary["peak_tflops_per_device"] == 0.5
    assert summary["mfu"]["median"] == pytest.approx(summary["tflops_per_gpu"]["median"] / 0.5)
    (earlier,) = (tmp_path / "previous").iterdir()
    assert (earlier / "training.jsonl").read_text() == '{"step": 1, "earlier": true}\n'
    assert json.loads((earlier / "benchmark.json").read_text()) == {"earlier": True}
    assert "earlier" not in (tmp_path / "training.jsonl").read_text()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--benchmark.seq_length=0", "benchmark.seq_length: expected an integer >= 1, got 0"),
        ("--benchmark.warmup_steps=-1", "benchmark.warmup_steps: expected an integer >= 0"),
        ("--benchmark.warmup_steps=15", "15 warm-up steps leave none of max_steps 15"),
        ("--benchmark.peak_tflops=0", "benchmark.peak_tflops: expected TFLOP/s per device"),
        ("--benchmark.profile={start_step: 4, end_step: 3}", "1 <= start_step <= end_step"),
        ("--benchmark.profile={start_step: 4, end_step: 16}", "got start_step 4, end_step 16"),
        ("--benchmark.profile={start: 4}", "expected {start_step: N, end_step: M}"),
        ("--+benchmark.warmup=1", "benchmark takes no argument 'warmup'"),
        ("--step_scheduler.max_steps=null", "a benchmark runs a fixed number of steps"),
        ("--+checkpoint.save_final=false", "checkpoint: unknown section"),
        ("--+dataset.seq_length=8", "dataset: unknown section"),
    ],
)
def test_bad_values_exit_2_with_the_key_and_what_was_expected(override, expected, capsys):
    assert main(["--validate-only", "-c", str(TINY), override]) == 2
    err = capsys.readouterr().err
    assert f"command line ({override})" in err and expected in err, err
    assert "Traceback" not in err


def test_context_parallel_needs_a_length_that_splits(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # validated for 2 processes, as `automodel validate` does
    argv = ["--validate-only", "-c", str(TINY), "--+distributed.cp_size=2"]
    assert main([*argv, "--benchmark.seq_length=128"]) == 0, capsys.readouterr().err
    assert main([*argv, "--benchmark.seq_length=126"]) == 2
    err = capsys.readouterr().err
    assert "benchmark.seq_length" in err and "2 x cp_size = 4 chunks" in err, err


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_validate_offline(example, monkeypatch_module, capsys):
    config = REPO / "examples/llm_benchmark" / example
    assert main(["--validate-only", "-c", str(config)]) == 0, capsys.readouterr().err
    assert "config OK" in capsys.readouterr().out


# docs/benchmark_recipe.md's 2-process layouts (their overrides as documented), in one launch:
# (processes, overrides), and the layout the summary must report.
LORA = "--+peft={_target_: automodel.peft.LoraConfig, match_all_linear: true, dim: 8}"
MOE_EP = [
    "--model.config=examples/llm_finetune/assets/tiny_qwen3_moe",
    "--moe.balancing=aux_loss",
    "--distributed.ep_size=2",
]
LAYOUTS = {
    "fsdp2_lora": (2, [LORA, "--+distributed.strategy=fsdp2"]),
    "ddp": (2, ["--distributed.strategy=ddp"]),
    "tp": (2, ["--distributed.tp_size=2"]),
    "cp": (2, ["--distributed.cp_size=2"]),
    "pp": (2, ["--distributed.pp_size=2"]),
    "moe_ep": (2, MOE_EP),
}
REPORTED = {  # layout -> what benchmark.json's "layout" says of it
    "fsdp2_lora": {"strategy": "fsdp2", "dp_size": 2, "lora": True},
    "ddp": {"strategy": "ddp", "dp_size": 2, "lora": False},
    "tp": {"tp_size": 2, "dp_size": 1},
    "cp": {"cp_size": 2, "dp_size": 1},
    "pp": {"pp_size": 2, "dp_size": 1},
    "moe_ep": {"ep_size": 2, "dp_size": 2, "moe": True},
}
STEPS, WARMUP = 3, 1


@pytest.fixture(scope="module")
def launched(tmp_path_factory, pooled_layouts):
    """`launched(layout)`: (run dir, stderr) of LAYOUTS, all in one torchrun launch."""
    run = lambda run_dir, *extra: overrides(run_dir, STEPS, WARMUP, *extra)  # noqa: E731
    return pooled_layouts(tmp_path_factory, "bench", TINY, LAYOUTS, run, ("benchmark", "llm"))


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_process_layouts_report_their_layout_and_per_device_rates(layout, launched):
    """Each documented 2-process layout runs its steps and reports itself: the layout, the
    world size, every step's row, the per-device rate as half the whole."""
    run_dir, _ = launched(layout)
    summary = json.loads((run_dir / "benchmark.json").read_text())
    assert summary["world_size"] == 2
    assert {k: summary["layout"][k] for k in REPORTED[layout]} == REPORTED[layout]
    if summary["layout"]["lora"]:
        assert 0 < summary["model"]["trainable_parameters"] < summary["model"]["parameters"]
    assert summary["tokens_per_step"] == GLOBAL_BATCH * SEQ
    assert (summary["steps"], summary["measured_steps"]) == (STEPS, STEPS - WARMUP)
    tps = summary["tokens_per_s"]["median"]
    assert summary["tokens_per_s_per_gpu"]["median"] == pytest.approx(tps / 2)
    rows = [json.loads(line) for line in (run_dir / "training.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(0 < r["loss"] < 20 for r in rows)  # a real, finite cross-entropy over 128 ids
