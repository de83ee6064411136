"""The translator's pass over their feature sections: `fp8:`, `quantization:` and `wandb.enable`."""

from __future__ import annotations

from typing import Any

from ._translator_base import _TranslatorBase

# Their `quantization:` keys (bitsandbytes' BitsAndBytesConfig) that only say how the 4-bit
# weights are stored or computed with, not what they are.
_BNB_LAYOUT = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage", "bnb_4bit_use_double_quant")


class _FeaturePasses(_TranslatorBase):
    def features(self) -> None:
        self.fp8()
        self.quantization()
        self.wandb_enable()

    def fp8(self) -> None:
        """`fp8:` trains linear layers in float8: refused when enabled, dropped when off."""
        fp8 = self.data.get("fp8")
        if fp8 is None:
            return
        if isinstance(fp8, dict) and fp8.get("enabled"):
            self.fail(
                "fp8",
                "FP8 training (their fp8: section, torchao float8 linears) is not supported "
                "here yet; remove the section to train in the model's dtype (bfloat16)",
            )
            return
        del self.data["fp8"]
        self.note("fp8", "dropped (enabled: false, nothing to do)")

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
