"""The translator's optimizer pass: the optimizers their configs name that are not torch's.

Transformer Engine's `FusedAdam` is Adam (AdamW with `adam_w_mode`, its default) in one fused
kernel; with `master_weights: true` it keeps float32 copies of 16-bit parameters and updates
those. Here that is `torch.optim.AdamW` (or `Adam`) over float32 parameters that FSDP2 computes
with in the 16-bit dtype (`distributed.mp_param_dtype`): the same updates of float32 weights,
the same 16-bit forward. Optimizers whose updates differ (FlashOptim's compressed master
weights, Dion's Muon) are errors naming what to use instead.
"""

from __future__ import annotations

from typing import Any

from ._aliases import TARGET_KEY
from ._translator_base import _TranslatorBase, dtype_name

_FUSED_ADAM = (
    "transformer_engine.pytorch.optimizers.fused_adam.FusedAdam",
    "transformer_engine.pytorch.optimizers.FusedAdam",
)
# FusedAdam arguments that only say how the same update is computed or stored
_FUSED_ADAM_DROPS = {
    "capturable": "CUDA-graph capture of the same update",
    "set_grad_none": "how gradients are cleared",
    "store_param_remainders": "the float32 master weights stored as their 16 low bits (lossless)",
    "master_weight_dtype": "float32 master weights, as the parameters here are",
    "exp_avg_dtype": "float32 moments, as the parameters here are",
    "exp_avg_sq_dtype": "float32 moments, as the parameters here are",
}
_FLOAT32 = (None, "float32", "fp32", "torch.float32")
_HALF = ("bfloat16", "bf16", "torch.bfloat16", "float16", "fp16", "half", "torch.float16")
_REFUSED = {
    "flashoptim.FlashAdamW": "FlashOptim's AdamW keeps compressed master weights and states, "
    "so its updates round differently; use torch.optim.AdamW",
    "dion.Muon": "Dion's Muon (with its scalar AdamW groups and lr adjustment) is not "
    "available; use torch.optim.AdamW",
}


class _OptimizerPasses(_TranslatorBase):
    def optimizer(self) -> None:
        """`optimizer:` naming Transformer Engine's FusedAdam, or another non-torch optimizer."""
        opt = self.data.get("optimizer")
        target = opt.get(TARGET_KEY) if isinstance(opt, dict) else None
        if target in _REFUSED:
            self.fail("optimizer._target_", f"{target} is not supported: {_REFUSED[target]}")
        if target not in _FUSED_ADAM:
            return
        assert isinstance(opt, dict)
        adamw = opt.pop("adam_w_mode", True)
        opt[TARGET_KEY] = "torch.optim.AdamW" if adamw else "torch.optim.Adam"
        self.changed["optimizer._target_"] = f"was {target} (adam_w_mode: {adamw})"
        if opt.pop("bias_correction", True) is not True:
            self.fail("optimizer.bias_correction", "bias_correction: false is not supported (torch's Adam corrects the moments' bias)")  # fmt: skip
        if opt.pop("use_decoupled_grad", False):
            self.fail("optimizer.use_decoupled_grad", "use_decoupled_grad is not supported; drop it")  # fmt: skip
        for key in ("master_weight_dtype", "exp_avg_dtype", "exp_avg_sq_dtype"):
            if opt.get(key) not in _FLOAT32:
                self.fail(
                    f"optimizer.{key}",
                    f"{key}: {opt[key]} is not supported: the optimizer state here is float32 "
                    "(drop it to keep float32 moments and master weights)",
                )
        for key, why in _FUSED_ADAM_DROPS.items():
            if key in opt:
                opt.pop(key)
                self.note("optimizer", f"{key} dropped ({why})")
        if opt.pop("master_weights", False):
            self.master_weights()

    def master_weights(self) -> None:
        """Float32 master weights of a 16-bit model: float32 parameters, 16-bit FSDP2 compute."""
        model: Any = self.data.get("model")
        dtype = model.get("torch_dtype") if isinstance(model, dict) else None
        if str(dtype) not in _HALF:
            self.note("optimizer", "master_weights dropped (the parameters are not 16-bit)")
            return
        dist = self.section("distributed")
        if dist.get("strategy", "fsdp2") != "fsdp2":
            self.fail(
                "optimizer.master_weights",
                "master_weights: float32 parameters computed in 16 bits come from FSDP2's mixed "
                f"precision here; set distributed.strategy: fsdp2 (not {dist['strategy']})",
            )
            return
        dist.setdefault("strategy", "fsdp2")
        dist["mp_param_dtype"] = dtype_name(dtype)
        model["torch_dtype"] = "float32"
        self.move("optimizer.master_weights", "distributed.mp_param_dtype", f"was model.torch_dtype: {dtype} with optimizer.master_weights: true")  # fmt: skip
        self.changed["model.torch_dtype"] = "float32 master weights (optimizer.master_weights)"
