"""The published artifacts: what the wheels contain and that each one installs alone.

The wheels are built once per session (`uv build --all-packages`). Every component
wheel is then installed into its own fresh virtual environment with nothing but its
declared dependencies, from the package index, and imported there (automodel-peft also
runs the torch-only example of its README there). The installs reuse
the uv cache (hardlinks when the cache and the temporary directory share a
filesystem) and run in parallel; versions of third-party packages are pinned to
uv.lock (as constraints), so the result does not drift with the index and a warm
cache needs no download.
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from types import ModuleType

import pytest
from _shared import REPO as REPO_ROOT
from packaging.requirements import Requirement

PYTHON = "3.11"  # the oldest Python the packages support (requires-python >= 3.11)

COMPONENTS = ("core", "distributed", "checkpoint", "peft", "moe")
MEMBERS = (*COMPONENTS, "recipes", "cli")
META = "automodel-suite"
DISTS = (META, *(f"automodel-{name}" for name in MEMBERS))
# Distributions that must not end up installed alongside a package: its dependencies
# are only what its code uses.
FORBIDDEN_DEPS = {
    "cli": {"torch", "transformers", "datasets"},
    "distributed": {"transformers", "datasets"},
    "moe": {"transformers", "datasets"},
    "peft": {"transformers", "datasets"},
    "checkpoint": {"transformers", "datasets"},
}
# The complete set of distributions in the CLI's environment.
CLI_ENVIRONMENT = {"automodel-cli", "pyyaml"}
INSTALL_TIMEOUT_S = 900  # generous: on a cold cache torch is a multi-GB download


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if not uv:
        pytest.fail("uv is needed for the packaging tests (https://docs.astral.sh/uv/)")
    return uv


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT"}
    }
    env["UV_NO_PROGRESS"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"`{' '.join(map(str, proc.args))}` failed ({proc.returncode}):\n"
        f"{proc.stdout}\n{proc.stderr}"
    )
    return proc


# ------------------------------------------------------------------------ wheels


@dataclass
class Wheel:
    path: Path
    dist: str  # normalized distribution name
    version: str
    names: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> Wheel:
        dist, version = path.name.split("-")[:2]
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        return cls(path, _norm(dist), version, names)

    @property
    def dist_info(self) -> str:
        return f"{self.path.name.split('-')[0]}-{self.version}.dist-info/"

    def read(self, name: str) -> str:
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(name).decode()

    @property
    def metadata(self) -> Message:
        return email.parser.Parser().parsestr(self.read(self.dist_info + "METADATA"))

    @property
    def requires(self) -> list[Requirement]:
        return [Requirement(r) for r in self.metadata.get_all("Requires-Dist") or []]

    @property
    def entry_points(self) -> configparser.ConfigParser:
        parser = configparser.ConfigParser(delimiters=("=",))
        parser.optionxform = str  # keep case
        name = self.dist_info + "entry_points.txt"
        if name in self.names:
            parser.read_string(self.read(name))
        return parser

    @property
    def payload(self) -> list[str]:
        """Files outside the .dist-info directory."""
        return [n for n in self.names if not n.startswith(self.dist_info)]


@pytest.fixture(scope="session")
def dist_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _check(_run([_uv(), "build", "--all-packages", "--out-dir", str(out)], cwd=REPO_ROOT))
    return out


@pytest.fixture(scope="session")
def wheels(dist_dir) -> dict[str, Wheel]:
    return {w.dist: w for w in map(Wheel.open, sorted(dist_dir.glob("*.whl")))}


def test_build_gives_exactly_the_eight_wheels(wheels):
    assert sorted(wheels) == sorted(DISTS)


def test_no_wheel_ships_the_namespace_init(wheels):
    offenders = [w.path.name for w in wheels.values() if "automodel/__init__.py" in w.names]
    assert not offenders, f"automodel is a PEP 420 namespace; shipped by {offenders}"


def test_no_bytecode_or_caches_in_wheels(wheels):
    junk = [
        f"{w.path.name}: {n}"
        for w in wheels.values()
        for n in w.names
        if n.endswith((".pyc", ".pyo")) or "__pycache__" in n.split("/")
    ]
    assert not junk, junk


@pytest.mark.parametrize("name", MEMBERS)
def test_component_wheel_contents(wheels, name):
    wheel = wheels[f"automodel-{name}"]
    assert f"automodel/{name}/__init__.py" in wheel.names
    stray = [n for n in wheel.payload if not n.startswith(f"automodel/{name}/")]
    assert not stray, f"{wheel.path.name} ships files outside automodel/{name}/: {stray}"
    src = REPO_ROOT / "packages" / f"automodel-{name}" / "src"
    sources = {
        p.relative_to(src).as_posix()
        for p in (src / "automodel" / name).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    missing = sorted(sources - set(wheel.names))
    assert not missing, f"{wheel.path.name} lacks source files {missing}"


def test_meta_wheel_is_the_console_script_and_two_pins(wheels):
    meta = wheels[META]
    assert not meta.payload, f"the meta-package ships files: {meta.payload}"
    scripts = meta.entry_points
    assert scripts.has_section("console_scripts"), "no [console_scripts] in entry_points.txt"
    assert scripts["console_scripts"].get("automodel", "").strip() == "automodel.cli:entry"
    pins = {_norm(r.name): str(r.specifier) for r in meta.requires}
    assert pins == {
        "automodel-cli": f"=={meta.version}",
        "automodel-recipes": f"=={meta.version}",
    }


def test_recipes_pins_the_five_components_to_its_version(wheels):
    recipes = wheels["automodel-recipes"]
    pins = {_norm(r.name): str(r.specifier) for r in recipes.requires if not r.marker}
    for component in COMPONENTS:
        dist = f"automodel-{component}"
        assert pins.get(dist) == f"=={recipes.version}", f"{dist}: {pins.get(dist)!r}"
        assert wheels[dist].version == recipes.version


@pytest.mark.parametrize("dist", DISTS)
def test_metadata_has_summary_and_readme(wheels, dist):
    meta = wheels[dist].metadata
    assert (meta.get("Summary") or "").strip(), f"{dist}: no Summary"
    description = meta.get_payload() or meta.get("Description") or ""
    assert description.strip(), f"{dist}: no long description (README)"
    assert meta.get("Description-Content-Type", "").startswith("text/markdown")


def test_uv_lock_is_up_to_date():
    _check(_run([_uv(), "lock", "--check"], cwd=REPO_ROOT, timeout=300))


# ------------------------------------------------------------- fresh environments


@dataclass
class Env:
    name: str
    ok: bool = False
    log: str = ""
    installed: set[str] = field(default_factory=set)
    probe: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


# Runs inside the fresh environment: import the modules, report what is installed and
# where the modules came from.
_PROBE = """
import importlib, importlib.metadata as md, json, sys
modules = sys.argv[1:]
files = {m: importlib.import_module(m).__file__ for m in modules}
cli = sys.modules.get("automodel.cli")
print(json.dumps({
    "files": files,
    "prefix": sys.prefix,
    "installed": sorted(d.metadata["Name"] for d in md.distributions()),
    "cli_has_main": bool(cli is not None and callable(getattr(cli, "main", None))),
}))
"""


def _install(name: str, root: Path, dist_dir: Path, wheels: dict, constraints: Path) -> Env:
    """Fresh venv + one wheel from the index; import it. Never raises."""
    env = Env(name)
    venv = root / name
    python = venv / "bin" / "python"
    dist = META if name == META else f"automodel-{name}"
    modules = ["automodel.cli", "automodel.recipes"] if name == META else [f"automodel.{name}"]
    install = [_uv(), "pip", "install", "--python", str(python), str(wheels[dist].path)]
    install += ["--constraint", str(constraints)]
    if name in {"recipes", META}:  # its workspace siblings are not on the index
        install += ["--find-links", str(dist_dir)]
    steps = [
        ("venv", [_uv(), "venv", str(venv), "--python", PYTHON]),
        ("install", install),
        ("import", [str(python), "-I", "-c", _PROBE, *modules]),
    ]
    for step, cmd in steps:
        t0 = time.monotonic()
        try:
            proc = _run(cmd, cwd=root, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            env.log += f"$ {' '.join(cmd)}\ntimed out\n"
            return env
        env.seconds[step] = time.monotonic() - t0
        env.log += f"$ {' '.join(cmd[:6])} ...\n{proc.stdout}{proc.stderr}"
        if proc.returncode != 0:
            return env
    env.probe = json.loads(proc.stdout.strip().splitlines()[-1])
    env.installed = {_norm(d) for d in env.probe["installed"]}
    if name == META and env.probe["cli_has_main"]:
        proc = _run([str(venv / "bin" / "automodel"), "--help"], cwd=root, timeout=300)
        env.log += f"$ automodel --help\n{proc.stdout}{proc.stderr}"
        if proc.returncode != 0:
            return env
    env.ok = True
    return env


def _uv_cache_dir() -> Path | None:
    proc = _run([_uv(), "cache", "dir"], cwd=REPO_ROOT)
    return Path(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else None


@pytest.fixture(scope="session")
def constraints(tmp_path_factory) -> Path:
    """The lock's versions of every third-party distribution, as a constraints file."""
    path = tmp_path_factory.mktemp("constraints") / "constraints.txt"
    _check(
        _run(
            [
                *(_uv(), "export", "--frozen", "--all-packages", "--all-extras", "--no-hashes"),
                *("--no-emit-workspace", "--no-header", "--output-file", str(path)),
            ],
            cwd=REPO_ROOT,
        )
    )
    return path


@pytest.fixture(scope="session")
def fresh_envs(tmp_path_factory, dist_dir, wheels, constraints) -> dict[str, Env]:
    root = tmp_path_factory.mktemp("venvs")
    cache = _uv_cache_dir()
    if cache is not None and cache.exists() and cache.stat().st_dev != root.stat().st_dev:
        warnings.warn(
            f"uv cache {cache} and {root} are on different filesystems: uv copies instead of "
            "hardlinking and the fresh-environment tests get much slower",
            stacklevel=1,
        )
    names = [*MEMBERS, META]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda n: _install(n, root, dist_dir, wheels, constraints), names)
        return dict(zip(names, results, strict=True))


def test_the_readmes_uvx_line_runs_our_command(dist_dir, constraints, tmp_path):
    """`uvx --from <the README's distribution> automodel ...` resolves to the wheels built here
    (found with --find-links, as the index would serve them) and runs `automodel list`."""
    readme = (REPO_ROOT / "README.md").read_text()
    spec = re.search(r"`uvx --from (\S+) automodel finetune llm ", readme).group(1)
    assert spec == META
    uvx = [_uv(), "tool", "run", "--isolated", "--from", spec, "--find-links", str(dist_dir)]
    uvx += ["--constraints", str(constraints)]
    listed = _check(_run([*uvx, "automodel", "list"], cwd=tmp_path, timeout=INSTALL_TIMEOUT_S))
    assert "finetune.llm" in listed.stdout and "(automodel-recipes 0.1.0)" in listed.stdout
    version = "import importlib.metadata as m; print(m.version('automodel-suite'))"
    probe = _check(_run([*uvx, "python", "-c", version], cwd=tmp_path))
    ours = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert probe.stdout.strip() == ours


def _assert_installed_and_imported(env: Env) -> None:
    assert env.ok, f"fresh environment for {env.name} failed:\n{env.log}"
    prefix = env.probe["prefix"]
    for module, file in env.probe["files"].items():
        assert file and file.startswith(prefix), f"{module} imported from {file}, not {prefix}"


@pytest.mark.parametrize("name", MEMBERS)
def test_wheel_installs_alone_and_imports(fresh_envs, name):
    env = fresh_envs[name]
    _assert_installed_and_imported(env)
    assert f"automodel-{name}" in env.installed
    unwanted = sorted(env.installed & FORBIDDEN_DEPS.get(name, set()))
    assert not unwanted, f"automodel-{name} pulls in {unwanted}"
    if name == "cli":
        assert env.installed == CLI_ENVIRONMENT, sorted(env.installed)
    others = {d for d in env.installed if d.startswith("automodel")} - {f"automodel-{name}"}
    if name == "recipes":
        assert others == {f"automodel-{c}" for c in COMPONENTS}, sorted(others)
    else:
        assert not others, f"automodel-{name} pulls in {sorted(others)}"


def test_meta_package_installs_the_command(fresh_envs):
    env = fresh_envs[META]
    _assert_installed_and_imported(env)
    assert {"automodel-suite", "automodel-cli", "automodel-recipes"} <= env.installed
    script = Path(env.probe["prefix"]) / "bin" / "automodel"
    assert script.is_file(), "the meta-package installs no `automodel` command"


def _peft_readme_examples() -> ModuleType:
    """tests/peft/test_readme_examples.py, which extracts and runs the README's examples."""
    path = REPO_ROOT / "tests" / "peft" / "test_readme_examples.py"
    spec = importlib.util.spec_from_file_location("_peft_readme_examples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peft_wheel_runs_its_readme_example(fresh_envs, tmp_path):
    """The issue's done-criterion: the wheel alone (torch + safetensors) runs its README example."""
    env = fresh_envs["peft"]
    _assert_installed_and_imported(env)
    readme = _peft_readme_examples()
    python = Path(env.probe["prefix"]) / "bin" / "python"
    code, out, err = readme.run_example(
        readme.readme_examples()["plain-loop"], tmp_path, str(python)
    )
    assert code == 0, (
        f"the plain-loop README example failed in the wheel's environment:\n{out}\n{err}"
    )
    assert "adapter reloaded into a fresh base model" in out, out


def test_moe_wheel_runs_a_layer_from_its_readme(fresh_envs, tmp_path):
    """The issue's done-criterion: automodel-moe installs alone with torch and its layer trains."""
    import re

    env = fresh_envs["moe"]
    _assert_installed_and_imported(env)
    readme = (REPO_ROOT / "packages/automodel-moe/README.md").read_text()
    section = readme.split("## A layer on its own", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    code += "out.sum().backward()\nprint('grad', layer.experts.down_proj.grad.abs().sum() > 0)\n"
    script = tmp_path / "moe_layer.py"
    script.write_text(code)
    python = Path(env.probe["prefix"]) / "bin" / "python"
    proc = subprocess.run([str(python), str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch.Size([2, 10, 64])" in proc.stdout and "grad tensor(True)" in proc.stdout
