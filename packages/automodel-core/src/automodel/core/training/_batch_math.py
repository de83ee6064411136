"""The global / local / data-parallel / gradient-accumulation batch-size arithmetic."""

from __future__ import annotations

from automodel.core.config import ConfigError, Problem


def is_positive_int(value: object) -> bool:
    """Whether `value` is an int (not a bool) >= 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_batch_math(
    global_batch_size: int,
    local_batch_size: int,
    dp_size: int = 1,
    grad_acc_steps: int | None = None,
    *,
    section: str = "step_scheduler",
) -> int:
    """Return the gradient-accumulation steps, or raise ConfigError showing the numbers that disagree.

    `global_batch_size = local_batch_size x dp_size x grad_acc_steps` must hold exactly;
    `grad_acc_steps=None` derives it. Needs no model or process group, so it can run first.
    """
    problems = [
        Problem(section, f"{name} must be an integer >= 1, got {value!r}")
        for name, value in (
            ("global_batch_size", global_batch_size),
            ("local_batch_size", local_batch_size),
            ("dp_size", dp_size),
        )
        if not is_positive_int(value)
    ]
    if grad_acc_steps is not None and not is_positive_int(grad_acc_steps):
        problems.append(
            Problem(section, f"grad_acc_steps must be an integer >= 1, got {grad_acc_steps!r}")
        )
    if problems:
        raise ConfigError(problems)
    per_step = local_batch_size * dp_size
    if global_batch_size % per_step:
        raise ConfigError(
            Problem(
                section,
                f"global_batch_size {global_batch_size} is not divisible by local_batch_size "
                f"{local_batch_size} x dp_size {dp_size} = {per_step}",
            )
        )
    derived = global_batch_size // per_step
    if grad_acc_steps is not None and grad_acc_steps != derived:
        raise ConfigError(
            Problem(
                section,
                f"grad_acc_steps {grad_acc_steps} disagrees with global_batch_size "
                f"{global_batch_size} / (local_batch_size {local_batch_size} x dp_size {dp_size})"
                f" = {derived}; remove grad_acc_steps or make the numbers agree",
            )
        )
    return derived
