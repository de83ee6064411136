"""NeMo AutoModel configs, read as they are: their `_target_` paths and key names in ours.

A config looks like one of theirs when it names a `nemo_automodel.*` target (or `*_fn`) or has a
top-level `recipe:` key. `translate` rewrites such data into our spelling before validation,
keeping for every key it moves the place it came from in the user's file, so errors still
point there. `TARGET_ALIASES` is the one table of their targets and ours (docs/migrating.md
prints it); `resolve_target` consults it for any `nemo_automodel.*` path, so no package of that
name is ever imported. What we cannot honour is a ConfigError naming the option and what to
use instead; what we drop is a note, and only where dropping it cannot change the losses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigError, Problem, did_you_mean

NEMO_PREFIX = "nemo_automodel."
TARGET_KEY = "_target_"


@dataclass(frozen=True)
class Alias:
    """How one of their targets is spelled here.

    `ours`: our target (None: the section is plain keys here, its `_target_` is dropped).
    `args`: their argument name -> ours. `dropped`: their arguments we ignore, each with why it
    cannot change results. `refused`: their arguments (with the values we accept anyway, e.g.
    the default) we cannot honour, each with what to use instead. `defaults`: their defaults
    that differ from ours, written out so the meaning stays theirs.
    """

    ours: str | None
    args: Mapping[str, str] = field(default_factory=dict)
    dropped: Mapping[str, str] = field(default_factory=dict)
    refused: Mapping[str, tuple[tuple[Any, ...], str]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    section: Mapping[str, Any] = field(default_factory=dict)  # keys the section gains
    note: str = ""  # a difference to say whenever it is used
    limit: str | None = None  # their argument that keeps the first N samples: a `split` slice
    hf_padding: bool = False  # their tokenizer-style `padding` / `truncation` arguments


_MODEL_DROPPED = {
    "use_liger_kernel": "a fused-kernel choice for the same computation",
    "use_sdpa_patching": "an attention-kernel choice for the same computation",
    "backend": "their model-implementation kernel backend (attention/linear kernels)",
    "force_hf": "the Hugging Face implementation is the one used here",
}
_LOSS_DROPPED = {
    "fp32_upcast": "the loss is always summed in float32 here (false there rounds in the "
    "logits' dtype)"
}
_CAUSAL_LM = "automodel.core.models.AutoModelForCausalLM"
_LOADER = "torchdata.stateful_dataloader.StatefulDataLoader"
_COLLATER = "nemo_automodel.components.datasets.utils.default_collater"
_MOCK_DATA = "nemo_automodel.components.datasets.llm.mock_iterable_dataset.MockIterableDataset"
_THD_COLLATER = "nemo_automodel.components.datasets.utils.packed_sequence_thd_collater"

# Their target -> ours. The one table (printed in docs/migrating.md).
TARGET_ALIASES: dict[str, Alias] = {
    "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained": Alias(
        f"{_CAUSAL_LM}.from_pretrained", dropped=_MODEL_DROPPED
    ),
    "nemo_automodel.NeMoAutoModelForCausalLM.from_config": Alias(
        f"{_CAUSAL_LM}.from_config", dropped=_MODEL_DROPPED
    ),
    "nemo_automodel.components._transformers.auto_model.NeMoAutoModelForCausalLM.from_pretrained": Alias(
        f"{_CAUSAL_LM}.from_pretrained", dropped=_MODEL_DROPPED
    ),
    "nemo_automodel.NeMoAutoTokenizer.from_pretrained": Alias(
        "automodel.core.models.load_tokenizer",
        args={"pretrained_model_name_or_path": "path_or_name"},
    ),
    "nemo_automodel._transformers.auto_tokenizer.NeMoAutoTokenizer.from_pretrained": Alias(
        "automodel.core.models.load_tokenizer",
        args={"pretrained_model_name_or_path": "path_or_name"},
    ),
    "nemo_automodel.components.datasets.llm.squad.make_squad_dataset": Alias(
        "automodel.core.data.squad_dataset",
        args={"dataset_name": "path"},  # limit_dataset_samples: a slice of `split`
        refused={
            "fp8": ((False,), "fp8 padding of samples is not supported; drop it"),
            "padding": ((False,), "batches are padded by the dataloader; drop it"),
            "truncation": ((False,), "use seq_length (with truncation: truncate|drop|error)"),
            "chat_template": ((None,), "use automodel.core.data.chat_dataset for chat data"),
        },
        defaults={"path": "squad"},
        limit="limit_dataset_samples",
    ),
    "nemo_automodel.components.datasets.llm.hellaswag.HellaSwag": Alias(
        "automodel.core.data.hellaswag_dataset",
        args={"path_or_dataset": "path"},
        dropped={"pad_to_max_length": "padding is masked out of attention and loss"},
        limit="num_samples_limit",
    ),
    "nemo_automodel.components.datasets.llm.column_mapped_text_instruction_dataset.ColumnMappedTextInstructionDataset": Alias(
        "automodel.core.data.instruction_dataset",
        args={"path_or_dataset_id": "path"},
        refused={
            "answer_only_loss_mask": ((True,), "loss on the whole text: text_dataset"),
            "use_hf_chat_template": ((False,), "chat data: automodel.core.data.chat_dataset"),
        },
        limit="limit_dataset_samples",
        hf_padding=True,
    ),
    "nemo_automodel.components.datasets.llm.chat_dataset.ChatDataset": Alias(
        "automodel.core.data.chat_dataset",
        args={"path_or_dataset_id": "path"},
        refused={
            "shuffle_seed": ((None,), "shuffle with dataloader.shuffle (seeded by rng.seed)"),
            "start_of_turn_token": ((None,), "the chat template marks the turns here"),
            "mask_reasoning_content": ((False,), "drop it"),
            "mask_history": ((False,), "drop it (earlier assistant turns are trained on)"),
            "unshifted": ((False,), "drop it"),
            "skip_invalid_samples": ((False,), "fix or filter the samples"),
        },
        hf_padding=True,
    ),
    "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy": Alias(
        "automodel.core.losses.MaskedCrossEntropy", dropped=_LOSS_DROPPED
    ),
    "nemo_automodel.components.loss.linear_ce.FusedLinearCrossEntropy": Alias(
        "automodel.core.losses.FusedLinearCrossEntropy", dropped=_LOSS_DROPPED
    ),
    "nemo_automodel.components.loss.chunked_ce.ChunkedCrossEntropy": Alias(
        "automodel.core.losses.ChunkedCrossEntropy", dropped=_LOSS_DROPPED
    ),
    "nemo_automodel.components._peft.lora.PeftConfig": Alias(
        "automodel.peft.LoraConfig",
        args={"include_modules": "target_modules"},
        dropped={
            "use_memory_efficient_lora": "a memory/speed choice for the same computation",
            "moe_rank_scaling": "applies to MoE experts only, which need an explicit moe: here",
        },
        refused={
            "lora_A_init": (("xavier",), "set init_a: kaiming or gaussian"),
        },
        note=(
            "lora_A is initialised with kaiming here (NeMo AutoModel: xavier); lora_B starts at "
            "zero in both, so the starting model is the same, not the random A"
        ),
        # their defaults where ours differ (alpha 32, dropout after the adapter input)
        defaults={"alpha": 32, "dropout_position": "post"},
    ),
    "nemo_automodel.components.training.rng.StatefulRNG": Alias(
        None,
        dropped={
            "ranked": (
                "automodel seeds every rank alike (identical initial weights); with one "
                "process, rank 0's seed is the same as theirs"
            )
        },
    ),
    "nemo_automodel.components.distributed.fsdp2.FSDP2Manager": Alias(
        None, section={"strategy": "fsdp2"}, dropped={"backend": "chosen from the device"}
    ),
    "nemo_automodel.components.distributed.ddp.DDPManager": Alias(
        None, section={"strategy": "ddp"}, dropped={"backend": "chosen from the device"}
    ),
    "nemo_automodel.components.loss.kd_loss.KDLoss": Alias(
        None,  # the kd: section (temperature), with the top-level kd_ratio
        dropped={"chunk_size": "a memory choice for the same sum"},
        refused={
            "ignore_index": ((-100,), "labels to skip are -100 here"),
            "fp32_upcast": ((True,), "the KL is computed in float32 here"),
        },
    ),
    _MOCK_DATA: Alias(None),  # benchmark.llm makes its own synthetic rows (see benchmark())
    _COLLATER: Alias(None),  # our dataloader pads (with the tokenizer's pad id) by default
    _THD_COLLATER: Alias(None),  # packed rows (packed_sequence_size > 0) collate on their own
}

# Their targets we know and do not have, with what to use instead.
NOT_SUPPORTED: dict[str, str] = {
    "nemo_automodel.components.distributed.megatron_fsdp.MegatronFSDPManager": (
        "Megatron-FSDP is not supported; use distributed.strategy: fsdp2"
    ),
    "nemo_automodel.components.distributed.nvfsdp.NVFSDPManager": (
        "nvFSDP is not supported; use distributed.strategy: fsdp2"
    ),
    "nemo_automodel.components.loss.te_parallel_ce.TEParallelCrossEntropy": (
        "the Transformer Engine parallel cross-entropy is not shipped; use "
        "automodel.core.losses.MaskedCrossEntropy (or FusedLinearCrossEntropy)"
    ),
}

# Their recipe classes -> our recipe names (`automodel finetune llm`, ...).
RECIPES = {
    "TrainFinetuneRecipeForNextTokenPrediction": "finetune.llm",
    "FinetuneRecipeForNextTokenPrediction": "finetune.llm",
    "KnowledgeDistillationRecipeForNextTokenPrediction": "kd.llm",
    "BenchmarkingRecipeForNextTokenPrediction": "benchmark.llm",
    "FinetuneRecipeForVLM": "finetune.vlm",  # runs once a finetune.vlm recipe is installed
}

# Their section-level keys -> ours: (section, their key) -> (section, our key).
KEY_RENAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("step_scheduler", "val_check_interval"): ("step_scheduler", "val_every_steps"),
    ("step_scheduler", "checkpoint_interval"): ("step_scheduler", "ckpt_every_steps"),
    ("step_scheduler", "log_interval"): ("step_scheduler", "log_every_steps"),
    ("step_scheduler", "grad_accumulation_steps"): ("step_scheduler", "grad_acc_steps"),
    ("checkpoint", "save_every_steps"): ("step_scheduler", "ckpt_every_steps"),
    ("lr_scheduler", "lr_decay_style"): ("lr_scheduler", "style"),
    ("lr_scheduler", "lr_warmup_steps"): ("lr_scheduler", "warmup_steps"),
    ("dist_env", "timeout_minutes"): ("distributed", "timeout_minutes"),
    ("wandb", "save_dir"): ("wandb", "dir"),
}

# Their keys we drop, each with why that cannot change results.
KEY_DROPS: dict[tuple[str, str], str] = {
    ("dist_env", "backend"): "the process-group backend follows the device (nccl on GPU)",
    ("step_scheduler", "gc_every_steps"): "Python garbage collection timing",
    ("step_scheduler", "log_remote_every_steps"): "remote loggers get every logged step",
    ("step_scheduler", "save_checkpoint_every_epoch"): "when checkpoints are written",
    ("checkpoint", "save_consolidated"): "checkpoints here always hold the HF safetensors model",
    ("compile", "backend"): "null is the default backend (inductor)",
}

_LR_STYLES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "WSD": "wsd"}

# Their known key names per section (for "did you mean" on a typo in their spelling).
_THEIR_KEYS = {
    "step_scheduler": [
        "global_batch_size",
        "local_batch_size",
        "grad_acc_steps",
        "ckpt_every_steps",
        "val_every_steps",
        "max_steps",
        "num_epochs",
        "gc_every_steps",
        "log_remote_every_steps",
        "val_check_interval",
        "checkpoint_interval",
        "log_interval",
        "grad_accumulation_steps",
        "save_checkpoint_every_epoch",
    ],
    "checkpoint": [
        "enabled",
        "checkpoint_dir",
        "model_save_format",
        "save_consolidated",
        "restore_from",
        "save_every_steps",
    ],
    "dist_env": ["backend", "timeout_minutes"],
    "lr_scheduler": ["lr_decay_style", "lr_warmup_steps", "min_lr"],
}


@dataclass
class Translation:
    """Our data, where each key came from, what changed (path -> note) and notes to print."""

    data: dict[str, Any]
    where: dict[str, str]
    changed: dict[str, str]
    notes: list[str]
    recipe: str | None = None  # our recipe name from `recipe:`


def looks_like_nemo(data: Mapping[str, Any]) -> bool:
    """True for a config in NeMo AutoModel's spelling: a `recipe:` key or a nemo_automodel target."""
    return "recipe" in data or _names_nemo(data)


def _names_nemo(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(
            (
                isinstance(v, str)
                and v.startswith(NEMO_PREFIX)
                and (k == TARGET_KEY or k.endswith("_fn"))
            )
            or _names_nemo(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_names_nemo(v) for v in value)
    return False


def alias_for(path: str, *, key: str = "", where: str = "") -> str:
    """Our target for their `nemo_automodel.*` path; a ConfigError if there is none."""
    alias = TARGET_ALIASES.get(path)
    if alias is not None and alias.ours is not None:
        return alias.ours
    if alias is not None:
        message = f"'{path}' is a section here, not something to build (see docs/migrating.md)"
    elif path in NOT_SUPPORTED:
        message = f"'{path}' (NeMo AutoModel) has no equivalent here: {NOT_SUPPORTED[path]}"
    else:
        hint = did_you_mean(path, [p for p, a in TARGET_ALIASES.items() if a.ours])
        message = (
            f"'{path}' is a NeMo AutoModel target that is not in the alias table{hint}; "
            "docs/migrating.md lists the ones that map to automodel. Name an automodel (or "
            "torch/transformers) callable instead; no package named nemo_automodel is imported"
        )
    raise ConfigError(Problem(key, message, where))


def their_arguments(path: str) -> set[str]:
    """The argument names of their target `path` that ours spells otherwise (for overrides)."""
    alias = TARGET_ALIASES.get(path)
    if alias is None:
        return set()
    return {*alias.args, *alias.dropped, *alias.refused, *([alias.limit] if alias.limit else [])}


def translate(
    data: dict[str, Any], where: Mapping[str, str], file: str = "", world_size: int | None = None
) -> Translation:
    """Rewrite their config data into ours (see the module docstring)."""
    t = _Translator(data, dict(where), file, world_size)
    t.run()
    if t.problems:
        raise ConfigError(t.problems)
    return Translation(t.data, t.where, t.changed, t.notes, t.recipe)


class _Translator:
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

    def section(self, name: str) -> dict[str, Any]:
        node = self.data.get(name)
        if not isinstance(node, dict):
            node = self.data[name] = {}
        return node

    # -- the passes ----------------------------------------------------------------------------
    def run(self) -> None:
        self.top_level()
        self.targets(self.data, "")
        self.sections()
        self.renames()
        self.checkpoint_enabled()
        self.kd()
        self.benchmark()
        self.loaders()
        self.step_scheduler()
        self.typos()

    def top_level(self) -> None:
        data = self.data
        if "recipe" in data:
            value = data.pop("recipe")
            name = value.get(TARGET_KEY) if isinstance(value, dict) else value
            cls = str(name).rsplit(".", 1)[-1]
            if cls not in RECIPES:
                hint = did_you_mean(cls, RECIPES)
                self.fail(
                    "recipe",
                    f"the NeMo AutoModel recipe '{name}' has no equivalent here{hint}; "
                    f"known: {', '.join(RECIPES)}",
                )
            else:
                self.recipe = RECIPES[cls]
                self.notes.append(
                    f"{self.at('recipe')}: recipe: {cls} is `automodel {self.recipe.replace('.', ' ')}`"
                )
        if "ci" in data:
            data.pop("ci")
            self.notes.append(f"{self.at('ci')}: ci: their CI settings are ignored")
        if "seed" in data:  # their LLM recipe seeds from a top-level seed (default 42)
            seed = data.pop("seed")
            rng = self.section("rng")
            if rng.get("seed", seed) != seed:
                self.note("rng.seed", f"the top-level seed: {seed} wins, as in their recipe")
            rng["seed"] = seed
            self.move("seed", "rng.seed")
        restore = data.pop("restore_from", None)
        if restore is not None:
            path = restore.get("path") if isinstance(restore, dict) else restore
            if path is None:
                self.fail("restore_from", "restore_from needs path: <checkpoint dir>")
            else:
                self.section("checkpoint")["restore_from"] = path
                self.move(
                    "restore_from.path" if isinstance(restore, dict) else "restore_from",
                    "checkpoint.restore_from",
                )

    def targets(self, node: Any, path: str) -> None:
        """Rewrite every `nemo_automodel.*` target with its arguments, then those below it."""
        if isinstance(node, list):
            for i, item in enumerate(node):
                self.targets(item, f"{path}.{i}")
            return
        if not isinstance(node, dict):
            return
        self.target(node, path)  # first: it may drop an argument that names a target of theirs
        for key, value in list(node.items()):
            full = f"{path}.{key}" if path else key
            if key.endswith("_fn") and value in (_COLLATER, _THD_COLLATER):
                del node[key]  # our dataloader's own collate pads the same way
                self.changed[path] = f"{key}: {value.rsplit('.', 1)[-1]} is the default collate"
            elif key.endswith("_fn") and isinstance(value, str) and value.startswith(NEMO_PREFIX):
                try:
                    node[key] = alias_for(value, key=full, where=self.at(full))
                    self.changed[full] = f"was {value}"
                except ConfigError as e:
                    self.problems.extend(e.problems)
            elif key != TARGET_KEY:
                self.targets(value, full)

    def target(self, node: dict[str, Any], path: str) -> None:
        target = node.get(TARGET_KEY)
        if not (isinstance(target, str) and target.startswith(NEMO_PREFIX)):
            return
        tkey = f"{path}.{TARGET_KEY}" if path else TARGET_KEY
        alias = TARGET_ALIASES.get(target)
        if alias is None:
            try:
                alias_for(target, key=tkey, where=self.at(tkey))
            except ConfigError as e:
                self.problems.extend(e.problems)
            return
        short = target.rsplit(".", 2)[-2] if target.count(".") > 1 else target
        if alias.ours is None:
            del node[TARGET_KEY]
            self.changed[path] = f"was _target_: {target}"
        else:
            node[TARGET_KEY] = alias.ours
            self.changed[tkey] = f"was {target}"
        if alias.note:
            self.note(path, alias.note)
        for their, why in alias.dropped.items():
            if their in node:
                node.pop(their)
                self.note(path, f"{their} dropped ({why})")
        for their, (accepted, instead) in alias.refused.items():
            if their in node:
                if node[their] in accepted:
                    node.pop(their)
                else:
                    self.fail(
                        f"{path}.{their}",
                        f"{short} {their}={node[their]!r} is not supported: {instead}",
                    )
        for their, ours in alias.args.items():
            if their in node:
                node[ours] = node.pop(their)
                self.move(f"{path}.{their}", f"{path}.{ours}")
        limit = node.pop(alias.limit, None) if alias.limit else None
        if limit is not None:
            split = str(node.get("split", "train"))
            where = f"{path}.{alias.limit}"
            if "[" in split:
                self.fail(where, f"give either a split slice or {alias.limit}")
            node["split"] = f"{split}[:{int(limit)}]"
            self.move(where, f"{path}.split", f"{alias.limit}: {limit} is a split slice")
            self.where[f"{path}.split"] = self.at(where)  # the slice is what the user set there
        self.arg_typos(node, path, alias, target)
        if alias.hf_padding:
            self.hf_padding(node, path)
        for ours, value in alias.defaults.items():
            if ours not in node:
                node[ours] = value
                self.changed.setdefault(f"{path}.{ours}", "NeMo AutoModel's default, written out")
        for ours, value in alias.section.items():
            node.setdefault(ours, value)
            self.changed.setdefault(f"{path}.{ours}", f"from _target_: {target}")

    def arg_typos(self, node: dict[str, Any], path: str, alias: Alias, target: str) -> None:
        """An argument close to one of their names (and not one of ours): say which."""
        theirs = their_arguments(target)
        for key in list(node):
            if key == TARGET_KEY or key in theirs:
                continue
            hint = did_you_mean(key, sorted(theirs))
            # only then look at our signature (importing it): `automodel migrate` stays torch-free
            if hint and not (alias.ours and key in _parameters(alias.ours)):
                self.fail(
                    f"{path}.{key}", f"unknown argument '{key}' (NeMo AutoModel spelling){hint}"
                )

    def hf_padding(self, node: dict[str, Any], path: str) -> None:
        """Their tokenizer-style `padding` / `truncation` (`do_not_pad`, `do_not_truncate`, ...)."""
        if "padding" in node:
            node.pop("padding")
            self.note(path, "padding dropped (batches are padded; padding is masked out)")
        truncation = node.pop("truncation", "do_not_truncate")
        if truncation in (True, "longest_first", "only_first"):
            if node.get("seq_length") is None:
                self.fail(f"{path}.truncation", "truncation needs seq_length")
            node["truncation"] = "truncate"
            self.changed[f"{path}.truncation"] = f"was {truncation}"
        elif truncation in (False, None, "do_not_truncate"):
            if node.pop("seq_length", None) is not None:  # there it only pads to that length
                self.note(path, "seq_length dropped: without truncation it only pads there")
        else:
            self.fail(f"{path}.truncation", f"truncation {truncation!r} is not supported; use true")

    def sections(self) -> None:
        data = self.data
        dist_env = data.get("dist_env")
        if isinstance(dist_env, dict):
            for key in list(dist_env):
                if ("dist_env", key) not in KEY_RENAMES and ("dist_env", key) not in KEY_DROPS:
                    hint = did_you_mean(key, _THEIR_KEYS["dist_env"])
                    self.fail(f"dist_env.{key}", f"unknown dist_env key{hint}")
        dist = data.get("distributed")
        if isinstance(dist, dict):
            strategy = dist.get("strategy")
            if strategy in ("megatron_fsdp", "nvfsdp"):
                self.fail(
                    "distributed.strategy",
                    f"strategy {strategy} is not supported; use fsdp2 (or ddp)",
                )
            if "pipeline" in dist and dist.get("pp_size", 1) in (1, None):
                dist.pop("pipeline")
                self.note("distributed", "pipeline dropped (pp_size 1: no pipeline)")
            elif "pipeline" in dist:
                self.fail(
                    "distributed.pipeline",
                    "their distributed.pipeline subsection is not translated; use "
                    "distributed.pp_schedule (1f1b | gpipe) beside pp_size",
                )
            if "moe" in dist:
                dist.pop("moe")
                self.note(
                    "distributed",
                    "moe dropped (FSDP wrapping and resharding of MoE blocks: memory, not math; "
                    "MoE settings here are the moe: section)",
                )
            if "defer_fsdp_grad_sync" in dist:
                dist["defer_grad_sync"] = dist.pop("defer_fsdp_grad_sync")
                self.move("distributed.defer_fsdp_grad_sync", "distributed.defer_grad_sync")
            if dist.get("dp_size", "auto") in (None, "none", "None"):
                dist["dp_size"] = "auto"
                self.changed["distributed.dp_size"] = "was none (every process is data parallel)"
        compile_ = data.get("compile")
        if isinstance(compile_, dict) and compile_.get("backend") not in (None, "inductor"):
            self.fail(
                "compile.backend",
                f"compile backend {compile_['backend']!r} is not supported; torch.compile here uses inductor (drop the key)",
            )
        elif isinstance(compile_, dict) and "backend" in compile_:
            del compile_["backend"]
            self.note("compile", "backend dropped (inductor, the default)")
        ckpt = data.get("checkpoint")
        if isinstance(ckpt, dict):
            fmt = ckpt.pop("model_save_format", None)
            if fmt not in (None, "safetensors"):
                self.note(
                    "checkpoint",
                    f"model_save_format: {fmt} dropped (checkpoints here are always Hugging Face "
                    "safetensors; the format of the files does not change the run)",
                )
            elif fmt is not None:
                self.note(
                    "checkpoint", "model_save_format: safetensors is how models are saved here"
                )
        freeze = data.get("freeze")
        if isinstance(freeze, dict):
            if "freeze_embeddings" in freeze:
                freeze["embeddings"] = freeze.pop("freeze_embeddings")
                self.move("freeze.freeze_embeddings", "freeze.embeddings")
            for part in ("language_model", "vision_tower", "audio_tower"):
                key = f"freeze_{part}"
                if freeze.get(key):
                    self.fail(
                        f"freeze.{key}",
                        f"freeze.{key} is not supported by this recipe; name the parameters "
                        "with freeze.patterns (fnmatch over parameter names)",
                    )
                elif key in freeze:
                    freeze.pop(key)
                    self.note("freeze", f"{key}: false dropped (nothing to freeze)")
        lr = data.get("lr_scheduler")
        if isinstance(lr, dict) and "lr_warmup_steps" not in lr and "warmup_steps" not in lr:
            self.note(
                "lr_scheduler",
                "no lr_warmup_steps: NeMo AutoModel would warm up for min(1000, total_steps // "
                "10) steps; here there is no warmup unless lr_scheduler.warmup_steps is set",
            )
        lr_value = (
            data.get("optimizer", {}).get("lr") if isinstance(data.get("optimizer"), dict) else None
        )
        if isinstance(lr, dict) and "min_lr" not in lr and isinstance(lr_value, int | float):
            lr["min_lr"] = lr_value * 0.01  # their default: 1% of the optimizer's lr
            self.changed["lr_scheduler.min_lr"] = (
                "NeMo AutoModel's default (lr x 0.01), written out"
            )
        for key in ("init_lr", "max_lr", "lr_decay_steps", "start_wd", "end_wd", "wd_incr_steps"):
            if isinstance(lr, dict) and key in lr:
                self.fail(
                    f"lr_scheduler.{key}",
                    f"lr_scheduler.{key} is not supported: the LR goes from the optimizer's lr to min_lr over the run (warmup_steps, style, min_lr, decay_fraction)",
                )
        if isinstance(lr, dict) and "lr_decay_style" in lr:
            style = lr["lr_decay_style"]
            if style not in _LR_STYLES:
                self.fail(
                    "lr_scheduler.lr_decay_style",
                    f"lr_decay_style {style!r} is not supported; use one of {', '.join(_LR_STYLES)}",
                )
            else:
                lr["lr_decay_style"] = _LR_STYLES[style]
        packed = data.get("packed_sequence")
        if isinstance(packed, dict) and packed.get("split_across_pack"):
            self.fail(
                "packed_sequence.split_across_pack",
                "splitting a sample across packs is not supported; drop it",
            )
        elif isinstance(packed, dict) and "split_across_pack" in packed:
            del packed["split_across_pack"]

    def renames(self) -> None:
        for (sec, key), (new_sec, new_key) in KEY_RENAMES.items():
            node = self.data.get(sec)
            if not isinstance(node, dict) or key not in node:
                continue
            value = node.pop(key)
            target = self.section(new_sec)
            if new_key in target and target[new_key] != value:
                self.fail(
                    f"{sec}.{key}",
                    f"{sec}.{key} and {new_sec}.{new_key} say different things; keep one",
                )
                continue
            target[new_key] = value
            self.move(f"{sec}.{key}", f"{new_sec}.{new_key}")
        for (sec, key), why in KEY_DROPS.items():
            node = self.data.get(sec)
            if isinstance(node, dict) and key in node:
                node.pop(key)
                self.note(sec, f"{key} dropped ({why})")
        for sec in ("dist_env",):
            if sec in self.data and not self.data[sec]:
                del self.data[sec]
                self.changed.setdefault("distributed", "dist_env folded in")

    def kd(self) -> None:
        """Their KD recipe's top-level `kd_ratio` and `kd_loss_fn` are our `kd:` section."""
        data = self.data
        if "kd_ratio" not in data and "kd_loss_fn" not in data:
            return
        kd = self.section("kd")
        if "kd_ratio" in data:
            kd["kd_ratio"] = data.pop("kd_ratio")
            self.move("kd_ratio", "kd.kd_ratio")
        loss = data.pop("kd_loss_fn", None)
        if isinstance(loss, dict):
            if TARGET_KEY in loss:
                self.fail("kd_loss_fn._target_", "the KD loss here is the kd: section; use KDLoss")
            if "temperature" in loss:
                kd["temperature"] = loss.pop("temperature")
                self.move("kd_loss_fn.temperature", "kd.temperature")
        ce = data.get("loss_fn")
        if (
            isinstance(ce, dict)
            and ce.get(TARGET_KEY) == "automodel.core.losses.MaskedCrossEntropy"
        ):
            data.pop("loss_fn")
            self.note("loss_fn", "dropped: the cross-entropy part of kd.llm's loss is this loss")

    def benchmark(self) -> None:
        """Their benchmark recipe: synthetic data of `seq_len` tokens, no checkpoints, nsys."""
        data = self.data
        if self.recipe != "benchmark.llm" and (self.recipe or "benchmark" not in data):
            return
        bench = self.section("benchmark")
        dataset = data.pop("dataset", None)
        if isinstance(dataset, dict) and "seq_len" in dataset:
            bench.setdefault("seq_length", dataset["seq_len"])
            self.move("dataset.seq_len", "benchmark.seq_length")
        elif dataset is not None:
            self.fail("dataset", "benchmark.llm makes synthetic rows; give benchmark.seq_length")
        for name in (
            "dataloader",
            "validation_dataset",
            "validation_dataloader",
            "packed_sequence",
        ):
            if data.pop(name, None) is not None:
                self.note(name, "dropped (benchmark.llm makes its own synthetic batches)")
        if data.pop("checkpoint", None) is not None:
            self.note("checkpoint", "dropped (benchmark.llm writes no checkpoints)")
        steps = self.section("step_scheduler")
        for key in ("ckpt_every_steps", "val_every_steps"):
            if steps.pop(key, None) is not None:
                self.note(f"step_scheduler.{key}", "dropped (no checkpoints or validation)")
        start, end = bench.pop("nsys_start", -1), bench.pop("nsys_end", -1)
        bench.pop("nsys_ranks", None)
        if start not in (-1, None) or end not in (-1, None):
            self.fail(
                "benchmark.nsys_start",
                "nsys ranges are not supported; profile with benchmark.profile: "
                "{start_step: ..., end_step: ...} (the torch profiler)",
            )
        if bench.pop("num_nodes", None) is not None:
            self.note("benchmark", "num_nodes dropped (the launch says how many nodes)")

    def checkpoint_enabled(self) -> None:
        """`checkpoint.enabled: false`: no checkpoint during the run or at its end."""
        ckpt = self.data.get("checkpoint")
        if isinstance(ckpt, dict) and ckpt.pop("enabled", True) is False:
            ckpt["save_final"] = False
            self.section("step_scheduler")["ckpt_every_steps"] = None
            self.changed["checkpoint.save_final"] = "was enabled: false"
            self.changed["step_scheduler.ckpt_every_steps"] = "was checkpoint.enabled: false"

    def loaders(self) -> None:
        for name in ("dataloader", "validation_dataloader"):
            node = self.data.get(name)
            if not isinstance(node, dict):
                continue
            target = node.get(TARGET_KEY)
            if target is not None:
                if target != _LOADER:
                    self.fail(
                        f"{name}.{TARGET_KEY}",
                        f"{name} is built here from plain keys; '{target}' cannot be used (drop _target_)",
                    )
                    continue
                del node[TARGET_KEY]
                self.changed[name] = f"was _target_: {_LOADER}"
                # a StatefulDataLoader neither shuffles nor drops the last batch unless told
                for key, value in (("shuffle", False), ("drop_last", False)):
                    if key not in node:
                        node[key] = value
                        self.changed[f"{name}.{key}"] = "StatefulDataLoader's default, written out"
            collate = node.get("collate_fn")
            if isinstance(collate, dict) and not collate:  # default_collater, its target dropped
                del node["collate_fn"]
                self.changed[name] = (
                    self.changed.get(name, "") + "; default_collater is the default collate"
                )

    def step_scheduler(self) -> None:
        steps = self.data.get("step_scheduler")
        if not isinstance(steps, dict):
            return
        loader = (
            self.data.get("dataloader") if isinstance(self.data.get("dataloader"), dict) else {}
        )
        batch = loader.pop("batch_size", None) if loader else None
        if batch is not None:
            if steps.get("local_batch_size", batch) != batch:
                self.fail(
                    "dataloader.batch_size",
                    "dataloader.batch_size and step_scheduler.local_batch_size differ; keep local_batch_size",
                )
            steps.setdefault("local_batch_size", batch)
            self.move("dataloader.batch_size", "step_scheduler.local_batch_size")
        val = self.data.get("validation_dataloader")
        if isinstance(val, dict) and "batch_size" in val:
            val.pop("batch_size")
            self.note(
                "validation_dataloader", "batch_size dropped (validation uses local_batch_size)"
            )
        acc = steps.get("grad_acc_steps")
        if acc is not None and "global_batch_size" not in steps:
            local = steps.get("local_batch_size")
            if local is None:
                self.fail(
                    "step_scheduler.grad_acc_steps",
                    "grad_acc_steps needs local_batch_size (or dataloader.batch_size)",
                )
                return
            steps["global_batch_size"] = int(local) * int(acc) * self.dp_size()
            self.changed["step_scheduler.global_batch_size"] = (
                f"local_batch_size x grad_acc_steps x {self.dp_size()} data-parallel processes"
            )
            self.where.setdefault(
                "step_scheduler.global_batch_size", self.at("step_scheduler.grad_acc_steps")
            )

    def dp_size(self) -> int:
        dist = (
            self.data.get("distributed") if isinstance(self.data.get("distributed"), dict) else {}
        )
        dp = dist.get("dp_size")
        if isinstance(dp, int):
            return dp
        world = self.world if self.world is not None else int(os.environ.get("WORLD_SIZE", "1"))
        other = 1
        for key in ("tp_size", "cp_size", "pp_size"):
            value = dist.get(key, 1)
            other *= value if isinstance(value, int) and value > 0 else 1
        return max(1, world // other)

    def typos(self) -> None:
        """A key that is neither theirs nor ours but close to one of theirs: say which."""
        for sec, theirs in _THEIR_KEYS.items():
            node = self.data.get(sec)
            if not isinstance(node, dict):
                continue
            for key in node:
                if key in theirs or key in _OURS.get(sec, ()):
                    continue
                hint = did_you_mean(key, theirs)
                if hint:
                    full = f"{sec}.{key}"
                    self.fail(full, f"unknown key '{key}' (NeMo AutoModel spelling){hint}")


# Our own keys of the sections above (a typo check must not flag them).
_OURS: dict[str, tuple[str, ...]] = {
    "step_scheduler": (
        "global_batch_size", "local_batch_size", "grad_acc_steps", "max_steps", "num_epochs",
        "val_every_steps", "ckpt_every_steps", "log_every_steps",
    ),
    "checkpoint": (
        "checkpoint_dir", "max_shard_size", "save_final", "restore_from", "keep_last_n",
        "save_merged_model", "async_save", "preempt_signals",
    ),
    "lr_scheduler": ("warmup_steps", "style", "min_lr", "decay_fraction"),
}  # fmt: skip


def _parameters(target: str) -> set[str]:
    """The keyword names our target takes (its own module is imported, nothing of theirs)."""
    import importlib
    import inspect

    module, _, name = target.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:  # a classmethod path: module.Class.method
        module, _, owner = module.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), owner)
        except (ImportError, AttributeError):
            return set()
    try:
        return set(inspect.signature(getattr(obj, name)).parameters)
    except (AttributeError, TypeError, ValueError):
        return set()


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# -- automodel migrate --------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")


def migrated_yaml(translation: Translation, source: str) -> str:
    """Our spelling of a translated config, with `# was ...` on every line that changed."""
    import yaml

    out = [f"# Migrated from NeMo AutoModel config {source} by `automodel migrate`."]
    if translation.recipe:
        out.append(
            f"# Run it with: automodel {translation.recipe.replace('.', ' ')} -c <this file>"
        )
    for note in translation.notes:
        out.append(f"# note: {note}")

    def scalar(value: Any) -> str:
        return (
            yaml.safe_dump(value, default_flow_style=True, width=10**9)
            .strip()
            .removesuffix("...")
            .strip()
        )

    def emit(node: Any, path: str, indent: int, key: str, dash: bool = False) -> None:
        pad = " " * indent
        lead = pad[:-2] + "- " if dash else pad
        comment = translation.changed.get(path)
        tail = f"  # {comment}" if comment else ""
        if isinstance(node, dict) and node:
            out.append(f"{lead}{key}:{tail}")
            for k, v in node.items():
                emit(v, f"{path}.{k}", indent + 2, k)
        elif isinstance(node, list) and any(isinstance(v, dict | list) for v in node):
            out.append(f"{lead}{key}:{tail}")
            for i, item in enumerate(node):
                if not isinstance(item, dict) or not item:
                    raise ConfigError(f"{path}.{i}: cannot write this list item; migrate by hand")
                for j, (k, v) in enumerate(item.items()):
                    emit(v, f"{path}.{i}.{k}", indent + 4, k, dash=j == 0)
        else:
            out.append(f"{lead}{key}: {scalar(node)}{tail}")

    for k, v in translation.data.items():
        out.append("")
        emit(v, k, 0, k)
    return "\n".join(out) + "\n"


def migrate(path: str) -> str:
    """The YAML `automodel migrate` prints for a NeMo AutoModel config file."""
    from ._yaml import load_yaml_file

    data, lines = load_yaml_file(path)
    where = {key: f"{path}:{line}" for key, line in lines.items()}
    if not looks_like_nemo(data):
        raise ConfigError(
            f"{path} is not a NeMo AutoModel config (no recipe: key and no nemo_automodel "
            "target); it needs no migration"
        )
    return migrated_yaml(translate(data, where, path), path)
