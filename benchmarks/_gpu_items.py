"""The GPU suite's checks and kernel items: the CUDA-only tests, and the GPU runs of
loss_memory.py, moe_layer.py and lora_triton.py (each called through its own `main`, at the
sizes below; under --smoke at tiny ones on CPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import lora_triton
import loss_memory
from _gpu_common import Context, NeedsCuda, row

REPO = Path(__file__).resolve().parents[1]
# Skipped without CUDA, or run on CPU there: here they run on the GPU (the recipe's device is
# "auto"). The resume test trains with attention dropout, so it draws from the CUDA generator
# and checks that a run resumed from a checkpoint continues bitwise (CUDA RNG state included).
# The sync test counts, on CUDA, what torch.cuda's sync debug mode reports during four steps.
# The Triton test comes last: it compiles and autotunes many kernels, and a per-test time limit
# (pytest-timeout, preinstalled there) keeps it from costing the others' results.
CUDA_TESTS = (
    "tests/core/test_losses.py::test_fused_matches_masked_on_cuda",
    "tests/core/test_training.py::test_cuda_rng_state_round_trip",
    "tests/core/test_training.py::test_mfu_and_peak_flops",
    "tests/recipes/test_llm_resume.py::test_stop_at_step_3_and_resume_is_bitwise_identical",
    "tests/recipes/test_step_sync.py::test_no_step_reads_a_tensor_until_the_log_step_reads_them_all",
    "tests/peft/test_triton_lora.py::test_fused_matches_plain_on_cuda",
)
TEST_LIMIT_S = 90  # per test


def _defined(node: str) -> bool:
    """Whether a test node id's file defines its test function."""
    path, name = node.split("::")
    file = REPO / path
    return file.is_file() and f"def {name}(" in file.read_text()


def _junit(path: Path) -> dict[str, dict[str, str]]:
    """Each test of a JUnit XML report: its outcome, seconds and message."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error"}.get(child.tag, "skipped")
                message = (child.get("message") or child.text or "")[:2000]
        out[f"{case.get('classname')}::{case.get('name')}"] = {
            "outcome": outcome,
            "seconds": case.get("time", ""),
            "message": message,
        }
    return out


def cuda_tests(ctx: Context) -> dict[str, Any]:
    """Run the CUDA-only tests with pytest (--smoke: check that they still exist)."""
    missing = [node for node in CUDA_TESTS if not _defined(node)]
    if missing:
        raise RuntimeError(f"test(s) not found, update CUDA_TESTS: {missing}")
    if ctx.smoke:
        figure = "CUDA tests found (not run without CUDA)"
        return {"rows": [row(figure, len(CUDA_TESTS), "tests")], "details": {"tests": CUDA_TESTS}}
    junit = ctx.work / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"]
    if importlib.util.find_spec("pytest_timeout"):  # a test over its limit fails, the rest run
        cmd += [f"--timeout={TEST_LIMIT_S}", "-o", "timeout_method=signal"]
    proc = subprocess.run(
        [*cmd, f"--junitxml={junit}", *CUDA_TESTS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=max(1.0, ctx.remaining() - 5),
    )
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n")
    if not junit.exists():
        raise RuntimeError(f"pytest exited {proc.returncode} without a report")
    results = _junit(junit)
    passed = sum(r["outcome"] == "passed" for r in results.values())
    rows = [
        row(
            "CUDA tests passed",
            passed,
            "tests",
            f"{len(CUDA_TESTS)} of {len(CUDA_TESTS)}",
            passed == len(CUDA_TESTS),
        )
    ]
    for name, r in results.items():
        if r["outcome"] != "passed":
            rows.append(row(f"  {r['outcome']}: {name.split('.')[-1]}", None, "", None, False))
    return {"rows": rows, "details": {"exit_code": proc.returncode, "tests": results}}


def _json_of(path: Path) -> dict[str, Any]:
    """A benchmark script's --out report."""
    return json.loads(path.read_text())


def loss_memory_item(ctx: Context) -> dict[str, Any]:
    """Peak memory of the masked and the fused cross-entropy at vocabulary 128k (CUDA, bf16)."""
    out = ctx.work / "loss_memory.json"
    sizes = ["--tokens", "512", "--vocab", "8192", "--hidden", "64"]  # CPU: above the RSS mark
    if not ctx.smoke:  # one micro-batch of the 1B item: 4 rows of 4096 tokens, Llama-3's vocab
        sizes = ["--device", "cuda", "--dtype", "bfloat16", "--tokens", "16384"]
        sizes += ["--vocab", "128256", "--hidden", "2048"]
    # A process of its own, which imports no torch: each variant's child process starts with
    # the peak RSS of the process that launched it (Linux), so this keeps the CPU peaks small.
    cmd = [sys.executable, loss_memory.__file__, *sizes, "--variants", "masked", "fused"]
    subprocess.run([*cmd, "--out", str(out)], check=True, timeout=max(1.0, ctx.remaining() - 2))
    report = _json_of(out)
    masked, fused = report["results"]["masked"], report["results"]["fused"]
    ratio = report["peak_over_masked"]["fused"]
    settings = report["settings"]
    what = f"CE {settings['tokens']} tokens x vocab {settings['vocab']}"
    return {
        "rows": [
            row(f"{what}: masked peak", masked["peak_bytes"] / 2**30, "GiB"),
            row(f"{what}: fused peak", fused["peak_bytes"] / 2**30, "GiB"),
            row(f"{what}: fused / masked peak", ratio, "x", "<= 0.25x (CPU goal)", ratio <= 0.25),
            row(f"{what}: loss, fused - masked", abs(fused["loss"] - masked["loss"]), "rel"),
        ],
        "details": report,
    }


def moe_layer_item(ctx: Context) -> dict[str, Any]:
    """TFLOP/s of automodel.moe's layer against transformers' grouped_mm experts (bf16)."""
    import moe_layer  # imports torch: not in the cuda_tests process

    out = ctx.work / "moe_layer.json"
    sizes = ["--tokens", "64", "--hidden", "32", "--intermediate", "16", "--experts", "4"]
    sizes += ["--top-k", "2", "--warmup", "0", "--repeats", "1"]
    if not ctx.smoke:  # a Qwen3-30B-A3B layer on 4 rows of 4096 tokens
        sizes = ["--device", "cuda", "--dtype", "bfloat16", "--tokens", "16384", "--hidden"]
        sizes += ["2048", "--intermediate", "768", "--experts", "128", "--top-k", "8"]
        sizes += ["--warmup", "2", "--repeats", "10"]
    moe_layer.main([*sizes, "--out", str(out)])
    report = _json_of(out)
    res, s = report["results"], report["settings"]
    what = f"MoE {s['experts']}x top-{s['top_k']}, {s['tokens']} tokens"
    speedup = res["hf_grouped_mm"].get("speedup_ours")
    worst = max(r["max_rel_diff"] for r in res.values())
    return {
        "rows": [
            row(f"{what}: ours TFLOP/s", res["ours"]["tflops"], "TF/s"),
            row(f"{what}: HF grouped_mm TFLOP/s", res["hf_grouped_mm"]["tflops"], "TF/s"),
            row(f"{what}: HF eager loop TFLOP/s", res["hf_eager"]["tflops"], "TF/s"),
            row(f"{what}: ours faster than HF grouped_mm by", speedup, "x"),
            row(f"{what}: max relative difference from HF eager", worst, "rel"),
        ],
        "details": report,
    }


def lora_triton_item(ctx: Context) -> dict[str, Any]:
    """Forward+backward of the fused Triton LoRA kernel against the plain LoRA path (bf16)."""
    out = ctx.work / "lora_triton.json"
    sizes = ["--tokens", "64", "--in-features", "32", "--out-features", "48", "--iters", "2"]
    if not ctx.smoke:  # the up-projection of an 8B MLP on 4 rows of 4096 tokens
        sizes = ["--tokens", "16384", "--in-features", "4096", "--out-features", "14336"]
        sizes += ["--iters", "20"]
    code = lora_triton.main([*sizes, "--rank", "16", "--dtype", "bfloat16", "--out", str(out)])
    if code == 2:
        raise NeedsCuda("lora_triton.py needs a CUDA device and triton (it exited 2)")
    report = _json_of(out)
    res, s = report["results"], report["settings"]
    what = f"LoRA r{s['rank']} {s['tokens']}x{s['in_features']}->{s['out_features']}"
    diff = max(report["relative_difference"].values())
    return {
        "rows": [
            row(f"{what}: plain fwd+bwd", res["plain"]["forward_backward_ms"], "ms"),
            row(f"{what}: Triton fwd+bwd", res["fused"]["forward_backward_ms"], "ms"),
            row(f"{what}: Triton speed-up", report["speedup_forward_backward"], "x"),
            row(f"{what}: Triton / plain peak memory", report["peak_fused_over_plain"], "x"),
            row(f"{what}: max relative difference", diff, "rel"),
        ],
        "details": report,
    }
