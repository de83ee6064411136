"""The end-of-run summary (read back from the metrics files) and the `logging.plot` check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _shared import SFT

from automodel.recipes._summary import run_summary
from automodel.recipes.llm import main


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _lines(text: str) -> dict[str, str]:
    heading, *body = text.splitlines()
    assert heading.startswith("run summary (") and all(line.startswith("  ") for line in body)
    return dict(line.strip().split("  ", 1) for line in body if line.strip())


def test_summary_of_a_resumed_run_reads_the_whole_run_back(tmp_path):
    train = [
        {"step": s, "loss": 1.0 / s, "num_label_tokens": 10, "num_real_tokens": 25}
        for s in range(1, 9)
    ]
    _write(tmp_path / "training.jsonl", train)
    val = [{"step": 0, "loss": 3.0}, {"step": 4, "loss": 1.5}, {"step": 8, "loss": 1.75}]
    _write(tmp_path / "validation.jsonl", val)
    checkpoint = tmp_path / "checkpoints/epoch_0_step_8"
    text = run_summary(tmp_path, wall_s=3723.0, resumed_at=4, checkpoint=checkpoint)
    lines = {k: v.strip() for k, v in _lines(text).items()}
    assert lines == {
        "wall time": "1 h 02 min",
        "steps": "8 (resumed at step 4)",
        "tokens": "200 real, 80 label",
        "validation loss": "final 1.7500 at step 8, best 1.5000 at step 4",
        "training loss": "0.1250 at the last step",
        "last checkpoint": str(checkpoint),
        "plot": f"automodel plot {tmp_path}",
    }


def test_summary_without_rows_or_checkpoint_still_says_how_to_plot(tmp_path):
    plot = tmp_path / "metrics.png"
    lines = {k: v.strip() for k, v in _lines(run_summary(tmp_path, wall_s=75, plot=plot)).items()}
    assert lines == {"wall time": "1 min 15 s", "plot": str(plot)}


def test_logging_plot_without_matplotlib_is_a_config_error_before_the_run(monkeypatch, capsys):
    argv = ["--validate-only", "-c", str(SFT), "--logging.plot=true"]
    assert main(argv) == 0, capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "logging.plot: plotting at the end of the run needs matplotlib" in err
    assert "pip install 'automodel-recipes[plot]'" in err
