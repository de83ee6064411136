"""The GPU suite's first lines: where it runs, and whether what is installed meets our requirements.

Our requirements are read from the checkout (packages/*/pyproject.toml: every dependency of the
seven packages, the `triton` extra, and the tools of the dev group that the suite uses), those of
the wheels carried to the GPU machine from their installed metadata. Each is checked against the
installed version: `ok`, `too old`, `too new`, `outside` (another kind of range) or `missing`.
Nothing is installed or changed here.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# beyond the packages' own dependencies: (requirement source, name) -> what needs it
OPTIONAL = {
    ("automodel-peft[triton]", "triton"): "the Triton LoRA kernel",
    ("dev", "accelerate"): "the transformers Trainer",
    ("dev", "pytest"): "the CUDA tests",
    ("dev", "peft"): "tests that load adapters with peft",
}
CARRIED = ("datasets", "torchdata")  # wheels from benchmarks/fetch_gpu_wheels.sh; their needs too
VERSIONS = ("torch", "transformers", "accelerate", "peft", "safetensors", "triton", "numpy")


def _pyproject(path: Path) -> dict[str, Any]:
    """A pyproject.toml, parsed."""
    return tomllib.loads(path.read_text())


def requirements() -> list[tuple[Requirement, str, bool]]:
    """(requirement, who asks for it, required) of our packages, the suite and the carried wheels."""
    out: list[tuple[Requirement, str, bool]] = []
    for path in sorted(REPO.glob("packages/*/pyproject.toml")):
        project = _pyproject(path)["project"]
        for text in project.get("dependencies", []):
            req = Requirement(text)
            if not req.name.startswith("automodel-"):
                out.append((req, project["name"], True))
        for text in project.get("optional-dependencies", {}).get("triton", []):
            out.append((Requirement(text), f"{project['name']}[triton]", False))
    for text in _pyproject(REPO / "pyproject.toml")["dependency-groups"]["dev"]:
        req = Requirement(text)
        if ("dev", req.name) in OPTIONAL:
            out.append((req, "dev", False))
    for name in CARRIED:
        try:
            texts = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # reported missing as one of our requirements
        for text in texts:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                out.append((req, name, True))
    return out


def check(req: Requirement) -> tuple[str | None, str]:
    """The installed version of `req`'s distribution and `ok`, `too old`, `too new`, `outside`
    (another kind of range) or `missing`."""
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return None, "missing"
    failed = {s.operator for s in req.specifier if not s.contains(version, prereleases=True)}
    if not failed:
        return version, "ok"
    if failed <= {">=", ">"}:
        return version, "too old"
    return version, "too new" if failed <= {"<", "<="} else "outside"


def check_requirements() -> list[dict[str, Any]]:
    """One row per requirement, merged over the packages that state the same one."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for req, who, required in requirements():
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # e.g. triton off Linux
        key = (req.name, str(req.specifier))
        row = rows.setdefault(key, {"requirement": f"{req.name}{req.specifier}", "by": []})
        row["by"].append(who)
        row["required"] = row.get("required", False) or required
    for (name, _), row in rows.items():
        row["installed"], row["status"] = check(Requirement(row["requirement"]))
        need = next((w for (src, n), w in OPTIONAL.items() if n == name), None)
        if not row["required"] and need:
            row["needed_for"] = need
    return list(rows.values())


def print_requirements(rows: list[dict[str, Any]]) -> list[str]:
    """Print the check (what is not met one per line, the rest on one); return the problems."""
    problems = [r for r in rows if r["status"] != "ok" and r["required"]]
    optional = [r for r in rows if r["status"] != "ok" and not r["required"]]
    print(
        f"requirements: {len(rows) - len(problems) - len(optional)} of {len(rows)} met; "
        f"{len(problems)} required not met, {len(optional)} optional not met"
    )
    for row in [*problems, *optional]:
        need = "REQUIRED" if row["required"] else f"optional, for {row.get('needed_for', '?')}"
        print(
            f"  {row['status'].upper()}: {row['requirement']} (installed "
            f"{row['installed'] or 'none'}; {need}; asked by {', '.join(row['by'])})"
        )
    met = [f"{r['requirement']} ({r['installed']})" for r in rows if r["status"] == "ok"]
    if met:
        print("  met: " + ", ".join(met))
    return [f"{r['requirement']}: {r['status']} ({r['installed'] or '-'})" for r in problems]


def _git_commit() -> str | None:
    """The checkout's commit: GPU_SUITE_COMMIT if set (a copy of the tree without its .git)."""
    if os.environ.get("GPU_SUITE_COMMIT"):
        return os.environ["GPU_SUITE_COMMIT"]
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def _nvidia_smi() -> str | None:
    """The driver and GPU as nvidia-smi reports them, if it is there."""
    query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
    try:
        proc = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def machine() -> dict[str, Any]:
    """Where the suite runs: the machine, the GPU, and the versions that matter."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "commit": _git_commit(),
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    for name in VERSIONS:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            nvidia_smi=_nvidia_smi(),
        )
    return info


def print_machine(info: dict[str, Any]) -> None:
    """One line of where, one of the versions."""
    gpu = (
        f"{info['gpu']} x{info['gpu_count']} ({info['gpu_memory_gib']} GiB), CUDA "
        f"{info['torch_cuda']}, driver {info['nvidia_smi'] or '?'}"
        if info["cuda_available"]
        else "no CUDA device (CPU)"
    )
    print(f"machine: {gpu}; {info['cpu_count']} CPUs; {info['platform']}")
    versions = ", ".join(f"{n} {info[n] or '-'}" for n in VERSIONS)
    print(f"versions: Python {info['python']}, {versions}; commit {info['commit'] or '-'}")
