"""Find recipes (entry-point group `automodel.recipes`) and commands (`automodel.commands`),
and describe them."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from automodel.cli._errors import RecipeLoadError

GROUP = "automodel.recipes"
# `automodel <name> ARGS...`: a command without a domain or config, e.g. `plot` (recipes)
COMMAND_GROUP = "automodel.commands"
NO_DESCRIPTION = "(no description)"
_MAX_REEXPORT_HOPS = 4


def installed_recipes() -> dict[str, EntryPoint]:
    """Map each installed recipe name to its entry point; the first one on sys.path wins."""
    return _installed(GROUP)


def installed_commands() -> dict[str, EntryPoint]:
    """Map each installed command name (`plot`) to its entry point, like installed_recipes."""
    return _installed(COMMAND_GROUP)


def _installed(group: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def distribution_label(ep: EntryPoint) -> str | None:
    """Name and version of the distribution that registered `ep`, when known."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None
    try:
        return f"{dist.name} {dist.version}"
    except Exception:  # broken metadata must not break listing or error messages
        return None


def load_recipe(ep: EntryPoint, kind: str = "recipe") -> Callable[[list[str]], int | None]:
    """Import the recipe (or command) behind `ep`; failures become a RecipeLoadError naming the
    entry point."""
    where = f"entry point '{ep.name} = {ep.value}'"
    label = distribution_label(ep)
    if label:
        where += f" from distribution '{label}'"
    try:
        fn = ep.load()
    except Exception as exc:
        raise RecipeLoadError(
            f"could not load {kind} '{ep.name}' ({where}): {type(exc).__name__}: {exc}. "
            f"The {kind}'s package or one of its dependencies is broken or missing; "
            "run with --debug to see the traceback."
        ) from exc
    if not callable(fn):
        raise RecipeLoadError(
            f"{kind} '{ep.name}' ({where}) is a {type(fn).__name__}, not a callable "
            "taking the argument list (fn(argv: list[str]) -> int)."
        )
    return fn


def describe(ep: EntryPoint) -> str:
    """First docstring line of the entry point's object (else its module), read without importing."""
    try:
        doc = _docstring(ep.module, ep.attr.split(".") if ep.attr else [], _MAX_REEXPORT_HOPS)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        doc = None
    lines = [line.strip() for line in (doc or "").strip().splitlines()]
    return lines[0] if lines and lines[0] else NO_DESCRIPTION


def find_module_source(module: str) -> Path | None:
    """Locate a module's .py file the way the path finder would, without importing anything."""
    search = [Path(entry or ".") for entry in sys.path]
    parts = module.split(".")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        portions: list[Path] = []  # PEP 420 namespace portions seen so far
        regular: Path | None = None
        for directory in search:
            package = directory / part
            if (package / "__init__.py").is_file():
                regular = package
                break
            if (directory / f"{part}.py").is_file():
                # A plain module: it is the answer only if it is the last part.
                return directory / f"{part}.py" if last else None
            if package.is_dir():
                portions.append(package)
        if regular is not None:
            if last:
                return regular / "__init__.py"
            search = [regular]
        elif portions and not last:
            search = portions
        else:
            return None  # missing, or a namespace package (which has no docstring)
    return None


def _docstring(module: str, attr: list[str], hops: int) -> str | None:
    """Docstring of `module`.`attr` (or of the module), following `from x import name` re-exports."""
    path = find_module_source(module)
    if path is None:
        return None
    tree = ast.parse(path.read_bytes(), filename=str(path))
    if not attr:
        return ast.get_docstring(tree)
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for depth, name in enumerate(attr):
        node = _definition(body, name)
        if node is None and depth == 0 and hops > 0:
            source = _reexport_source(tree, name, module, path.name == "__init__.py")
            if source is not None:
                return _docstring(source[0], [source[1], *attr[1:]], hops - 1)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return ast.get_docstring(tree)
        body = node.body
    return ast.get_docstring(node) or ast.get_docstring(tree)  # type: ignore[arg-type]


def _definition(body: list[ast.stmt], name: str) -> ast.stmt | None:
    """The last top-level def or class named `name` in `body`."""
    found = None
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and (
            stmt.name == name
        ):
            found = stmt
    return found


def _reexport_source(
    tree: ast.Module, name: str, module: str, is_package: bool
) -> tuple[str, str] | None:
    """(module, original name) when `name` is bound by a top-level `from ... import`."""
    for stmt in tree.body:
        if not isinstance(stmt, ast.ImportFrom):
            continue
        for alias in stmt.names:
            if (alias.asname or alias.name) != name:
                continue
            if stmt.module is None:
                return None  # `from . import name` binds a submodule, not a definition
            if stmt.level == 0:
                return stmt.module, alias.name
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = package[: len(package) - (stmt.level - 1)]
            return (".".join([*base, stmt.module]), alias.name) if base else None
    return None
