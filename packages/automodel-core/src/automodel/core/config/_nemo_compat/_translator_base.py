"""The translator's state and the helpers every pass uses (where a key came from, notes)."""

from __future__ import annotations

from typing import Any

from .._errors import Problem


class _TranslatorBase:
    def __init__(
        self, data: dict[str, Any], where: dict[str, str], file: str, world: int | None
    ) -> None:
        self.data = _copy(data)
        self.where = where
        self.file = file
        self.world = world
        self.changed: dict[str, str] = {}
        self.notes: list[str] = []
        self.problems: list[Problem] = []
        self.recipe: str | None = None
        self.moved_collators: set[str] = set()  # loaders whose collate_fn is a section here

    # -- helpers -------------------------------------------------------------------------------
    def at(self, path: str) -> str:
        parts = path.split(".")
        for depth in range(len(parts), 0, -1):
            found = self.where.get(".".join(parts[:depth]))
            if found:
                return found
        return self.file

    def fail(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message, self.at(path)))

    def note(self, path: str, message: str) -> None:
        self.changed.setdefault(path, message)
        self.notes.append(f"{self.at(path)}: {path}: {message}")

    def move(self, old: str, new: str, message: str | None = None) -> None:
        """Record that `new` (our key) holds what the user wrote at `old`."""
        for key in [k for k in self.where if k == old or k.startswith(old + ".")]:
            self.where.setdefault(new + key[len(old) :], self.where[key])
        self.changed[new] = message or f"was {old}"

    def put(
        self, ours: str, value: Any, old: str | None = None, message: str | None = None
    ) -> None:
        """Set our `section.key` (or `section.sub.key`) to `value`, which the user wrote at
        `old` (None: a default, which a value already there wins over); another value already
        there is an error."""
        path, key = ours.rsplit(".", 1)
        node = self.data
        for part in path.split("."):
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if old is None and key in node:
            return
        if key in node and node[key] != value:
            where = old or ours
            self.fail(where, f"{where} gives {ours} = {value!r} but {ours} is {node[key]!r}; keep one")  # fmt: skip
            return
        node[key] = value
        if old is not None:
            self.move(old, ours, message)
        else:
            self.changed.setdefault(ours, message or "NeMo AutoModel's default, written out")

    def section(self, name: str) -> dict[str, Any]:
        node = self.data.get(name)
        if not isinstance(node, dict):
            node = self.data[name] = {}
        return node


def dtype_name(value: Any) -> str:
    """A dtype name as torch spells it ("bf16", "torch.bfloat16" -> "bfloat16"); a name that is
    not a dtype comes back as written, for validation to report."""
    from ...models._dtype import DtypeNameError, parse_dtype  # torch: only where a dtype is named

    try:
        return str(parse_dtype(value)).removeprefix("torch.")
    except DtypeNameError:
        return str(value)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
