"""What a config may call: the allow-list, refused entry points, grants, remote code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from automodel.core.config import (
    ConfigError,
    Section,
    TargetError,
    instantiate,
    load_config,
    recipe_main,
    resolve_target,
    validate_config,
)

SECTIONS = {"model": Section(required=True, needs_target=True), "extra": Section()}


@pytest.fixture
def reexports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user package that re-exports code runners under innocent names."""
    (tmp_path / "am_reexports.py").write_text(
        "from os import system as build\nfrom torch import load as read_weights\n"
        "import torch as backend\n\ndef own(x=1):\n    return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "am_reexports"
    sys.modules.pop("am_reexports", None)


REFUSED = [
    ("torch.hub.load", "downloads and runs code"),
    ("torch.utils.cpp_extension.load_inline", "compiles and loads C\\+\\+"),
    ("torch.ops.load_library", "loads shared libraries"),
    ("torch.save", "writes a file"),
    ("torch.load", "unpickles"),
    ("torch.package.PackageImporter", "imports code from a package file"),
    ("torch.jit.load", "loads a serialized program"),
    ("transformers.dynamic_module_utils.get_class_from_dynamic_module", "imports code"),
    ("transformers.LlamaForCausalLM.push_to_hub", "uploads"),
]


@pytest.mark.parametrize(("target", "why"), REFUSED)
def test_code_loading_entry_points_are_refused_even_under_a_granted_package(target, why):
    package = target.split(".")[0]
    for granted in ((), (package,)):
        with pytest.raises(TargetError, match=rf"is refused: it {why}.*--allow-import {target}$"):
            resolve_target(target, granted)
    assert callable(resolve_target(target, (target,)))  # naming it exactly is the way in


def test_what_recipes_need_resolves_and_the_rest_of_a_package_does_not():
    for target in (
        "torch.optim.AdamW",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        "torch.nn.CrossEntropyLoss",
        "torch.nn.functional.cross_entropy",
        "torch.utils.data.DataLoader",
        "torchdata.stateful_dataloader.StatefulDataLoader",
        "transformers.AutoModelForCausalLM.from_pretrained",
        "transformers.LlamaForCausalLM.from_pretrained",
        "transformers.AutoTokenizer.from_pretrained",
        "transformers.AutoConfig.for_model",
        "transformers.get_cosine_schedule_with_warmup",
        "datasets.load_dataset",
        "automodel.core.models.AutoModelForCausalLM.from_pretrained",
        "automodel.core.data.chat_dataset",
        "automodel.core.losses.MaskedCrossEntropy",
        "automodel.peft.LoraConfig",
    ):
        assert callable(resolve_target(target)), target
    for target in (
        "torch.distributed.init_process_group",
        "transformers.Trainer",
        "automodel.core.config.load_config",  # would load a second config with its own grants
        "automodel.core.config.instantiate",
        "automodel.peft.save_adapter",  # writes files
        "automodel.checkpoint.save_consolidated",
        "safetensors.torch.save_file",
    ):
        with pytest.raises(TargetError, match="is not something a config may call"):
            resolve_target(target)


def test_a_module_reached_under_another_name_is_refused():
    # torch.nn.* is allowed, and torch.nn.functional imports torch itself
    with pytest.raises(TargetError, match="reaches the module 'torch' under another name"):
        resolve_target("torch.nn.functional.torch.hub.load")


def test_reexports_are_judged_by_where_they_are_defined(reexports):
    granted = (reexports,)
    assert resolve_target(f"{reexports}.own", granted)() == 1
    with pytest.raises(TargetError, match=r"\(that is 'posix\.system'\) is refused"):
        resolve_target(f"{reexports}.build", granted)
    with pytest.raises(TargetError, match=r"\(that is 'torch\.serialization\.load'\) is refused"):
        resolve_target(f"{reexports}.read_weights", granted)
    with pytest.raises(TargetError, match="reaches the module 'torch' under another name"):
        resolve_target(f"{reexports}.backend.optim.AdamW", granted)
    exact = f"{reexports}.read_weights"
    assert callable(resolve_target(exact, (exact,)))


def test_the_config_key_asks_and_validation_says_how_to_grant(write, tmp_path):
    path = write(
        """
        allowed_imports: [os, my_project]
        model: {_target_: os.system, command: "touch marker"}
        """
    )
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(path), SECTIONS)
    problems = {p.key: p for p in info.value.problems}
    ask = problems["allowed_imports"]
    assert ask.where == f"{path}:2"
    assert "asks to trust os, my_project, but a config cannot extend its own allow-list" in (
        ask.message
    )
    assert "--allow-import os --allow-import my_project" in ask.message
    assert "AUTOMODEL_ALLOW_IMPORTS" in ask.message
    target = problems["model._target_"]
    assert target.where == f"{path}:3" and "--allow-import os.system" in target.message
    granted = load_config(path, allowed_imports=["os.system", "my_project"])
    with pytest.raises(ConfigError) as info:  # os itself was asked for and not granted
        validate_config(granted, SECTIONS)
    assert [p.key for p in info.value.problems] == ["allowed_imports"]
    assert not (tmp_path / "marker").exists()


REMOTE = [
    ("trust_remote_code", "true", "run Python code from the model's repository"),
    ("trust_remote_code", "'yes'", "run Python code from the model's repository"),
    ("use_kernels", "true", "run kernels from the Hugging Face Hub"),
    ("attn_implementation", "kernels-community/flash-attn", "run the Hub kernel"),
    ("model_kwargs.trust_remote_code", "true", "run Python code"),
]


@pytest.mark.parametrize(("key", "value", "what"), REMOTE)
def test_remote_code_needs_the_command_line(write, key, value, what):
    head, _, last = key.rpartition(".")
    setting = f"{head}: {{{last}: {value}}}" if head else f"{key}: {value}"
    path = write(
        f"model:\n  _target_: automodel.core.models.load_model_config\n  config: x\n  {setting}\n"
    )
    plain = write(
        "model: {_target_: automodel.core.models.load_model_config, config: x}\n", "b.yaml"
    )
    key = f"model.{key}"
    for cfg in (load_config(path), load_config(plain, [f"--+{key}={value}"])):
        with pytest.raises(ConfigError) as info:
            validate_config(cfg, SECTIONS)
        (problem,) = info.value.problems
        assert problem.key == key and what in problem.message
        assert "add --trust-remote-code to the command line" in problem.message
        with pytest.raises(ConfigError, match="--trust-remote-code"):
            instantiate(cfg.model)  # the build refuses too, validated or not
    validate_config(load_config(path, trust_remote_code=True), SECTIONS)


def test_false_and_local_settings_are_not_remote_code(write):
    path = write(
        """
        model:
          _target_: torch.nn.Identity
        extra: {trust_remote_code: false, use_kernels: null, attn_implementation: sdpa}
        """
    )
    validate_config(load_config(path), SECTIONS)


def test_recipe_main_takes_grants_from_flags_and_the_environment(write, monkeypatch, capsys):
    path = write("model: {_target_: torch.hub.list, github: x}\n")
    argv = ["--validate-only", "-c", str(path)]
    assert recipe_main(argv, sections=SECTIONS, run=print) == 2
    assert "--allow-import torch.hub.list" in capsys.readouterr().err
    assert (
        recipe_main(["--allow-import", "torch.hub.list", *argv], sections=SECTIONS, run=print) == 0
    )
    monkeypatch.setenv("AUTOMODEL_ALLOW_IMPORTS", "my_project, torch.hub.list")
    assert recipe_main(argv, sections=SECTIONS, run=print) == 0
    remote = write("model: {_target_: torch.nn.Identity, trust_remote_code: true}\n", "r.yaml")
    assert recipe_main(["--validate-only", "-c", str(remote)], sections=SECTIONS, run=print) == 2
    flags = ["--trust-remote-code", "--validate-only", "-c", str(remote)]
    assert recipe_main(flags, sections=SECTIONS, run=print) == 0
