"""Draw training curves of one or more run directories into a PNG and an SVG.

automodel plot RUN_DIR [RUN_DIR ...] [--x step|time] [--out PATH]

Reads each run's training.jsonl (and validation.jsonl, if any) and draws one figure with a
panel per metric that has data: training loss, validation loss, learning rate, grad norm and
tokens/s, against the optimizer step or the run's elapsed time. Several runs are overlaid,
labelled by their directory names. Needs matplotlib: `pip install 'automodel-recipes[plot]'`.
Imports no torch (the `automodel` command runs it in its own process).

```python
from automodel.recipes.plot import plot_runs

png, svg = plot_runs(["runs/tiny_sft"])  # runs/tiny_sft/metrics.png and .svg
```
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._metrics_files import TRAINING, VALIDATION, MetricsFileError, number, read_rows

PLOT_INSTALL = "pip install 'automodel-recipes[plot]'"
X_AXES = ("step", "time")
FILE_STEM = "metrics"  # <run_dir>/metrics.png and .svg; several runs: metrics_compare.*
_PROG = "automodel plot"


class PlotError(MetricsFileError):
    """What `automodel plot` reports as one line (exit status 2)."""


@dataclass(frozen=True)
class Panel:
    """One panel: `key` of the rows of `source` (training or validation) against x."""

    title: str
    source: str
    key: str
    log_when_spread: bool = False  # a log y axis when the values span two decades or more


PANELS = (
    Panel("training loss", TRAINING, "loss", log_when_spread=True),
    Panel("validation loss", VALIDATION, "loss", log_when_spread=True),
    Panel("learning rate", TRAINING, "lr"),
    Panel("grad norm", TRAINING, "grad_norm", log_when_spread=True),
    Panel("tokens/s", TRAINING, "tps"),
)


@dataclass
class Run:
    """The rows of one run directory."""

    path: Path
    label: str
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # file name -> rows

    def series(self, panel: Panel, x: str) -> tuple[list[float], list[float]]:
        """(x values, y values) of the rows that have both."""
        x_key = "elapsed_s" if x == "time" else "step"
        xs, ys = [], []
        for row in self.rows.get(panel.source, []):
            a, b = number(row, x_key), number(row, panel.key)
            if a is not None and b is not None:
                xs.append(a)
                ys.append(b)
        return xs, ys


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read a run directory's training.jsonl (required) and validation.jsonl (optional)."""
    path = Path(path)
    if not path.exists():
        raise PlotError(f"{path} does not exist")
    if not path.is_dir():
        raise PlotError(f"{path} is not a directory; give the run directory (logging.run_dir)")
    if not (path / TRAINING).is_file():
        raise PlotError(
            f"{path} has no {TRAINING}: is it a run directory (logging.run_dir of a run)?"
        )
    rows = {
        TRAINING: read_rows(path / TRAINING),
        VALIDATION: read_rows(path / VALIDATION, missing_ok=True),
    }
    return Run(path, label or _name(path), rows)


def plot_runs(
    run_dirs: Sequence[str | Path], out: str | Path | None = None, x: str = "step"
) -> tuple[Path, Path]:
    """Draw the runs' metrics into a PNG and an SVG; return their paths.

    `out`: a file path (its .png/.svg suffix is replaced) or an existing directory; default
    `<first run dir>/metrics` for one run, `<first run dir>/metrics_compare` for several.
    `x`: "step" or "time" (the rows' `elapsed_s`). Raises PlotError for what cannot be drawn.
    """
    if x not in X_AXES:
        raise PlotError(f"x must be one of {', '.join(X_AXES)}, not {x!r}")
    if not run_dirs:
        raise PlotError("no run directory given")
    labels = _labels([Path(p) for p in run_dirs])
    runs = [load_run(p, label) for p, label in zip(run_dirs, labels, strict=True)]
    if x == "time":
        for run in runs:
            if not any(number(r, "elapsed_s") is not None for r in run.rows[TRAINING]):
                raise PlotError(
                    f"{run.path / TRAINING} has no elapsed_s in its rows (written by an older "
                    "version); plot against the step instead (--x step)"
                )
    panels = [p for p in PANELS if any(run.series(p, x)[0] for run in runs)]
    if not panels:
        where = ", ".join(str(run.path) for run in runs)
        raise PlotError(f"nothing to plot: no metrics rows in {where} yet")
    png, svg = _out_paths(runs, out)
    _draw(runs, panels, x, png, svg)
    return png, svg


def main(argv: list[str] | None = None) -> int:
    """Plot runs' loss, validation loss, LR, grad norm and tokens/s (PNG and SVG)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        png, svg = plot_runs(args.run_dirs, args.out, args.x)
    except MetricsFileError as e:
        if args.debug:
            raise
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {png}")
    print(f"wrote {svg}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "Draw training loss, validation loss, learning rate, grad norm and tokens/s of one "
            "or more run directories (their training.jsonl and validation.jsonl) into a PNG "
            "and an SVG. Several runs are overlaid, labelled by their directory names. "
            f"Needs matplotlib: {PLOT_INSTALL}."
        ),
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run directory")
    parser.add_argument(
        "--x", choices=X_AXES, default="step", help="the x axis: optimizer step or elapsed time"
    )
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="where to write PATH.png and PATH.svg (a .png/.svg suffix is replaced; a directory "
        f"gets {FILE_STEM}.png/.svg); default: the first run directory's {FILE_STEM}.png/.svg "
        f"({FILE_STEM}_compare.png/.svg for several runs)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _name(path: Path) -> str:
    return path.name or path.resolve().name or str(path)


def _labels(paths: list[Path]) -> list[str]:
    """Each run's directory name; the paths as given where two names are the same."""
    names = [_name(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def _out_paths(runs: list[Run], out: str | Path | None) -> tuple[Path, Path]:
    stem = FILE_STEM if len(runs) == 1 else f"{FILE_STEM}_compare"
    if out is None:
        base = runs[0].path / stem
    else:
        out = Path(out)
        if out.is_dir():
            base = out / stem
        else:
            base = out.with_suffix("") if out.suffix.lower() in (".png", ".svg") else out
            base.parent.mkdir(parents=True, exist_ok=True)
    return base.with_name(base.name + ".png"), base.with_name(base.name + ".svg")


def _import_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotError(
            f"plotting needs matplotlib, which is not installed; install the extra with "
            f"`{PLOT_INSTALL}` (or `pip install 'automodel-suite[plot]'`)"
        ) from None
    return matplotlib


def _time_unit(runs: list[Run]) -> tuple[str, float]:
    """("s" | "min" | "h", seconds per unit) for the longest run."""
    longest = max(
        (number(r, "elapsed_s") or 0.0 for run in runs for rows in run.rows.values() for r in rows),
        default=0.0,
    )
    if longest <= 300:
        return "s", 1.0
    if longest <= 3 * 3600:
        return "min", 60.0
    return "h", 3600.0


def _spans_decades(values: list[float]) -> bool:
    """All positive, the largest at least 100 times the smallest: a log axis shows them best."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 100


def _draw(runs: list[Run], panels: list[Panel], x: str, png: Path, svg: Path) -> None:
    matplotlib = _import_matplotlib()
    # SVG text stays text (searchable, smaller); fixed ids: the same rows give the same file
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "automodel"}):
        _draw_figure(runs, panels, x, png, svg)


def _draw_figure(runs: list[Run], panels: list[Panel], x: str, png: Path, svg: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = len(panels) if len(panels) <= 3 else (2 if len(panels) == 4 else 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.3 * cols, 3.1 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg backend, without pyplot's global state
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for extra in axes[len(panels) :]:
        extra.remove()
    unit, seconds = _time_unit(runs) if x == "time" else ("", 1.0)
    x_label = f"elapsed time ({unit})" if x == "time" else "step"
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, panel in zip(axes, panels, strict=False):
        spread: list[float] = []
        for run, color in zip(runs, colors, strict=True):
            xs, ys = run.series(panel, x)
            if not xs:
                continue
            xs = [v / seconds for v in xs]
            few = len(xs) <= 50  # validation passes: show the points
            ax.plot(xs, ys, color=color, label=run.label, linewidth=1.2,
                    marker="o" if few else None, markersize=3)  # fmt: skip
            spread += ys
        ax.set_title(panel.title)
        ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
        if panel.log_when_spread and _spans_decades(spread):
            ax.set_yscale("log")
        if panel.key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if len(runs) == 1:
        fig.suptitle(str(runs[0].path))
    else:
        handles, labels = [], []
        for ax in axes[: len(panels)]:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4))
    fig.savefig(png, dpi=100)
    fig.savefig(svg, metadata={"Date": None})  # the same file for the same rows
