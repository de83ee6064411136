"""Tests of automodel.core.config: loading, overrides, interpolation, redaction, targets, validation."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from automodel.core.config import (
    REDACTED,
    ConfigError,
    ConfigNode,
    Problem,
    Section,
    TargetError,
    instantiate,
    is_secret_key,
    load_config,
    parse_overrides,
    recipe_main,
    resolve_target,
    save_config,
    validate_config,
)


@pytest.fixture
def targets_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real importable module outside the default allow-list, for building objects."""
    (tmp_path / "am_test_targets.py").write_text(
        textwrap.dedent(
            """
            class Adder:
                def __init__(self, a, b=1, *, scale=1.0):
                    self.a, self.b, self.scale = a, b, scale
                def value(self):
                    return (self.a + self.b) * self.scale

            def pair(left, right):
                return (left, right)

            def collect(items, reduce_fn=None):
                return reduce_fn(items) if reduce_fn else items

            def total(values):
                return sum(values)

            def anything(**kwargs):
                return kwargs

            def strict(x):
                if x < 0:
                    raise ValueError("x must be >= 0")
                return x
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "am_test_targets"
    sys.modules.pop("am_test_targets", None)


# -- loading and access ---------------------------------------------------------------------------


def test_attribute_and_dotted_access(write):
    cfg = load_config(write("optimizer:\n  lr: 0.1\n  betas: [0.9, 0.95]\nname: run\n"))
    assert cfg.optimizer.lr == 0.1
    assert cfg["optimizer.lr"] == 0.1
    assert cfg.get("optimizer.betas.1") == 0.95
    assert cfg.get("optimizer.missing", 7) == 7
    assert "optimizer.lr" in cfg and "optimizer.nope" not in cfg
    assert cfg.optimizer.key_path == "optimizer"
    assert cfg.to_dict() == {"optimizer": {"lr": 0.1, "betas": [0.9, 0.95]}, "name": "run"}
    with pytest.raises(AttributeError, match=r"optimizer\.lrr.*did you mean 'lr'"):
        _ = cfg.optimizer.lrr


def test_yaml_numbers_are_typed_like_yaml_1_2(write):
    cfg = load_config(write("a: 1e-4\nb: 2.0e-5\nc: 1.0e5\nd: 3\ne: '1e-4'\nf: 1_000\n"))
    assert cfg.a == pytest.approx(1e-4) and isinstance(cfg.a, float)
    assert cfg.b == pytest.approx(2e-5) and isinstance(cfg.b, float)
    assert cfg.c == 1e5 and isinstance(cfg.c, float)
    assert cfg.d == 3 and isinstance(cfg.d, int)
    assert cfg.e == "1e-4"
    assert cfg.f == 1000


def test_duplicate_key_names_both_lines(write):
    path = write("a: 1\nb:\n  c: 1\n  c: 2\n")
    with pytest.raises(
        ConfigError, match=r"cfg\.yaml:4: b\.c: duplicate key \(first defined at line 3\)"
    ):
        load_config(path)


def test_bad_yaml_empty_and_non_mapping_files(write, tmp_path):
    with pytest.raises(ConfigError, match=r"cfg\.yaml:2: not valid YAML"):
        load_config(write("a: [1, 2\nb: 3\n"))
    with pytest.raises(ConfigError, match="is empty"):
        load_config(write("# nothing\n", "empty.yaml"))
    with pytest.raises(ConfigError, match="mapping of sections, not a list"):
        load_config(write("- 1\n- 2\n", "list.yaml"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_anchors_and_merge_keys(write):
    cfg = load_config(write("base: &b {lr: 0.1, wd: 0.0}\nopt:\n  <<: *b\n  wd: 0.01\n"))
    assert cfg.opt.to_dict() == {"lr": 0.1, "wd": 0.01}


# -- overrides ------------------------------------------------------------------------------------


def test_override_forms_and_typing(write):
    path = write(
        """
        optimizer: {lr: 0.1, betas: [0.9, 0.95], fused: false}
        step_scheduler: {max_steps: 10, name: null}
        model: {path: a}
        """
    )
    cfg = load_config(
        path,
        [
            "--optimizer.lr", "1e-4",
            "--optimizer.fused=true",
            "--optimizer.betas", "[0.8,0.9]",
            "--optimizer.betas.0", "0.5",
            "--step_scheduler.max_steps", "20",
            "--step_scheduler.name", "none",
            "--model.path", "null",
        ],
    )  # fmt: skip
    assert cfg.optimizer.lr == pytest.approx(1e-4) and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.fused is True
    assert cfg.optimizer.betas == [0.5, 0.9]
    assert cfg.step_scheduler.max_steps == 20 and isinstance(cfg.step_scheduler.max_steps, int)
    assert cfg.step_scheduler.name is None
    assert cfg.model.path is None
    assert cfg.where("optimizer.lr") == "command line (--optimizer.lr=1e-4)"
    assert cfg.where("optimizer.fused") == "command line (--optimizer.fused=true)"
    assert cfg.where("model") == f"{path}:4"


def test_override_of_unknown_key_suggests_and_explains_add(write):
    path = write("optimizer: {lr: 0.1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["--optimizer.lrr", "1", "--optimiser.lr", "2"])
    text = str(info.value)
    assert "2 problems" in text  # every bad override is reported at once
    assert "no key 'optimizer.lrr' in the config (did you mean 'optimizer.lr'?)" in text
    assert "--+optimizer.lrr VALUE" in text
    assert "no key 'optimiser' in the config (did you mean 'optimizer'?)" in text


def test_add_and_delete_keys(write):
    path = write("optimizer: {lr: 0.1, wd: 0.0}\nextra: null\n")
    cfg = load_config(
        path,
        ["--+optimizer.eps", "1e-8", "--+new.deep.key=3", "--+extra.x", "1", "--~optimizer.wd"],
    )
    assert cfg.optimizer.to_dict() == {"lr": 0.1, "eps": 1e-8}
    assert cfg.new.deep.key == 3
    assert cfg.extra.x == 1
    assert cfg.where("new") == "command line (--+new.deep.key=3)"
    with pytest.raises(ConfigError, match=r"no key 'optimizer\.gone'"):
        load_config(path, ["--~optimizer.gone"])
    with pytest.raises(ConfigError, match=r"cannot set a key below 'optimizer\.lr'"):
        load_config(path, ["--optimizer.lr.x", "1"])


def test_malformed_overrides():
    with pytest.raises(ConfigError) as info:
        parse_overrides(["--a.b", "--c", "1", "stray", "--~d=1", "--..x", "2", "--last"])
    text = str(info.value)
    assert "--a.b needs a value" in text
    assert "unexpected argument 'stray'" in text
    assert "a deletion takes no value" in text
    assert "does not name a key" in text
    assert "--last needs a value" in text
    assert [o.key for o in parse_overrides(["--lr", "-1e-3"])] == [
        "lr"
    ]  # negative values are values
    assert parse_overrides(["--lr", "-1e-3"])[0].value == pytest.approx(-1e-3)


# -- environment interpolation --------------------------------------------------------------------


def test_env_interpolation(write):
    path = write(
        """
        data: ${DATA_DIR}/train.jsonl
        lr: ${LR,1e-4}
        steps: ${STEPS,10}
        name: ${NAME,}
        literal: $${NOT_A_VAR}
        """
    )
    cfg = load_config(path, environ={"DATA_DIR": "/d", "STEPS": "25"})
    assert cfg.data == "/d/train.jsonl"
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)
    assert cfg.steps == 25
    assert cfg.name is None or cfg.name == ""
    assert cfg.literal == "${NOT_A_VAR}"


def test_missing_env_variable_is_named(write):
    path = write("a: ${MISSING_ONE}\nb: x-${MISSING_TWO}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "MISSING_ONE is not set" in str(info.value)
    assert "MISSING_TWO is not set" in str(info.value)
    assert "cfg.yaml:1" in str(info.value)


def test_overrides_can_use_env_references(write):
    cfg = load_config(write("a: 1\n"), ["--a", "${A_VALUE}"], environ={"A_VALUE": "5"})
    assert cfg.a == 5


# -- redaction and dump ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("hf_token", True),
        ("token", True),
        ("api_key", True),
        ("wandbApiKey", True),
        ("db_password", True),
        ("client_secret", True),
        ("pad_token", False),
        ("eos_token", False),
        ("max_tokens", False),
        ("keep_last_n", False),
        ("monkey", False),
        ("tokenizer", False),
    ],
)
def test_secret_key_names(key, secret):
    assert is_secret_key(key) is secret


def test_secrets_and_env_values_are_redacted_when_printed_and_saved(write, tmp_path):
    path = write(
        """
        wandb: {api_key: abc123, project: p}
        hub:
          token: ${HF_TOKEN}
        data_dir: ${DATA_DIR}
        tokenizer: {pad_token: "<pad>"}
        """
    )
    cfg = load_config(path, environ={"HF_TOKEN": "hf_supersecret", "DATA_DIR": "/private/data"})
    assert cfg.hub.token == "hf_supersecret"  # code sees the real values
    shown = repr(cfg) + str(cfg.to_yaml())
    for leaked in ("abc123", "hf_supersecret", "/private/data"):
        assert leaked not in shown
    assert REDACTED in shown and "${HF_TOKEN}" in shown and "${DATA_DIR}" in shown
    assert "<pad>" in shown
    out = tmp_path / "saved" / "config.yaml"
    save_config(cfg, out)
    saved = out.read_text()
    assert "abc123" not in saved and "hf_supersecret" not in saved and "/private/data" not in saved
    # env-derived values are saved as their reference, so the saved file resolves again
    again = load_config(out, environ={"HF_TOKEN": "hf_supersecret", "DATA_DIR": "/private/data"})
    assert again.hub.token == "hf_supersecret" and again.data_dir == "/private/data"
    assert again.wandb.api_key == REDACTED


def test_dump_round_trip(write, tmp_path):
    path = write(
        """
        model: {_target_: am.build, dims: [1, 2, 3], lr: 1e-4, flag: true, none: null}
        nested: {a: {b: {c: "text: with colon"}}, empty: {}, floats: [0.1, 1.0e-10, .inf]}
        """
    )
    cfg = load_config(path, ["--model.lr", "3e-5", "--+model.extra", "{k: v}"])
    out = tmp_path / "dumped.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    assert load_config(out).to_dict() == cfg.to_dict()


# -- targets and the allow-list -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("os.system", "is refused: it runs code"),
        ("builtins.eval", "is refused: it runs code"),
        ("subprocess.run", "is refused: it runs code"),
        ("shutil.rmtree", "is not something a config may call"),
    ],
)
def test_dangerous_targets_rejected_by_default(target, why):
    with pytest.raises(
        TargetError, match=rf"'{target}' {why}.*on the command line: --allow-import"
    ):
        resolve_target(target)


def test_private_names_rejected_even_when_allowed():
    with pytest.raises(TargetError, match="private name '_C'"):
        resolve_target("torch._C._get_tracing_state")
    with pytest.raises(TargetError, match="private name '__import__'"):
        resolve_target("builtins.__import__", ["builtins"])


def test_target_resolution_errors_are_specific():
    with pytest.raises(
        TargetError, match=r"'torch\.optim' has no attribute 'AdamWW' \(did you mean 'AdamW'\?\)"
    ):
        resolve_target("torch.optim.AdamWW")
    with pytest.raises(TargetError, match="not a dotted Python path"):
        resolve_target("torch.optim.Adam W")
    with pytest.raises(TargetError, match="not something that can be called"):
        resolve_target("torch.nn.GELU.dump_patches")  # a bool class attribute
    assert resolve_target("torch.optim.AdamW").__name__ == "AdamW"


def test_only_the_caller_grants_imports_not_the_config_key(write, targets_module):
    path = write(f"thing: {{_target_: {targets_module}.Adder, a: 2}}\n")
    with pytest.raises(TargetError, match="not something a config may call"):
        instantiate(load_config(path).thing)
    assert instantiate(load_config(path, allowed_imports=[targets_module]).thing).value() == 3
    path2 = write(
        f"allowed_imports: [{targets_module}]\nthing: {{_target_: {targets_module}.Adder, a: 5}}\n",
        "b.yaml",
    )
    with pytest.raises(TargetError, match=f"--allow-import {targets_module}"):
        instantiate(load_config(path2).thing)  # the key asks; it grants nothing
    assert instantiate(load_config(path2, allowed_imports=[targets_module]).thing).value() == 6


def test_instantiate_nested_lists_fn_and_runtime_kwargs(write, targets_module):
    m = targets_module
    path = write(
        f"""
        thing:
          _target_: {m}.pair
          left: {{_target_: {m}.Adder, a: 1, b: 2, scale: 2.0}}
          right:
            - {{_target_: {m}.Adder, a: 3}}
            - plain
            - {{mapping: {{_target_: {m}.Adder, a: 10}}}}
        reducer:
          _target_: {m}.collect
          items: [1, 2, 3]
          reduce_fn: {m}.total
        """
    )
    cfg = load_config(path, allowed_imports=[m])
    left, right = instantiate(cfg.thing)
    assert left.value() == 6.0
    assert right[0].value() == 4 and right[1] == "plain" and right[2]["mapping"].value() == 11
    assert instantiate(cfg.reducer) == 6  # `reduce_fn` names a callable without calling it
    assert instantiate(cfg.thing, right="runtime")[1] == "runtime"


def test_instantiate_failure_names_the_key(write, targets_module):
    path = write(f"\nthing: {{_target_: {targets_module}.strict, x: -1}}\n")
    with pytest.raises(
        ConfigError,
        match=r"cfg\.yaml:2: thing: building am_test_targets\.strict failed: ValueError: x must be >= 0",
    ):
        instantiate(load_config(path, allowed_imports=[targets_module]).thing)


# -- validation -----------------------------------------------------------------------------------


def _step_scheduler(
    max_steps: int, global_batch_size: int = 8, val_every_steps: int | None = None
) -> None:
    """Signature stand-in for a section without `_target_` (like a recipe's step_scheduler)."""


SECTIONS = {
    "model": Section(required=True, needs_target=True),
    "optimizer": Section(needs_target=True, provided=("params",)),
    "step_scheduler": Section(keys_of=_step_scheduler),
    "logging": Section(),
}


def test_validation_reports_every_problem_with_key_line_and_suggestion(write):
    path = write(
        """
        model:
          _target_: transformers.AutoConfig.for_model
          model_type: llama
        optimiser:
          lr: 0.1
        optimizer:
          _target_: torch.optim.AdamW
          lrr: 0.1
          betas: [0.9, 0.95]
          foreach: {_target_: torch.optim.SGDD}
        step_scheduler:
          max_stepz: 10
        logging:
          collate_fn: torch.nn.functional.nope
        """
    )
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(path), SECTIONS)
    problems = {p.key: (p.message, p.where) for p in info.value.problems}
    assert problems["optimiser"][0].startswith("unknown section (did you mean 'optimizer'?)")
    assert problems["optimiser"][1] == f"{path}:5"
    assert problems["optimizer.lrr"] == (
        "torch.optim.AdamW takes no argument 'lrr' (did you mean 'lr'?)",
        f"{path}:9",
    )
    assert (
        "has no attribute 'SGDD' (did you mean 'SGD'?)" in problems["optimizer.foreach._target_"][0]
    )
    assert problems["step_scheduler.max_stepz"][0].endswith(
        "takes no argument 'max_stepz' (did you mean 'max_steps'?)"
    )
    assert "needs the argument 'max_steps'" in problems["step_scheduler"][0]
    assert "has no attribute 'nope'" in problems["logging.collate_fn"][0]
    assert len(info.value.problems) == 6


def test_config_classes_take_their_older_rope_keys(write):
    """transformers converts `rope_theta` and `partial_rotary_factor` into `rope_parameters`
    outside its signature: taken; a typo, or a key it keeps without reading
    (`first_k_dense_replace` for GLM-4.7-Flash, whose layers come from `mlp_layer_types`), is
    an error."""
    glm = "transformers.models.glm4_moe_lite.configuration_glm4_moe_lite.Glm4MoeLiteConfig"
    path = write(
        f"""
        model:
          _target_: transformers.AutoModelForCausalLM.from_config
          config: {{_target_: transformers.LlamaConfig, rope_theta: 10000.0, hiden_size: 8}}
        teacher:
          _target_: transformers.AutoModelForCausalLM.from_config
          config: {{_target_: {glm}, partial_rotary_factor: 0.5, first_k_dense_replace: 2}}
        optimizer: {{_target_: torch.optim.SGD, lr: 0.1}}
        step_scheduler: {{max_steps: 5}}
        """
    )
    sections = {**SECTIONS, "teacher": Section(needs_target=True)}
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(path), sections)
    keys = [p.key for p in info.value.problems]
    assert keys == ["model.config.hiden_size", "teacher.config.first_k_dense_replace"]
    assert "(did you mean 'hidden_size'?)" in info.value.problems[0].message


def test_validation_required_sections_and_targets(write):
    with pytest.raises(ConfigError) as info:
        validate_config(load_config(write("optimizer: {lr: 0.1}\n")), SECTIONS)
    messages = [str(p) for p in info.value.problems]
    assert any("model: required section is missing" in m for m in messages)
    assert any("optimizer: needs a _target_" in m for m in messages)


def test_validation_accepts_good_config_and_provided_args(write, targets_module):
    path = write(
        f"""
        allowed_imports: [{targets_module}]
        model: {{_target_: {targets_module}.anything, whatever: 1}}
        optimizer: {{_target_: torch.optim.SGD, lr: 0.1, momentum: 0.9}}
        step_scheduler: {{max_steps: 5}}
        """
    )
    cfg = load_config(path, allowed_imports=[targets_module])
    validate_config(cfg, SECTIONS)  # `params` is provided by the recipe


# -- recipe entry point ---------------------------------------------------------------------------


def test_recipe_main_validate_run_and_errors(write, capsys, tmp_path):
    seen = {}
    good = write("model: {_target_: torch.nn.Identity}\nstep_scheduler: {max_steps: 1}\n")

    def run(cfg: ConfigNode) -> None:
        seen["steps"] = cfg.step_scheduler.max_steps

    assert recipe_main(["--validate-only", "-c", str(good)], sections=SECTIONS, run=run) == 0
    assert "config OK" in capsys.readouterr().out and not seen
    assert (
        recipe_main(
            ["-c", str(good), "--step_scheduler.max_steps", "4"], sections=SECTIONS, run=run
        )
        == 0
    )
    assert seen["steps"] == 4

    assert (
        recipe_main(
            ["-c", str(good), "--step_scheduler.max_stepz", "4"], sections=SECTIONS, run=run
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "did you mean 'step_scheduler.max_steps'" in err and "Traceback" not in err
    assert recipe_main(["--debug", "-c", str(good), "--nope", "1"], sections=SECTIONS, run=run) == 2
    assert "Traceback" in capsys.readouterr().err
    assert recipe_main(["-c", str(tmp_path / "absent.yaml")], sections=SECTIONS, run=run) == 2
    assert "config file not found" in capsys.readouterr().err
    assert recipe_main([], sections=SECTIONS, run=run) == 2
    assert "pass -c CONFIG.yaml" in capsys.readouterr().err


def test_recipe_main_locates_a_recipes_problem_at_its_key(write, capsys):
    good = write("model: {_target_: torch.nn.Identity}\nstep_scheduler:\n  max_steps: 1\n")

    def run(cfg: ConfigNode) -> None:
        raise ConfigError(
            [Problem("step_scheduler.max_steps", "too few"), Problem("loss_fn", "absent", "x:9")]
        )

    assert recipe_main(["-c", str(good)], sections=SECTIONS, run=run) == 2
    err = capsys.readouterr().err
    assert f"{good}:3: step_scheduler.max_steps: too few" in err  # the key's own line
    assert "x:9: loss_fn: absent" in err  # a location the recipe gave is kept


def test_recipe_main_allow_import_flag(write, targets_module):
    path = write(f"model: {{_target_: {targets_module}.anything}}\n")
    assert recipe_main(["--validate-only", "-c", str(path)], sections=SECTIONS, run=print) == 2
    assert (
        recipe_main(
            ["--allow-import", targets_module, "--validate-only", "-c", str(path)],
            sections=SECTIONS,
            run=print,
        )
        == 0
    )


def test_overrides_set_keys_the_schemas_accept_without_plus(write):
    path = write("model: {_target_: torch.nn.Linear, in_features: 2, out_features: 3}\n")
    overrides = ["--step_scheduler.max_steps", "7", "--model.bias", "false", "--optimizer.lr=1"]
    with pytest.raises(ConfigError) as plain:  # without the recipe's sections: --+ as before
        load_config(path, overrides)
    assert "--+step_scheduler.max_steps" in str(plain.value)

    cfg = load_config(path, overrides[:4], sections=SECTIONS)
    assert cfg.step_scheduler.max_steps == 7 and cfg.model.bias is False
    assert cfg.where("step_scheduler.max_steps").startswith("command line")
    # optimizer has no _target_ in the file: nothing says what it takes, so --+ is needed
    with pytest.raises(ConfigError, match=r"--\+optimizer.lr"):
        load_config(path, overrides, sections=SECTIONS)


def test_overrides_of_keys_no_schema_accepts_name_the_closest(write):
    path = write(
        "model: {_target_: torch.nn.Linear, in_features: 2, out_features: 3}\n"
        "optimizer: {_target_: torch.optim.SGD, lr: 0.1}\n"
    )
    with pytest.raises(ConfigError) as typo:
        load_config(path, ["--step_scheduler.max_stepz", "4"], sections=SECTIONS)
    message = str(typo.value)
    assert (
        "did you mean 'step_scheduler.max_steps'" in message
        and "takes: global_batch_size, max_steps, val_every_steps" in message
    )
    assert "--+" not in message  # a closed schema: adding the key would not help
    with pytest.raises(ConfigError, match=r"did you mean 'optimizer.momentum'") as e:
        load_config(path, ["--optimizer.momentun", "0.9"], sections=SECTIONS)
    assert "lr," in str(e.value) and "params" not in str(e.value)  # the recipe provides params
    cfg = load_config(path, ["--optimizer.momentum", "0.9"], sections=SECTIONS)
    assert cfg.optimizer.momentum == 0.9
