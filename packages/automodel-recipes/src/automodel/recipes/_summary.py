"""The few lines a training run ends with: time, steps, tokens, validation, checkpoint, plot.

Read back from the run directory's metrics files, so a resumed run reports the whole run.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ._metrics_files import TRAINING, VALIDATION, number, read_rows


def run_summary(
    run_dir: Path,
    *,
    wall_s: float,
    resumed_at: int | None = None,
    checkpoint: Path | None = None,
    merged_model: Path | None = None,
    plot: Path | None = None,
) -> str:
    """The end-of-run summary of `run_dir` (several lines, the first one a heading).

    `wall_s`: the run's time over all its attempts; `resumed_at`: the step this process
    started from; `checkpoint`: the newest one; `plot`: the drawn figure, if any (else the
    line shows the `automodel plot` command).
    """
    train = read_rows(run_dir / TRAINING, missing_ok=True)
    val = read_rows(run_dir / VALIDATION, missing_ok=True)
    lines = [("wall time", _duration(wall_s))]
    steps = [s for s in (number(r, "step") for r in train) if s is not None]
    if steps:
        resumed = f" (resumed at step {resumed_at})" if resumed_at else ""
        lines.append(("steps", f"{int(max(steps))}{resumed}"))
    tokens = [
        f"{total:,} {kind}"
        for kind, key in (("real", "num_real_tokens"), ("label", "num_label_tokens"))
        if (total := _sum(train, key)) is not None
    ]
    if tokens:
        lines.append(("tokens", ", ".join(tokens)))
    losses = [(number(r, "loss"), number(r, "step")) for r in val]
    losses = [(loss, int(step)) for loss, step in losses if loss is not None and step is not None]
    if losses:
        best = min(losses, key=lambda pair: pair[0])
        final = losses[-1]
        text = f"final {final[0]:.4f} at step {final[1]}, best {best[0]:.4f} at step {best[1]}"
        lines.append(("validation loss", text))
    last_loss = number(train[-1], "loss") if train else None
    if last_loss is not None:
        lines.append(("training loss", f"{last_loss:.4f} at the last step"))
    if checkpoint is not None:
        lines.append(("last checkpoint", str(checkpoint)))
    if merged_model is not None:
        lines.append(("merged model", str(merged_model)))
    if plot is not None:
        lines.append(("plot", str(plot)))
    else:
        lines.append(("plot", f"automodel plot {shlex.quote(str(run_dir))}"))
    width = max(len(name) for name, _ in lines)
    body = "\n".join(f"  {name:<{width}}  {value}" for name, value in lines)
    return f"run summary ({run_dir}):\n{body}"


def _sum(rows: list[dict], key: str) -> int | None:
    """Sum of `key` over the rows that have it; None when none has."""
    values = [v for v in (number(r, key) for r in rows) if v is not None]
    return int(sum(values)) if values else None


def _duration(seconds: float) -> str:
    """`25.8 s`, `12 min 05 s` or `3 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
