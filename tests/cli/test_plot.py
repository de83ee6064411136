"""`automodel plot RUN_DIR ...`: a real `automodel` process, real matplotlib, no training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PANELS = ("training loss", "validation loss", "learning rate", "grad norm", "tokens/s")


def write_run(run_dir: Path, steps: int = 30, *, loss0: float = 4.0, **drop: bool) -> Path:
    """A run directory with `steps` training rows and a validation row every 10 steps, as the
    recipes write them; `drop` leaves keys out (validation=True: no validation.jsonl)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in range(1, steps + 1):
        row = {
            "step": step, "epoch": 0, "loss": loss0 / step, "lr": 1e-3 * min(1.0, step / 5),
            "grad_norm": 1.0 / step, "mem": 0.5, "tps": 1000.0 + step, "tps_per_gpu": 1000.0,
            "mfu": None, "num_label_tokens": 100, "num_real_tokens": 300,
            "time": 1.7e9 + 2 * step, "elapsed_s": 2.0 * step,
        }  # fmt: skip
        rows.append({k: v for k, v in row.items() if not drop.get(k)})
    (run_dir / "training.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not drop.get("validation"):
        val = [
            {"step": s, "loss": loss0 / (s + 1), "lr": 1e-3, "elapsed_s": 2.0 * s}
            for s in range(0, steps + 1, 10)
        ]
        (run_dir / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    return run_dir


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE), path


def svg_text(path: Path) -> str:
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text, path
    return text


def test_plot_of_one_run_writes_a_png_and_an_svg_in_the_run_dir(run_cli, tmp_path):
    run = write_run(tmp_path / "tiny_sft")
    result = run_cli("plot", str(run))
    assert result.returncode == 0, result.stderr
    png, svg = run / "metrics.png", run / "metrics.svg"
    assert result.stdout.split() == ["wrote", str(png), "wrote", str(svg)]
    check_png(png)
    text = svg_text(svg)
    for title in ALL_PANELS:
        assert f">{title}<" in text, title  # one panel per metric
    assert ">step<" in text


def test_panels_without_data_are_left_out(run_cli, tmp_path):
    run = write_run(tmp_path / "run", grad_norm=True, tps=True, validation=True)
    assert run_cli("plot", str(run)).returncode == 0
    text = svg_text(run / "metrics.svg")
    assert ">training loss<" in text and ">learning rate<" in text
    for title in ("validation loss", "grad norm", "tokens/s"):
        assert f">{title}<" not in text, title


def test_two_runs_are_overlaid_with_their_names_in_the_legend(run_cli, tmp_path):
    first = write_run(tmp_path / "lr_3e-3")
    second = write_run(tmp_path / "lr_1e-3", steps=20, loss0=5.0)
    result = run_cli("plot", str(first), str(second))
    assert result.returncode == 0, result.stderr
    check_png(first / "metrics_compare.png")
    text = svg_text(first / "metrics_compare.svg")
    assert ">lr_3e-3<" in text and ">lr_1e-3<" in text  # the legend
    assert not (second / "metrics_compare.png").exists()

    out = tmp_path / "figures" / "compare.png"  # --out: the suffix is replaced, dirs are made
    result = run_cli("plot", str(first), str(second), "--out", str(out))
    assert result.returncode == 0, result.stderr
    check_png(out)
    assert ">lr_1e-3<" in svg_text(out.with_suffix(".svg"))


def test_x_time_uses_elapsed_s(run_cli, tmp_path):
    run = write_run(tmp_path / "run")
    result = run_cli("plot", str(run), "--x", "time")
    assert result.returncode == 0, result.stderr
    text = svg_text(run / "metrics.svg")
    assert ">elapsed time (s)<" in text and ">step<" not in text
    check_png(run / "metrics.png")

    old = write_run(tmp_path / "old", elapsed_s=True)
    result = run_cli("plot", str(old), "--x", "time")
    assert result.returncode == 2
    assert "has no elapsed_s" in result.stderr and "--x step" in result.stderr


def _bad_jsonl(tmp_path: Path) -> Path:
    run = write_run(tmp_path / "bad")
    lines = (run / "training.jsonl").read_text().splitlines(keepends=True)
    lines[6] = '{"step": 7, "loss": \n'
    (run / "training.jsonl").write_text("".join(lines))
    return run


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "{run} does not exist"),
        ("no_training", "{run} has no training.jsonl"),
        ("malformed", "{run}/training.jsonl, line 7: not valid JSON"),
        ("bad_x", "argument --x: invalid choice: 'epoch'"),
    ],
)
def test_errors_exit_2_with_one_line_and_no_traceback(run_cli, tmp_path, case, message):
    run, args = tmp_path / "missing", []
    if case == "no_training":
        run.mkdir()
        (run / "validation.jsonl").write_text("{}\n")
    elif case == "malformed":
        run = _bad_jsonl(tmp_path)
    elif case == "bad_x":
        run, args = write_run(tmp_path / "run"), ["--x", "epoch"]
    result = run_cli("plot", str(run), *args)
    assert result.returncode == 2, result.stderr
    assert f"automodel plot: error: {message.format(run=run)}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("metrics.*"))


def test_a_row_still_being_written_is_left_out(run_cli, tmp_path):
    """A last line without its newline is the row the run is writing: plotting a live run works."""
    run = write_run(tmp_path / "live")
    with open(run / "training.jsonl", "a") as f:
        f.write('{"step": 31, "lo')
    assert run_cli("plot", str(run)).returncode == 0
    check_png(run / "metrics.png")


def test_plot_runs_without_torch_in_the_cli_process(cli_env, tmp_path):
    run = write_run(tmp_path / "run")
    check = (
        "import sys\n"
        "from automodel.cli import main\n"
        f"assert main(['plot', {str(run)!r}]) == 0\n"
        "assert 'torch' not in sys.modules and 'matplotlib' in sys.modules\n"
        "bad = sorted(m for m in sys.modules if m.startswith('torch.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    check_png(run / "metrics.png")


def test_without_matplotlib_the_error_names_the_extra(cli_env, tmp_path):
    run = write_run(tmp_path / "run")
    check = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "from automodel.cli import main\n"
        f"sys.exit(main(['plot', {str(run)!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "automodel plot: error: plotting needs matplotlib" in result.stderr
    assert "pip install 'automodel-recipes[plot]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_plot_command(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0
    assert "\n  plot  " in result.stdout
    for args in (["plot", "--help"], ["help", "plot"]):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("usage: automodel plot")
