"""benchmarks/gpu_suite.py --smoke: the GPU suite's wiring on CPU at tiny shapes (every item, the
report and the table), so that it cannot rot between GPU loans; and one failing or stopped item
costs none of the others' results."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from _shared import REPO


@pytest.fixture
def suite(monkeypatch: pytest.MonkeyPatch):
    """The gpu_suite module (benchmarks/ on sys.path); the environment restored afterwards."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_suite

    saved = dict(os.environ)  # the items run in this process; what they set is undone
    yield gpu_suite
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.slow  # launches processes: cuda_tests as on a GPU, loss_memory's variants
def test_smoke_runs_every_item_and_writes_the_report(suite, tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpu_suite.json"
    assert suite.main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["requirement_problems"] == []
    assert report["machine"]["torch"] and "torch_cuda" in report["machine"]
    assert {r["status"] for r in report["requirements"]} == {"ok"}
    assert list(report["items"]) == [item.name for item in suite.ITEMS]
    for name, item in report["items"].items():
        if name == "lora_triton":  # the Triton kernel runs on CUDA only
            assert item["status"] == "needs_cuda", item
            continue
        assert item["status"] == "ok", (name, item.get("error"), item.get("traceback"))
        assert any(row["value"] is not None for row in item["rows"]), name
        assert all(row["met"] is None for row in item["rows"]), "tiny shapes meet no target"
    llm = report["items"]["llm_1b"]["details"]
    assert len(llm["ours"]) == len(llm["trainer"]) == 1  # one round each under --smoke
    assert llm["ours"][0]["layout"]["strategy"] == "fsdp2"
    assert llm["trainer"][0]["steps"] == llm["ours"][0]["steps"]
    assert report["items"]["lora_8b"]["details"]["summary"]["layout"]["lora"] is True
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ") and "\nrequirements: " in printed
    assert "| llm_1b | ours: MFU | - | >= 45% |" in printed


def test_a_failing_item_is_recorded_and_the_others_still_run(
    suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def broken(ctx):
        raise ValueError("out of memory, say")

    from _gpu_common import row

    def fine(ctx):
        return {"rows": [row("a figure", 2.0, "x", ">= 1x", True)], "details": {}}

    cuda_tests = suite.BY_NAME["cuda_tests"]
    items = (suite.Item("broken", 30, broken, "fails"), suite.Item("fine", 30, fine, "works"))
    monkeypatch.setattr(suite, "ITEMS", items)
    monkeypatch.setattr(suite, "BY_NAME", {item.name: item for item in items})
    out = tmp_path / "report.json"
    assert suite.main(["--smoke", "--out", str(out)]) == 1
    report = json.loads(out.read_text())["items"]
    assert report["broken"]["status"] == "failed"
    assert "ValueError: out of memory, say" in report["broken"]["error"]
    assert report["fine"]["status"] == "ok" and report["fine"]["rows"][0]["value"] == 2.0
    assert "broken: ValueError: out of memory, say" in capsys.readouterr().out

    # a stopped item process: its status and the end of its log; no time left: skipped
    ctx = suite.Context(True, tmp_path, time.monotonic() + 60)
    assert suite.run_isolated(cuda_tests, ctx, 0.01)["status"] == "timeout"
    assert suite.main(["--smoke", "--out", str(out), "--budget-s", "5"]) == 1
    assert {r["status"] for r in json.loads(out.read_text())["items"].values()} == {"skipped"}
