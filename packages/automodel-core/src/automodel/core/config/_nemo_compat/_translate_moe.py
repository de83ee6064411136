"""The translator's MoE pass: their MoE settings (the model's `backend:` and
`distributed.ep_size`, the balancing their model class implies) as our `moe:` section.

Their MoE models run through their own model classes: expert parallelism is
`distributed.ep_size`, the token dispatcher and the expert matmuls are keys of the model's
`backend:` (a BackendConfig), and the load balancing is not in the YAML at all but in each
family's class (`_moe_families`). Here a model's Hugging Face MoE blocks are swapped for
automodel.moe's only with a `moe:` section, so this pass writes one for a family automodel.moe
swaps (or any model with `ep_size` > 1), with `balancing: nemo_automodel`: the recipe then sets
the balancing their class would, from the loaded model's config. A family it does not swap is an
error where its implementation balances the experts (or where `ep_size` > 1 asks for expert
parallelism); otherwise the plain Hugging Face model trains as theirs does. Run before the
target pass, which drops what is left of `backend:` (attention, linear and norm kernels).
"""

from __future__ import annotations

from typing import Any

from ._aliases import NEMO_PREFIX, TARGET_KEY
from ._moe_families import SWAPPED, moe_family
from ._translate_features import _their_match, _their_regex
from ._translator_base import _TranslatorBase

_MOE_RECIPES = ("finetune.llm", "kd.llm", "benchmark.llm", "finetune.vlm")  # with a moe: section
NEMO_BALANCING = "nemo_automodel"  # moe.balancing: their family's balancing, read at model build
# their BackendConfig.experts -> our moe.backend (the same expert products)
_EXPERTS = {"torch": "loop", "torch_mm": "grouped_mm", "gmm": "auto", "te": "auto"}
# their BackendConfig.dispatcher -> our moe.dispatcher (how tokens reach their experts' ranks)
_DISPATCHERS = {
    "deepep": "deepep",
    "torch": "all_to_all",
    "hybridep": "all_to_all",
    "uccl_ep": "all_to_all",
    "mok": "all_to_all",
}
# where their MoE classes keep each layer's experts (a pattern may name some layers only)
_LAYER_EXPERTS = [f"model.layers.{i}.mlp.experts" for i in range(512)]
# the stacked weights their expert LoRA adapts: the input projection (gated or not) and down_proj
_EXPERT_WEIGHTS = r"\.(?:gate_up_proj|up_proj|down_proj)"
_BALANCED_BY = {
    "aux_loss": "adds an aux loss weighted by router_aux_loss_coef",
    "bias": "moves a routing bias after each step (auxiliary-loss-free balancing)",
}


class _MoePasses(_TranslatorBase):
    def moe(self) -> None:
        """`moe:` from their model's family, `backend:` and `distributed.ep_size`."""
        model = self.data.get("model")
        if not (isinstance(model, dict) and str(model.get(TARGET_KEY, "")).startswith(NEMO_PREFIX)):
            return
        backend = model.get("backend") if isinstance(model.get("backend"), dict) else {}
        self.backend_numerics(backend)
        dist = self.data.get("distributed")
        ep = dist.get("ep_size", 1) if isinstance(dist, dict) else 1
        ep = ep if isinstance(ep, int) else 1
        name_key, name = _model_name(model, "model")
        family = moe_family(name) if name else None
        loads = str(model.get(TARGET_KEY, "")).endswith(".from_pretrained")
        if family is not None and family.name == "gpt-oss" and loads and "dequantize" not in model:
            # its Hub checkpoints are MXFP4; their gpt-oss class dequantizes them while loading
            model["dequantize"] = True
            self.changed["model.dequantize"] = "their gpt-oss loading (MXFP4 experts dequantized)"
        if "moe" in self.data:  # our own moe: section, written out: it says what to do
            return
        if family is not None and not family.swapped:
            if family.balancing is not None:
                self.fail(
                    name_key,
                    f"{name!r}: NeMo AutoModel trains it with its own {family.name!r} model class, "
                    f"which {_BALANCED_BY[family.balancing]}; automodel.moe does not swap this "
                    f"family's MoE blocks (it swaps {SWAPPED}), so the run cannot be the same here",
                )
            elif ep > 1:
                self.fail(
                    "distributed.ep_size",
                    f"{name!r}: automodel.moe does not swap the MoE blocks of the {family.name!r} "
                    f"family (it swaps {SWAPPED}), so its experts cannot be expert-parallel; set "
                    "distributed.ep_size: 1 to shard its experts with FSDP2 like the other "
                    "weights (their implementation does no load balancing for this family, so "
                    "the training is the same)",
                )
            return
        if self.recipe not in (None, *_MOE_RECIPES):  # e.g. finetune.vlm: its own checks say
            if family is not None and family.balancing is not None:
                self.fail(
                    name_key,
                    f"{name!r}: NeMo AutoModel trains it with its own {family.name!r} model class, "
                    f"which {_BALANCED_BY[family.balancing]}; {self.recipe} has no moe: section "
                    "(it trains the Hugging Face model as it is), so the run cannot be the same here",
                )
            if backend.get("fake_balanced_gate"):
                self.fail("model.backend.fake_balanced_gate", f"fake_balanced_gate: {self.recipe} has no moe: section (balanced routing); set it false")  # fmt: skip
            return
        balanced = bool(backend.pop("fake_balanced_gate", False))
        if family is None and ep <= 1 and not balanced:
            return  # a dense model, or one their code runs as Hugging Face's (no balancing)
        section: dict[str, Any] = {"balancing": NEMO_BALANCING}
        if balanced:  # their FakeBalancedGate: the same expert for the same slot, weights 1/k
            section["routing"] = "balanced"
            self.move("model.backend.fake_balanced_gate", "moe.routing", "was model.backend.fake_balanced_gate: true")  # fmt: skip
        experts = backend.pop("experts", None)
        if experts is not None:
            section["backend"] = _EXPERTS[experts]
            self.move(
                "model.backend.experts", "moe.backend", f"was model.backend.experts: {experts}"
            )
        dispatcher = backend.pop("dispatcher", None)
        if dispatcher is not None and ep > 1:
            section["dispatcher"] = _DISPATCHERS.get(dispatcher, "all_to_all")
            self.move("model.backend.dispatcher", "moe.dispatcher", f"was model.backend.dispatcher: {dispatcher}")  # fmt: skip
        self.data["moe"] = section
        self.expert_lora()
        self.where.setdefault("moe", self.at("distributed.ep_size" if ep > 1 else name_key))
        self.changed["moe"] = f"their {family.name if family else 'MoE'} model class" + (
            f", distributed.ep_size: {ep}" if ep > 1 else ""
        )
        self.changed["moe.balancing"] = (
            "the balancing their model class uses for this family, read from the model's config"
        )
        if dispatcher not in (None, "deepep", "torch") and ep > 1:
            self.note("moe.dispatcher", f"{dispatcher} is all_to_all here (the same tokens reach the same experts)")  # fmt: skip
        if experts in ("gmm", "te"):
            self.note("moe.backend", f"{experts} grouped GEMMs are auto here (torch._grouped_mm where it runs)")  # fmt: skip

    def expert_lora(self) -> None:
        """Their LoRA adapts the MoE experts a `target_modules` pattern matches (a rank-`dim`
        A and B per expert on the input and down projections, no dropout): here the experts'
        stacked weights, `target_parameters` (with expert parallelism too); a pattern that
        selects nothing but experts leaves `target_modules`. Their `moe_rank_scaling` is
        `moe.lora_rank_scaling`, which the recipe resolves from the model's top-k."""
        peft = self.data.get("peft")
        if not (isinstance(peft, dict) and str(peft.get(TARGET_KEY, "")).startswith(NEMO_PREFIX)):
            return
        targets = peft.get("target_modules")
        targets = [targets] if isinstance(targets, str) else list(targets or [])
        hits = {p: _experts_of(p) for p in targets if isinstance(p, str)}
        hits = {p: path for p, path in hits.items() if path is not None}
        if not hits:
            return
        first, path = next(iter(hits.items()))
        if peft.get("use_dora"):
            why = f"{first!r} matches the MoE experts ({path}), which their LoRA adapts"
            self.fail("peft.use_dora", f"{why} and use_dora is not supported with them (DoRA on the experts is refused there too); set use_dora: false")  # fmt: skip
        if peft.pop("moe_rank_scaling", False):  # their experts' rank: dim // top-k, same alpha
            self.put("moe.lora_rank_scaling", True, "peft.moe_rank_scaling")
            self.changed["moe.lora_rank_scaling"] = (
                "was peft.moe_rank_scaling: the experts' LoRA takes rank dim // the model's "
                "experts per token, its alpha unchanged"
            )
        # a pattern that also selects a module below the experts' path selects linear layers too
        peft["target_modules"] = [
            p for p in targets if p not in hits or _their_match([p], hits[p] + ".x")
        ]
        peft["target_parameters"] = [f"re:{_their_regex(p)}{_EXPERT_WEIGHTS}" for p in hits]
        self.changed["peft.target_parameters"] = (
            f"was target_modules {list(hits)}: the experts' stacked weights (a LoRA A and B per "
            "expert)"
        )

    def backend_numerics(self, backend: dict[str, Any]) -> None:
        """`backend:` keys that change the numbers (not only the kernels): refused."""
        if backend.get("fake_balanced_gate") and backend.get("fake_gate_noise"):
            self.fail(
                "model.backend.fake_gate_noise",
                "fake_gate_noise (random routing around the balanced one) is not supported; "
                "drop it for equal load per expert (moe.routing: balanced)",
            )
        if backend.get("te_fp8") is not None:
            self.fail(
                "model.backend.te_fp8",
                "Transformer Engine FP8 (te_fp8) is not supported; drop it to train in the "
                "model's dtype (bfloat16)",
            )
        experts = backend.get("experts")
        if experts is not None and experts not in _EXPERTS:
            instead = "torch_mm (bfloat16 grouped matmuls)"
            self.fail(
                "model.backend.experts",
                f"experts backend {experts!r} is not supported here"
                + ("; MXFP8 expert matmuls round differently: use " if "mxfp8" in str(experts) else "; use ")
                + instead,
            )  # fmt: skip
            backend.pop("experts")


def _experts_of(pattern: str) -> str | None:
    """The first layer's experts path their module `pattern` selects, if any."""
    return next((p for p in _LAYER_EXPERTS if _their_match([pattern], p)), None)


def _model_name(node: Any, path: str) -> tuple[str, str | None]:
    """(where, value) of the first `pretrained_model_name_or_path` under their model node."""
    if isinstance(node, dict):
        value = node.get("pretrained_model_name_or_path")
        if isinstance(value, str):
            return f"{path}.pretrained_model_name_or_path", value
        for key, child in node.items():
            found = _model_name(child, f"{path}.{key}")
            if found[1] is not None:
                return found
    return path, None
