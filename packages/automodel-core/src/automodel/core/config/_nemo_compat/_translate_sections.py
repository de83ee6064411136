"""The translator's key passes: top-level keys and sections (step_scheduler, checkpoint, ...)."""

from __future__ import annotations

import os

from .._errors import did_you_mean
from ._aliases import RECIPES, TARGET_KEY
from ._keys import _LR_STYLES, _OURS, _THEIR_KEYS, KEY_DROPS, KEY_RENAMES, SECTION_DROPS
from ._translator_base import _TranslatorBase


class _SectionPasses(_TranslatorBase):
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
        for key in ("validation_dataset", "validation_dataloader"):
            if key in data and str(data[key]).lower() == "none":  # their way to turn it off
                del data[key]
                self.note(key, "none: dropped (no validation), as there")
        for name in [k for k in data if isinstance(k, str) and k.startswith("_")]:
            data.pop(name)  # their recipe reads no such section: one switched off, or anchors
            self.notes.append(f"{self.at(name)}: {name}: dropped (their recipe never reads it)")
        for name, why in SECTION_DROPS.items():
            if name in data:
                data.pop(name)
                self.notes.append(f"{self.at(name)}: {name}: dropped ({why})")
        if "tool_call_eval" in data:  # their generation-based tool-call accuracy check
            data.pop("tool_call_eval")
            self.notes.append(
                f"{self.at('tool_call_eval')}: tool_call_eval: their tool-call accuracy "
                "evaluation is not run here (training is unchanged; validation reports the loss)"
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

    def sections(self) -> None:
        data = self.data
        self.merge_section("distributed_config", "distributed")  # their FSDP2Config object
        self.merge_section("autopipeline", "distributed.pipeline")  # their PipelineConfig
        self.merge_section(
            "parallelizer",
            "distributed",
            "their MoE parallelizer lays out their MoE model classes with FSDP2 and expert "
            "parallelism; distributed: with moe: does here",
        )
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
            for key in ("tp_size", "cp_size", "pp_size", "ep_size", "dp_replicate_size"):
                if key in dist and dist[key] in (None, "none", "None"):  # 1 there
                    self.changed[f"distributed.{key}"] = f"was {dist[key]} (1 there)"
                    dist[key] = 1
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
        if "freeze_config" in data and "freeze" not in data:  # their VLM recipe's spelling
            data["freeze"] = data.pop("freeze_config")
            self.move("freeze_config", "freeze")
        freeze = data.get("freeze")
        if isinstance(freeze, dict):
            for part in ("embeddings", "language_model", "vision_tower"):
                if f"freeze_{part}" in freeze:
                    freeze[part] = freeze.pop(f"freeze_{part}")
                    self.move(f"freeze.freeze_{part}", f"freeze.{part}")
            if "freeze_audio_tower" in freeze:  # their VLM default is true, for any model
                freeze.pop("freeze_audio_tower")
                self.note(
                    "freeze",
                    "freeze_audio_tower dropped: they freeze an audio tower where the model has "
                    "one; finetune.vlm has no such key (freeze.patterns names its parameters)",
                )
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
        strategy = packed.pop("packing_strategy", None) if isinstance(packed, dict) else None
        if strategy not in (None, "thd"):
            self.fail(
                "packed_sequence.packing_strategy",
                f"packing strategy {strategy!r} is not supported; packs here keep each sample's "
                "own positions and attention (thd): drop the key",
            )
        elif strategy is not None:
            self.note("packed_sequence", "packing_strategy: thd dropped (how packs work here)")
        if isinstance(packed, dict) and "num_proc" in packed:
            del packed["num_proc"]  # their packing's worker processes: the same packs
            self.note("packed_sequence", "num_proc dropped (worker processes; the same packs)")

    def merge_section(self, theirs: str, ours: str, why: str = "") -> None:
        """Their section object `theirs` (its target already dropped): its keys into `ours`;
        a key both give with different values is an error."""
        node = self.data.get(theirs)
        if not isinstance(node, dict):
            return
        del self.data[theirs]
        for key, value in node.items():
            self.put(f"{ours}.{key}", value, f"{theirs}.{key}")
        self.note(ours, f"{theirs}: merged into {ours}" + (f"; {why}" if why else ""))

    def renames(self) -> None:
        for (sec, key), (new_sec, new_key) in KEY_RENAMES.items():
            node = self.data.get(sec)
            if not isinstance(node, dict) or key not in node:
                continue
            value = node.pop(key)
            self.put(f"{new_sec}.{new_key}", value, f"{sec}.{key}")
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
        separate = data.pop("separate_meshes", None)
        if separate:
            self.teacher_distributed()
        elif separate is not None or "teacher_distributed" in data:
            data.pop("teacher_distributed", None)
            self.note(
                "distributed", "separate_meshes: false: the teacher uses the student's layout"
            )
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

    def checkpoint_enabled(self) -> None:
        """`checkpoint.enabled: false`: no checkpoint during the run or at its end."""
        ckpt = self.data.get("checkpoint")
        if isinstance(ckpt, dict) and ckpt.pop("enabled", True) is False:
            ckpt["save_final"] = False
            self.section("step_scheduler")["ckpt_every_steps"] = None
            self.changed["checkpoint.save_final"] = "was enabled: false"
            self.changed["step_scheduler.ckpt_every_steps"] = "was checkpoint.enabled: false"

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
