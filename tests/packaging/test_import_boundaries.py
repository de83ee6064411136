"""The layering rules of docs/architecture.md, checked on the source and at run time.

Rules ("Rules that keep the layers honest"):

* core, distributed, checkpoint, peft and moe import no other automodel package;
  relative imports stay inside the package.
* recipes import only public names of the five component packages: no module path
  segment and no imported name starting with ``_`` (dunders such as ``__version__``
  are public), and never ``automodel.cli``.
* cli imports no automodel package but itself and no third-party module except
  those in ``CLI_THIRD_PARTY`` (it must never pull in torch).
* ``automodel`` is a PEP 420 namespace: no package ships ``src/automodel/__init__.py``.
* every third-party module a package imports is one of its declared dependencies.

Every ``import`` statement counts, wherever it is (inside functions, under
``if TYPE_CHECKING:``, in ``try`` blocks), and so do ``importlib.import_module`` /
``__import__`` calls with a literal module name.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from _shared import REPO as REPO_ROOT
from packaging.requirements import Requirement

COMPONENTS = frozenset({"core", "distributed", "checkpoint", "peft", "moe"})
ALL_PACKAGES = COMPONENTS | {"recipes", "cli"}
# Third-party top-level modules the CLI may import (besides the standard library).
CLI_THIRD_PARTY = frozenset({"yaml"})
STDLIB = frozenset(sys.stdlib_module_names)
# Third-party imports a package may make without declaring a dependency for them,
# per package; keep empty unless there is a documented reason.
UNDECLARED_IMPORT_EXCEPTIONS: dict[str, frozenset[str]] = {}


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Import:
    """One imported module as written in a file."""

    lineno: int
    text: str  # the statement, for messages
    module: tuple[str, ...]  # absolute module path, () for `from . import x` at level > 0
    names: tuple[str, ...] | None  # the names of `from m import a, b`; None for `import m`
    level: int = 0  # relative import level


@dataclass(frozen=True)
class Violation:
    path: Path
    lineno: int
    text: str
    reason: str

    def format(self, root: Path) -> str:
        try:
            shown = self.path.relative_to(root)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.lineno}: `{self.text}` -- {self.reason}"


@dataclass(frozen=True)
class SourceFile:
    path: Path
    package: str  # "core", "cli", ...
    module: tuple[str, ...]  # ("automodel", "core", "config", "_load")
    is_package: bool  # an __init__.py


# ------------------------------------------------------------------------ discovery


def package_dirs(root: Path) -> dict[str, Path]:
    """{"core": root/packages/automodel-core, ...} for every workspace member."""
    out = {}
    for d in sorted((root / "packages").glob("automodel-*")):
        if (d / "pyproject.toml").is_file():
            out[d.name.removeprefix("automodel-").replace("-", "_")] = d
    return out


def source_files(root: Path) -> list[SourceFile]:
    files = []
    for name, pkg_dir in package_dirs(root).items():
        src = pkg_dir / "src"
        for path in sorted(src.rglob("*.py")):
            parts = path.relative_to(src).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            module = parts[:-1] if is_package else parts
            files.append(SourceFile(path, name, module, is_package))
    return files


# -------------------------------------------------------------------------- parsing


def _dynamic_import_target(node: ast.Call) -> str | None:
    """The literal module of `importlib.import_module("m")` / `__import__("m")`."""
    func = node.func
    is_import_call = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in {"import_module", "__import__"}
    )
    if not is_import_call or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value:
        return arg.value
    return None


def parse_imports(path: Path) -> list[Import]:
    """Every import in the file, including lazy ones inside functions."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                text = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                found.append(Import(node.lineno, text, tuple(alias.name.split(".")), None))
        elif isinstance(node, ast.ImportFrom):
            module = tuple(node.module.split(".")) if node.module else ()
            names = tuple(alias.name for alias in node.names)
            found.append(Import(node.lineno, ast.unparse(node), module, names, node.level))
        elif isinstance(node, ast.Call):
            target = _dynamic_import_target(node)
            if target is None:
                continue
            text = ast.unparse(node)
            if target.startswith("."):
                level = len(target) - len(target.lstrip("."))
                rest = target[level:]
                module = tuple(rest.split(".")) if rest else ()
                found.append(Import(node.lineno, text, module, None, level))
            else:
                found.append(Import(node.lineno, text, tuple(target.split(".")), None))
    return sorted(found, key=lambda imp: imp.lineno)


def _is_private(segment: str) -> bool:
    return segment.startswith("_") and not (segment.startswith("__") and segment.endswith("__"))


def _resolve_relative(f: SourceFile, imp: Import) -> tuple[str, ...] | None:
    """The absolute module a relative import names, or None if it leaves the package."""
    pkg = f.module if f.is_package else f.module[:-1]
    up = imp.level - 1
    if up > len(pkg):
        return None
    base = pkg[: len(pkg) - up]
    target = base + imp.module
    own = ("automodel", f.package)
    if target[:2] != own:
        return None
    return target


# ---------------------------------------------------------------------------- rules


def _automodel_subpackages(imp: Import) -> list[tuple[str, tuple[str, ...]]]:
    """[(subpackage, further path segments and imported names)] of an automodel import."""
    if len(imp.module) >= 2:
        rest = imp.module[2:] + (imp.names or ())
        return [(imp.module[1], rest)]
    # `import automodel` or `from automodel import x, y`
    if imp.names is None:
        return [("", ())]
    return [(name, ()) for name in imp.names]


def check_file(f: SourceFile) -> list[Violation]:
    try:
        imports = parse_imports(f.path)
    except SyntaxError as exc:
        return [Violation(f.path, exc.lineno or 0, "<unparsable>", f"SyntaxError: {exc.msg}")]

    out: list[Violation] = []

    def bad(imp: Import, reason: str) -> None:
        out.append(Violation(f.path, imp.lineno, imp.text, reason))

    for imp in imports:
        if imp.level:
            if _resolve_relative(f, imp) is None:
                bad(imp, f"relative import leaves automodel.{f.package}")
            continue
        top = imp.module[0]
        if top != "automodel":
            if f.package == "cli" and top not in STDLIB and top not in CLI_THIRD_PARTY:
                bad(
                    imp,
                    f"cli may import only the standard library and {sorted(CLI_THIRD_PARTY)}, "
                    f"not {top!r}",
                )
            continue
        for sub, rest in _automodel_subpackages(imp):
            if sub == "":
                bad(imp, "bare import of the `automodel` namespace; import automodel.<name>")
            elif sub == "*":
                bad(imp, "star import from the `automodel` namespace")
            elif sub == f.package:
                continue
            elif f.package in COMPONENTS:
                bad(
                    imp,
                    f"automodel.{f.package} is a component package and may not import "
                    f"automodel.{sub}",
                )
            elif f.package == "cli":
                bad(imp, f"automodel.cli may not import automodel.{sub}")
            elif f.package == "recipes":
                if sub not in COMPONENTS:
                    bad(
                        imp,
                        "automodel.recipes may import only the component packages "
                        f"{sorted(COMPONENTS)}, not automodel.{sub}",
                    )
                elif private := [s for s in rest if _is_private(s)]:
                    bad(
                        imp,
                        f"automodel.recipes may import only public names of automodel.{sub}; "
                        f"private: {', '.join(private)}",
                    )
            else:
                bad(imp, f"no import rule for package automodel.{f.package}")
    return out


def check_layout(root: Path) -> list[Violation]:
    """PEP 420 namespace and one `automodel/<name>` package per distribution."""
    out = []
    for name, pkg_dir in package_dirs(root).items():
        src = pkg_dir / "src"
        ns_init = src / "automodel" / "__init__.py"
        if ns_init.exists():
            out.append(
                Violation(ns_init, 1, "automodel/__init__.py", "automodel is a PEP 420 namespace")
            )
        init = src / "automodel" / name / "__init__.py"
        if not init.is_file():
            out.append(Violation(init, 0, "<missing>", f"package automodel.{name} has no __init__"))
        if src.is_dir():
            for entry in sorted(src.iterdir()):
                if entry.name != "automodel" and not entry.name.startswith("."):
                    out.append(Violation(entry, 0, entry.name, "src/ holds only automodel/"))
            ns = src / "automodel"
            for entry in sorted(ns.iterdir()) if ns.is_dir() else ():
                if entry.name not in {name, "__pycache__"} and entry != ns_init:
                    out.append(
                        Violation(entry, 0, entry.name, f"src/automodel/ holds only {name}/")
                    )
    if (root / "src" / "automodel" / "__init__.py").exists():
        out.append(Violation(root / "src/automodel/__init__.py", 1, "", "PEP 420 namespace"))
    return out


def check_import_boundaries(root: Path) -> list[Violation]:
    out = check_layout(root)
    for f in source_files(root):
        out.extend(check_file(f))
    return out


def _report(violations: list[Violation], root: Path) -> str:
    return "\n".join(v.format(root) for v in violations)


# ------------------------------------------------------------- declared dependencies


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


@cache
def _import_names_by_distribution() -> dict[str, frozenset[str]]:
    inverted: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            inverted.setdefault(_norm(dist), set()).add(module)
    return {k: frozenset(v) for k, v in inverted.items()}


def import_names(dist: str) -> frozenset[str]:
    """Top-level modules a distribution provides (from this environment, else its name)."""
    return _import_names_by_distribution().get(_norm(dist), frozenset()) | {
        _norm(dist).replace("-", "_")
    }


def _requirements(pkg_dir: Path, extras: bool) -> list[Requirement]:
    project = tomllib.loads((pkg_dir / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    if extras:
        for group in project.get("optional-dependencies", {}).values():
            reqs.extend(group)
    return [Requirement(r) for r in reqs]


def allowed_third_party(root: Path, package: str) -> frozenset[str]:
    """Import names of a package's dependencies (all extras), through workspace members."""
    dirs = package_dirs(root)
    by_dist = {f"automodel-{name}": name for name in dirs}
    allowed: set[str] = set()
    seen: set[str] = set()

    def visit(name: str, extras: bool) -> None:
        if name in seen:
            return
        seen.add(name)
        for req in _requirements(dirs[name], extras):
            member = by_dist.get(_norm(req.name))
            if member is not None:
                visit(member, extras=False)
            else:
                allowed.update(import_names(req.name))

    visit(package, extras=True)
    return frozenset(allowed | UNDECLARED_IMPORT_EXCEPTIONS.get(package, frozenset()))


def check_declared_dependencies(root: Path) -> list[Violation]:
    out = []
    allowed = {name: allowed_third_party(root, name) for name in package_dirs(root)}
    for f in source_files(root):
        try:
            imports = parse_imports(f.path)
        except SyntaxError:
            continue  # reported by check_import_boundaries
        for imp in imports:
            if imp.level or not imp.module:
                continue
            top = imp.module[0]
            if top == "automodel" or top in STDLIB or top in allowed[f.package]:
                continue
            out.append(
                Violation(
                    f.path,
                    imp.lineno,
                    imp.text,
                    f"{top!r} is not provided by any dependency of automodel-{f.package} "
                    "(declare it in its pyproject.toml, as an extra if optional)",
                )
            )
    return out


# --------------------------------------------------------------------------- tests


def test_repo_has_the_seven_packages():
    assert set(package_dirs(REPO_ROOT)) == ALL_PACKAGES


def test_import_boundaries():
    violations = check_import_boundaries(REPO_ROOT)
    if violations:
        pytest.fail("import boundary violations:\n" + _report(violations, REPO_ROOT), pytrace=False)


def test_third_party_imports_are_declared_dependencies():
    violations = check_declared_dependencies(REPO_ROOT)
    if violations:
        pytest.fail(
            "undeclared third-party imports:\n" + _report(violations, REPO_ROOT), pytrace=False
        )


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _fake_repo(root: Path) -> None:
    for name in ALL_PACKAGES:
        pkg = f"packages/automodel-{name}"
        _write(root, f"{pkg}/pyproject.toml", f'[project]\nname = "automodel-{name}"\n')
        _write(root, f"{pkg}/src/automodel/{name}/__init__.py", '"""ok."""\n')


def test_checker_reports_violations(tmp_path):
    _fake_repo(tmp_path)
    _write(
        tmp_path,
        "packages/automodel-core/src/automodel/core/bad.py",
        """\
        import os

        def lazy():
            import automodel.peft.lora
            from automodel import moe

        from .. import distributed
        """,
    )
    _write(
        tmp_path,
        "packages/automodel-cli/src/automodel/cli/bad.py",
        """\
        import importlib
        import yaml

        def run():
            import torch
            from transformers import AutoModel
            importlib.import_module("automodel.recipes")
        """,
    )
    _write(
        tmp_path,
        "packages/automodel-recipes/src/automodel/recipes/bad.py",
        """\
        from automodel.core.config import load_config, _bar
        import automodel.core._foo
        from automodel.core import _private_module
        from automodel.cli import main
        from automodel.core import __version__
        """,
    )
    _write(tmp_path, "packages/automodel-peft/src/automodel/__init__.py", "")

    found = {(v.path.name, v.lineno, v.text) for v in check_import_boundaries(tmp_path)}
    assert found == {
        ("bad.py", 4, "import automodel.peft.lora"),
        ("bad.py", 5, "from automodel import moe"),
        ("bad.py", 7, "from .. import distributed"),
        ("bad.py", 5, "import torch"),
        ("bad.py", 6, "from transformers import AutoModel"),
        ("bad.py", 7, "importlib.import_module('automodel.recipes')"),
        ("bad.py", 1, "from automodel.core.config import load_config, _bar"),
        ("bad.py", 2, "import automodel.core._foo"),
        ("bad.py", 3, "from automodel.core import _private_module"),
        ("bad.py", 4, "from automodel.cli import main"),
        ("__init__.py", 1, "automodel/__init__.py"),
    }
    report = _report(check_import_boundaries(tmp_path), tmp_path)
    assert "packages/automodel-cli/src/automodel/cli/bad.py:5: `import torch`" in report


def test_checker_accepts_clean_code(tmp_path):
    _fake_repo(tmp_path)
    _write(
        tmp_path,
        "packages/automodel-core/src/automodel/core/config/_load.py",
        """\
        from __future__ import annotations
        import torch
        from . import _yaml
        from .._private import helper
        from automodel.core.config._yaml import load
        """,
    )
    _write(
        tmp_path,
        "packages/automodel-recipes/src/automodel/recipes/llm/finetune.py",
        """\
        from automodel import core, peft
        from automodel.core.config import load_config
        import automodel.distributed.fsdp as fsdp
        from .._shared import _helper
        from automodel.recipes._internal import thing
        """,
    )
    _write(
        tmp_path,
        "packages/automodel-cli/src/automodel/cli/__main__.py",
        """\
        import argparse, importlib.metadata
        import yaml
        from automodel.cli._launch import launch
        from ._launch import launch as launch2
        """,
    )
    violations = check_import_boundaries(tmp_path)
    assert not violations, _report(violations, tmp_path)


def test_dependency_checker_reports_undeclared_import(tmp_path):
    _fake_repo(tmp_path)
    _write(
        tmp_path,
        "packages/automodel-distributed/pyproject.toml",
        '[project]\nname = "automodel-distributed"\ndependencies = ["torch>=2"]\n'
        '[project.optional-dependencies]\nx = ["PyYAML"]\n',
    )
    _write(
        tmp_path,
        "packages/automodel-distributed/src/automodel/distributed/mesh.py",
        "import torch.distributed\nimport yaml\nimport json\n\ndef f():\n    import transformers\n",
    )
    found = [(v.lineno, v.text) for v in check_declared_dependencies(tmp_path)]
    assert found == [(6, "import transformers")]


# ------------------------------------------------------------------------ run time

_CLI_PROBE = """
import json, sys
before = set(sys.modules)
import automodel.cli
ran_main = False
main = getattr(automodel.cli, "main", None)
if callable(main):
    ran_main = True
    try:
        main(["--help"])
    except SystemExit:
        pass
loaded = sorted(set(sys.modules) - before)
print("\\n@@PROBE@@" + json.dumps({"ran_main": ran_main, "loaded": loaded}))
"""


def test_cli_import_pulls_in_no_torch_and_no_other_automodel_package(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONSTARTUP"}}
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.rsplit("@@PROBE@@", 1)[1])
    loaded = result["loaded"]
    tops = {m.split(".")[0] for m in loaded}
    assert "torch" not in tops, "importing automodel.cli loaded torch"
    other_automodel = [m for m in loaded if m.startswith("automodel.") and m.split(".")[1] != "cli"]
    assert not other_automodel, f"automodel.cli loaded {other_automodel}"
    third_party = sorted(
        t for t in tops - STDLIB - CLI_THIRD_PARTY - {"automodel", "_yaml"} if t != "__main__"
    )
    assert not third_party, f"automodel.cli loaded third-party modules {third_party}"
