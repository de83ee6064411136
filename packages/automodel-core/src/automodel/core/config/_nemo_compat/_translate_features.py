"""The translator's passes over their feature sections: `fp8:`, `qat:`, `quantization:`,
`wandb.enable` and `checkpoint.dequantize_base_checkpoint`."""

from __future__ import annotations

import re
from typing import Any

from ._aliases import TARGET_KEY
from ._translator_base import _TranslatorBase

# Their `quantization:` keys (bitsandbytes' BitsAndBytesConfig) that only say how the 4-bit
# weights are stored or computed with, not what they are.
_BNB_LAYOUT = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage", "bnb_4bit_use_double_quant")
_PEFT = "nemo_automodel.components._peft.lora.PeftConfig"
# Their `fp8:` keys (torchao float8 training) -> ours, and those that only say how fast or in
# what memory the same float8 numbers are computed.
_FP8_KEYS = {
    "recipe_name": "recipe",
    "filter_fqns": "skip_modules",
    "enable_fsdp_float8_all_gather": "fsdp_float8_all_gather",
    "emulate": "emulate",
}
_FP8_DROPS = {
    "precompute_float8_dynamic_scale_for_fsdp": "the same scales, computed once per step",
    "force_recompute_fp8_weight_in_bwd": "the same float8 weights, recomputed for memory",
}


class _FeaturePasses(_TranslatorBase):
    def features(self) -> None:
        self.fp8()
        self.qat()
        self.quantization()
        self.wandb_enable()
        self.dequantize()

    def lora_selection(self) -> None:
        """Which linear layers their `PeftConfig` adapts, in our keys (run before the targets).

        Theirs: `match_all_linear` adapts every linear layer, the LM head included (ours leaves
        output heads out, so `lm_head` is named too); `exclude_modules` alone means every linear
        layer but those, the head included, and a pattern may match nothing (ours refuses a
        dead pattern), so it becomes one `re:` target of every path their patterns do not
        match; with no selection at all, `target_modules: *_proj`.
        """
        peft = self.data.get("peft")
        if not isinstance(peft, dict) or peft.get(TARGET_KEY) != _PEFT:
            return
        self.triton_lora(peft)
        excluded = peft.get("exclude_modules")
        excluded = [excluded] if isinstance(excluded, str) else list(excluded or [])
        if any(peft.get(k) for k in ("target_modules", "include_modules", "target_parameters")):
            return
        if not (peft.get("match_all_linear") or excluded):
            peft["target_modules"] = ["*_proj"]
            self.changed["peft.target_modules"] = "NeMo AutoModel's default, written out"
            return
        if not _their_match(excluded, "lm_head") and not self.adapted_head():
            excluded.append("lm_head")  # their adapter on it never trains (adapted_head)
            peft["exclude_modules"] = excluded
        if excluded:
            peft.pop("exclude_modules")
            peft.pop("match_all_linear", None)
            alternatives = "|".join(_their_regex(p) for p in excluded)
            peft["target_modules"] = [f"re:(?!(?:{alternatives})$).*"]
            self.move("peft.exclude_modules", "peft.target_modules", f"was exclude_modules: {excluded} (every linear layer but those, the LM head included)")  # fmt: skip
        elif "lm_head" not in excluded:
            peft["target_modules"] = ["lm_head"]
            self.changed["peft.target_modules"] = (
                "their match_all_linear adapts the LM head too; ours leaves output heads out"
            )

    def triton_lora(self, peft: dict) -> None:
        """Their `use_triton` with dropout after the adapter input (their default): our Triton
        kernel drops out before it, so the plain path computes theirs."""
        dropout = peft.get("dropout", 0.0)
        after = peft.get("dropout_position", "post") == "post"
        if peft.get("use_triton") and after and isinstance(dropout, int | float) and dropout > 0:
            peft.pop("use_triton")
            self.note("peft", "use_triton dropped (a kernel choice; ours takes dropout before the adapter, theirs after it: the plain path computes theirs)")  # fmt: skip

    def adapted_head(self) -> bool:
        """Their LoRA adapts the LM head: whether ours adapts it too (False: their adapter on
        it never trains, so ours leaves the head out); refused where ours could not do the same.
        """
        loss = self.data.get("loss_fn")
        quant = self.data.get("quantization")
        if isinstance(quant, dict) and quant.get("load_in_4bit"):
            # their QLoRA adapts the head too, but bitsandbytes keeps its weight unquantized
            self.section("peft")["quantize_skip"] = ["lm_head"]
            self.changed["peft.quantize_skip"] = (
                "their 4-bit quantization (bitsandbytes) leaves the LM head's weight unquantized"
            )
        elif isinstance(loss, dict) and str(loss.get(TARGET_KEY)).endswith("FusedLinearCrossEntropy"):  # fmt: skip
            self.note(
                "peft",
                "the LM head is left out: their LoRA wraps it too, but their "
                "FusedLinearCrossEntropy reads the head's base weight, so that adapter stays "
                "zero and never trains (the same run)",
            )
            return False
        return True

    def dequantize(self) -> None:
        """`checkpoint.dequantize_base_checkpoint`: a quantized base checkpoint (FP8, MXFP4) is
        loaded dequantized, to train in the model's dtype; here that is `model.dequantize`."""
        ckpt, model = self.data.get("checkpoint"), self.data.get("model")
        if not isinstance(ckpt, dict) or "dequantize_base_checkpoint" not in ckpt:
            return
        value = ckpt.pop("dequantize_base_checkpoint")
        target = str(model.get(TARGET_KEY, "")) if isinstance(model, dict) else ""
        if not value:
            self.note("checkpoint", f"dequantize_base_checkpoint: {value} dropped (a quantized checkpoint loads as saved, as here by default)")  # fmt: skip
        elif not target.endswith(".from_pretrained"):
            self.note("checkpoint", "dequantize_base_checkpoint dropped (no checkpoint is loaded)")
        else:
            model["dequantize"] = True
            self.move("checkpoint.dequantize_base_checkpoint", "model.dequantize")

    def fp8(self) -> None:
        """`fp8:` their torchao float8 training is our `fp8:` section (the same conversion)."""
        fp8 = self.data.get("fp8")
        if fp8 is None:
            return
        if not (isinstance(fp8, dict) and fp8.get("enabled")):
            del self.data["fp8"]
            self.note("fp8", "dropped (enabled: false, nothing to do)")
            return
        unknown = sorted(set(fp8) - {"enabled", *_FP8_KEYS, *_FP8_DROPS})
        for key in unknown:
            self.fail(f"fp8.{key}", f"fp8.{key} is not supported; drop it")
        ours: dict[str, Any] = {"recipe": fp8.get("recipe_name") or "tensorwise"}
        for theirs, key in _FP8_KEYS.items():
            if key != "recipe" and fp8.get(theirs) is not None:
                ours[key] = fp8[theirs]
                self.move(f"fp8.{theirs}", f"fp8.{key}")
        if ours["recipe"] != "tensorwise" and ours.pop("fsdp_float8_all_gather", None):
            self.note("fp8", "enable_fsdp_float8_all_gather dropped (tensorwise only, as there)")
        for key, why in _FP8_DROPS.items():
            if key in fp8:
                self.note("fp8", f"{key} dropped ({why})")
        self.data["fp8"] = ours

    def qat(self) -> None:
        """`qat:` their torchao QAT is our `qat:` section: the keys of their QATConfig (the
        target pass renamed them), fake quantization after `fake_quant_after_n_steps` steps,
        i.e. from step N + 1 (ours count from 1)."""
        qat = self.data.get("qat")
        if qat is None:
            return
        if not (isinstance(qat, dict) and qat.get("enabled")):
            del self.data["qat"]
            self.note("qat", "dropped (enabled: false, nothing to do)")
            return
        known = ("enabled", "fake_quant_after_n_steps", "qat_config", "quantizer")
        for key in sorted(set(qat) - set(known)):
            self.fail(f"qat.{key}", f"qat.{key} is not supported; drop it")
        name = "qat_config" if "qat_config" in qat else "quantizer"  # theirs: qat_config first
        config = qat.get(name)
        if not isinstance(config, dict):
            del self.data["qat"]
            self.note("qat", "dropped (no qat_config: their recipe then applies no QAT)")
            return
        if TARGET_KEY in config:  # not their QATConfig (the target pass dropped its target)
            self.fail(f"qat.{name}._target_", "only their QATConfig translates (quantizer_type, groupsize); use it")  # fmt: skip
            return
        after = qat.get("fake_quant_after_n_steps", 0)
        after = 0 if after is None else after  # null: their fake quantization is never off
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            self.fail("qat.fake_quant_after_n_steps", f"expected an integer >= 0, got {after!r}")
            return
        ours: dict[str, Any] = {**config, "start_step": after + 1}
        self.move(f"qat.{name}", "qat")
        self.move("qat.fake_quant_after_n_steps", "qat.start_step", f"their {after} step(s) without fake quantization: ours from step {after + 1}")  # fmt: skip
        if self.recipe == "kd.llm":
            self.fail("qat", "their KD student fake-quantizes its LM head, which kd.llm's fused KD loss reads unquantized; add qat.skip_modules: [lm_head] to train the head unquantized")  # fmt: skip
        loss = self.data.get("loss_fn")
        if isinstance(loss, dict) and str(loss.get(TARGET_KEY)).endswith("FusedLinearCrossEntropy"):
            ours["skip_modules"] = ["lm_head"]
            self.note("qat", "the LM head is left out: their FusedLinearCrossEntropy reads the head's weight, so their fake quantization never reaches it (the same run)")  # fmt: skip
        self.data["qat"] = ours

    def quantization(self) -> None:
        """`quantization:` 4-bit NF4 base weights under LoRA (QLoRA) is `peft.quantize_base: nf4`."""
        quant = self.data.get("quantization")
        if not isinstance(quant, dict):
            return
        if quant.get("load_in_8bit"):
            self.fail(
                "quantization.load_in_8bit",
                "8-bit base weights are not supported; use load_in_4bit: true with "
                "bnb_4bit_quant_type: nf4 (QLoRA)",
            )
            return
        if not quant.get("load_in_4bit"):
            del self.data["quantization"]
            self.note("quantization", "dropped (neither load_in_4bit nor load_in_8bit is set)")
            return
        kind = quant.get("bnb_4bit_quant_type", "fp4")  # bitsandbytes' default
        if kind != "nf4":
            self.fail(
                "quantization.bnb_4bit_quant_type",
                f"4-bit {kind} weights are not supported; set bnb_4bit_quant_type: nf4",
            )
            return
        peft = self.data.get("peft")
        if not isinstance(peft, dict):
            self.fail(
                "quantization",
                "4-bit base weights are trained here only under LoRA adapters (QLoRA): add a "
                "peft: section, or remove quantization: to train the full model",
            )
            return
        unknown = sorted(
            set(quant) - {"load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", *_BNB_LAYOUT}
        )
        for key in unknown:
            self.fail(f"quantization.{key}", f"quantization.{key} is not supported; drop it")
        if unknown:
            return
        del self.data["quantization"]
        peft["quantize_base"] = "nf4"
        self.move("quantization", "peft.quantize_base")
        self.note(
            "peft.quantize_base",
            "quantization (bitsandbytes NF4) is NF4 through torchao here: the same 4-bit "
            "NormalFloat weights in blocks of 64, computed in the model's dtype; losses are "
            "close to bitsandbytes', not identical (needs automodel-peft[qlora])",
        )

    def wandb_enable(self) -> None:
        """`wandb.enable: false` turns their W&B logging off; here that is no `wandb:` section."""
        wandb: Any = self.data.get("wandb")
        if not isinstance(wandb, dict) or "enable" not in wandb:
            return
        if wandb.pop("enable"):
            self.changed["wandb"] = "enable: true dropped (a wandb: section logs to W&B)"
            return
        del self.data["wandb"]
        self.note("wandb", "dropped (enable: false: no W&B logging)")


def _their_regex(pattern: str) -> str:
    """Their module pattern as a regex: `*` is any characters, `.` any one character."""
    return "(?:" + re.sub(r"\*", "(?:.*)", str(pattern)) + ")"


def _their_match(patterns: list[Any], path: str) -> bool:
    """Whether one of their module patterns selects `path` (equal, or its regex matches)."""
    return any(p == path or re.fullmatch(_their_regex(p), path) for p in patterns)
