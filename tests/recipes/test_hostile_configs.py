"""Configs written to run code: each is refused by `validate` and by the run, before anything runs.

Every payload is real: it would create a marker file (the positive controls at the end show
that the hub and remote-code payloads do run once the command line allows them).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from _shared import REPO, SFT

from automodel.cli import main as automodel

AUTOMODEL = Path(sys.executable).with_name("automodel")


class _Touch:
    """Unpickling this creates the marker (what a poisoned weights file would do)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A marker path, and files whose loading creates it: a hubconf, a pickle, remote code."""
    root = tmp_path_factory.mktemp("payloads")
    marker = root / "marker"
    touch = f"open({str(marker)!r}, 'w').close()\n"
    hub = root / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(
        f"def tiny(**kwargs):\n    {touch}    raise ValueError('ran')\n"
    )
    pickled = root / "weights.pt"
    pickled.write_bytes(pickle.dumps(_Touch(str(marker))))
    remote = root / "remote_model"
    remote.mkdir()
    (remote / "configuration_evil.py").write_text(f"{touch}raise ValueError('payload ran')\n")
    auto_map = {"AutoConfig": "configuration_evil.EvilConfig"}
    (remote / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    return {"marker": marker, "hub": hub, "pickle": pickled, "remote": remote}


def _config(tmp_path: Path, change: dict[str, Any], name: str = "hostile.yaml") -> Path:
    """tiny_sft.yaml (with absolute paths) with sections replaced by `change`."""
    data = yaml.safe_load(SFT.read_text())
    data = json.loads(json.dumps(data).replace('"examples/', f'"{REPO}/examples/'))
    data["logging"]["run_dir"] = str(tmp_path / "run")
    data["checkpoint"]["checkpoint_dir"] = str(tmp_path / "run" / "checkpoints")
    for key, value in change.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = copy.deepcopy(value)
    if "allowed_imports" in data:  # its first line, as a shared config would have it
        data = {"allowed_imports": data.pop("allowed_imports"), **data}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _model(target: str, **kwargs: Any) -> dict[str, Any]:
    return {"model": {"_target_": target, **kwargs}}


def _cases(p: dict[str, Path]) -> dict[str, tuple[dict[str, Any], list[str], str]]:
    """name -> (config change, extra arguments, what the error must say)."""
    marker = str(p["marker"])
    hub = {"repo_or_dir": str(p["hub"]), "model": "tiny", "source": "local", "trust_repo": True}
    remote = {"config": str(p["remote"]), "trust_remote_code": True}
    from_config = "automodel.core.models.AutoModelForCausalLM.from_config"
    return {
        "os.system with allowed_imports in the file": (
            {"allowed_imports": ["os"], **_model("os.system", command=f"touch {marker}")},
            [],
            "asks to trust os, but a config cannot extend its own allow-list",
        ),
        "subprocess.run": (
            {"allowed_imports": ["subprocess"], **_model("subprocess.run", args=["touch", marker])},
            [],
            "'subprocess.run' is refused: it runs code",
        ),
        "torch.hub.load": (_model("torch.hub.load", **hub), [], "'torch.hub.load' is refused"),
        "torch.hub.load with torch granted": (
            _model("torch.hub.load", **hub),
            ["--allow-import", "torch"],
            "--allow-import torch.hub.load",
        ),
        "torch.hub through a module alias": (
            _model("torch.nn.functional.torch.hub.load", **hub),
            [],
            "reaches the module 'torch' under another name",
        ),
        "torch.load of a pickle": (
            _model("torch.load", f=str(p["pickle"]), weights_only=False),
            [],
            "'torch.load' is refused: it unpickles",
        ),
        "torch.save over a file": (
            _model("torch.save", obj=1, f=marker),
            [],
            "'torch.save' is refused: it writes a file",
        ),
        "cpp_extension.load_inline": (
            _model("torch.utils.cpp_extension.load_inline", name="x", cpp_sources="int x;"),
            [],
            "compiles and loads C\\+\\+ code",
        ),
        "torch.ops.load_library": (
            _model("torch.ops.load_library", path=marker),
            [],
            "loads shared libraries",
        ),
        "torch.package.PackageImporter": (
            _model("torch.package.PackageImporter", file_or_buffer=marker),
            [],
            "imports code from a package file",
        ),
        "a second config loaded with its own grants": (
            _model(
                "automodel.core.config.load_config",
                path=marker,
                allowed_imports=["os"],
            ),
            [],
            "'automodel.core.config.load_config' is not something a config may call",
        ),
        "a *_fn value": (
            {"dataloader": {"shuffle": True, "collate_fn": "os.system"}},
            [],
            "dataloader.collate_fn: 'os.system' is refused",
        ),
        "a nested target": (
            {"optimizer": {"_target_": "torch.optim.AdamW", "lr": {"_target_": "os.system"}}},
            [],
            "optimizer.lr._target_: 'os.system' is refused",
        ),
        "trust_remote_code in the file": (
            _model(from_config, **remote),
            [],
            "model.trust_remote_code: would run Python code from the model's repository; a "
            "config cannot allow that by itself. If you trust the repository, add "
            "--trust-remote-code",
        ),
        "trust_remote_code as an override": (
            _model(from_config, config=str(p["remote"])),
            ["--+model.trust_remote_code", "true"],
            "model.trust_remote_code: would run Python code",
        ),
        "a Hub attention kernel": (
            {},
            ["--+model.attn_implementation", "kernels-community/flash-attn"],
            "would download and run the Hub kernel 'kernels-community/flash-attn'",
        ),
        "allowed_imports as an override": (
            _model("os.system", command=f"touch {marker}"),
            ["--+allowed_imports", "[os]"],
            "asks to trust os",
        ),
    }


CASE_NAMES = list(_cases({k: Path() for k in ("marker", "hub", "pickle", "remote")}))


@pytest.mark.parametrize("verb", [["validate"], []], ids=["validate", "run"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_config_is_refused_and_nothing_runs(name, verb, payloads, tmp_path, capsys):
    change, extra, message = _cases(payloads)[name]
    config = _config(tmp_path, change)
    code = automodel([*verb, "finetune", "llm", "-c", str(config), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(message, err), err
    assert f"{config}:" in err or "command line" in err  # where the problem is
    assert "Traceback" not in err
    assert not payloads["marker"].exists()
    assert not (tmp_path / "run").exists()  # refused before the run wrote anything


def test_yaml_python_tags_are_not_constructed(payloads, tmp_path, capsys):
    config = tmp_path / "tagged.yaml"
    marker = payloads["marker"]
    for payload, error in (
        (f"!!python/object/apply:os.system ['touch {marker}']", "tag:yaml.org,2002:python/object"),
        ("!!python/name:os.system ''", "could not determine a constructor for the tag"),
    ):
        config.write_text(f"model: {payload}\n")
        assert automodel(["validate", "finetune", "llm", "-c", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"{config}:1: " in err and "not valid YAML" in err and error in err, err
        assert not marker.exists()


def test_the_issue_config_end_to_end_and_the_payloads_are_real(payloads, tmp_path):
    """The real `automodel` process: refused by validate and by the run; allowed, the code runs."""
    marker = payloads["marker"]
    cases = _cases(payloads)
    config = _config(tmp_path, cases["os.system with allowed_imports in the file"][0])
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    for verb in (["validate"], []):
        result = subprocess.run(
            [str(AUTOMODEL), *verb, "finetune", "llm", "-c", str(config)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert f"{config}:1: allowed_imports: the config asks to trust os" in result.stderr
        assert "'os.system' is refused" in result.stderr and "Traceback" not in result.stderr
        assert not marker.exists() and "config OK" not in result.stdout
    # Positive control: the command line's grant is what stood between the config and its code.
    remote = _config(tmp_path, cases["trust_remote_code in the file"][0], "remote.yaml")
    result = subprocess.run(
        [str(AUTOMODEL), "finetune", "llm", "-c", str(remote), "--trust-remote-code"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert marker.exists(), result.stderr
    assert result.returncode == 2 and "payload ran" in result.stderr
    marker.unlink()
    hub = _config(tmp_path, cases["torch.hub.load"][0], "hub.yaml")
    assert automodel(["finetune", "llm", "-c", str(hub), "--allow-import", "torch.hub.load"]) == 2
    assert marker.exists()
    marker.unlink()
