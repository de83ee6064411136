"""Errors raised for mistakes in a config file or on the command line."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace


class UserError(Exception):
    """A mistake the user can fix; recipes print it without a traceback and exit 2."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where it is and what to do about it."""

    key: str
    message: str
    where: str = ""

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        key = f"{self.key}: " if self.key else ""
        return f"{prefix}{key}{self.message}"


class ConfigError(UserError):
    """One or more problems found in a config; all are reported together."""

    def __init__(self, problems: Problem | str | Iterable[Problem]):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__(self._format())

    def located(self, where: Callable[[str], str]) -> ConfigError:
        """This error with `where(key)` filled in for each problem raised without a location."""
        if all(p.where for p in self.problems):
            return self
        return ConfigError(p if p.where else replace(p, where=where(p.key)) for p in self.problems)

    def _format(self) -> str:
        if len(self.problems) == 1:
            return f"invalid config: {self.problems[0]}"
        lines = [f"invalid config ({len(self.problems)} problems):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to a misspelled name, or None when nothing is close."""
    match = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """Return " (did you mean 'x'?)" for the closest candidate, or ''."""
    match = closest(name, candidates)
    return f" (did you mean '{prefix}{match}'?)" if match else ""
