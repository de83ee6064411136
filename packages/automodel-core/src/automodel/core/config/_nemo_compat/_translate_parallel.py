"""The translator's passes over their parallelism settings: `distributed.pipeline:`,
`distributed.mp_policy` (torch's MixedPrecisionPolicy for FSDP2) and their KD teacher's own
`teacher_distributed:`."""

from __future__ import annotations

from typing import Any

from ._aliases import TARGET_KEY
from ._translator_base import _TranslatorBase, dtype_name

# Their pipeline schedule names (torch's, any case) -> ours.
_SCHEDULES = {
    "1f1b": "1f1b",
    "gpipe": "gpipe",
    "interleaved1f1b": "interleaved_1f1b",
    "interleaved_1f1b": "interleaved_1f1b",
    "loopedbfs": "looped_bfs",
    "looped_bfs": "looped_bfs",
}
# Their pipeline keys about how stages are built or patched, not what they compute.
_PIPELINE_DROPS = ("patch_inner_model", "patch_causal_lm_model", "pp_seq_len")
_MP_POLICY = "torch.distributed.fsdp.MixedPrecisionPolicy"
_MP_POLICY_FULL = "torch.distributed.fsdp._fully_shard._fsdp_api.MixedPrecisionPolicy"


# Their teacher_distributed: keys that are ours as they are, and those that say nothing here.
_TEACHER_KEYS = (
    "strategy",
    "dp_size",
    "dp_replicate_size",
    "tp_size",
    "cp_size",
    "pp_size",
    "ep_size",
    "sequence_parallel",
    "activation_checkpointing",
)
_TEACHER_DROPS = {
    "defer_fsdp_grad_sync": "the teacher has no gradients",
    "backend": "chosen from the device",
}


class _ParallelPasses(_TranslatorBase):
    def pipeline(self) -> None:
        """`distributed.pipeline:` (pp_size > 1): schedule, stage sizes, micro-batch rows.

        Run after the step scheduler pass: their `pp_microbatch_size` rows per micro-batch is our
        `local_batch_size`, the global batch staying what it was, so each optimizer step sees
        the same samples, normalised over the same label tokens.
        """
        dist = self.data.get("distributed")
        pipe = dist.get("pipeline") if isinstance(dist, dict) else None
        if not isinstance(pipe, dict):
            return
        del dist["pipeline"]
        schedule = pipe.pop("pp_schedule", "1f1b")
        if str(schedule).lower() not in _SCHEDULES:
            self.fail(
                "distributed.pipeline.pp_schedule",
                f"pipeline schedule {schedule!r} is not supported; use one of "
                f"{', '.join(sorted(set(_SCHEDULES.values())))}",
            )
        else:
            dist["pp_schedule"] = _SCHEDULES[str(schedule).lower()]
            self.move("distributed.pipeline.pp_schedule", "distributed.pp_schedule")
        for theirs, ours in (
            ("layers_per_stage", "pp_layers_per_stage"),
            ("round_virtual_stages_to_pp_multiple", "pp_stage_rounding"),
        ):
            if pipe.get(theirs) is not None:
                dist[ours] = pipe.pop(theirs)
                self.move(f"distributed.pipeline.{theirs}", f"distributed.{ours}")
        rows = pipe.pop("pp_microbatch_size", None)
        if rows is not None:
            steps = self.section("step_scheduler")
            steps["local_batch_size"] = rows
            if steps.pop("grad_acc_steps", None) is not None:  # now global / (rows x dp)
                self.changed["step_scheduler"] = "grad_acc_steps dropped: the micro-batches changed"
            self.move(
                "distributed.pipeline.pp_microbatch_size",
                "step_scheduler.local_batch_size",
                "was distributed.pipeline.pp_microbatch_size (the rows of a micro-batch; "
                "the global batch is unchanged)",
            )
        if pipe.pop("scale_grads_in_schedule", False):
            self.fail(
                "distributed.pipeline.scale_grads_in_schedule",
                "scaling gradients by the micro-batch count is not supported: the loss here is "
                "normalised by the step's label tokens; set it false",
            )
        for key in _PIPELINE_DROPS:
            if key in pipe:
                pipe.pop(key)
                self.note(
                    "distributed", f"pipeline.{key} dropped (how stages are built and padded)"
                )
        self.pipeline_dtype(pipe.pop("dtype", None))
        for key in pipe:
            self.fail(f"distributed.pipeline.{key}", f"pipeline.{key} is not supported; drop it")

    def pipeline_dtype(self, dtype: Any) -> None:
        """Their `pipeline.dtype` (the dtype of the activations stages send): dropped where it is
        the dtype the blocks compute in anyway, an error where it would change it."""
        if dtype is None:
            return
        dist, model = self.section("distributed"), self.data.get("model")
        computed = dist.get("mp_param_dtype")
        if computed is None and isinstance(model, dict):
            computed = model.get("torch_dtype")
        if computed is not None and dtype_name(dtype) == dtype_name(computed):
            self.note(
                "distributed",
                f"pipeline.dtype: {dtype} dropped (the blocks compute in {computed}, so their "
                "activations already are)",
            )
            return
        computed = computed or "the model config's own, unknown here"
        self.fail(
            "distributed.pipeline.dtype",
            f"pipeline.dtype {dtype} differs from the dtype the blocks compute in ({computed}): "
            "stages send their activations as computed; drop it, or set model.torch_dtype to it",
        )

    def mixed_precision(self) -> None:
        """`distributed.mp_policy` (torch's MixedPrecisionPolicy): FSDP2's parameter and
        gradient-reduction dtypes, `distributed.mp_param_dtype` / `mp_reduce_dtype` here."""
        dist = self.data.get("distributed")
        policy = dist.pop("mp_policy", None) if isinstance(dist, dict) else None
        if policy is None:
            return
        target = policy.pop(TARGET_KEY, _MP_POLICY) if isinstance(policy, dict) else None
        if target not in (_MP_POLICY, _MP_POLICY_FULL):
            self.fail(
                "distributed.mp_policy",
                f"expected {{_target_: {_MP_POLICY}, param_dtype: ..., reduce_dtype: ...}}; "
                f"got {policy!r}",
            )
            return
        param, reduce = policy.pop("param_dtype", None), policy.pop("reduce_dtype", None)
        for ours, value in (("mp_param_dtype", param), ("mp_reduce_dtype", reduce)):
            if value is not None:
                theirs = ours.replace("mp_", "mp_policy.", 1)
                self.put(f"distributed.{ours}", dtype_name(value), f"distributed.{theirs}")
        output = policy.pop("output_dtype", None)
        if output is not None and (param is None or dtype_name(output) != dtype_name(param)):
            self.fail(
                "distributed.mp_policy.output_dtype",
                f"output_dtype {output} differs from param_dtype {param}: FSDP2 here returns "
                "each block's outputs in the dtype it computes in; drop it or set it to "
                "param_dtype",
            )
        if not policy.pop("cast_forward_inputs", True):
            self.fail(
                "distributed.mp_policy.cast_forward_inputs",
                "cast_forward_inputs: false is not supported (inputs are cast to param_dtype); "
                "drop it",
            )
        for key in policy:
            self.fail(f"distributed.mp_policy.{key}", f"mp_policy.{key} is not supported; drop it")

    def teacher_distributed(self) -> None:
        """`separate_meshes: true`: their teacher on ranks of its own, laid out by
        `teacher_distributed:` (the same section here: its dp_size x tp_size x cp_size
        processes, the last ones; the student's `distributed:` the others)."""
        node = self.data.get("teacher_distributed")
        if not isinstance(node, dict):
            self.fail(
                "separate_meshes",
                "separate_meshes: true needs a teacher_distributed: section (the teacher's "
                "dp_size and tp_size)",
            )
            return
        if node.get("pp_size", 1) not in (1, None):
            self.fail(
                "teacher_distributed.pp_size",
                f"pp_size {node['pp_size']}: a teacher in pipeline stages is not supported yet; "
                "give it tp_size, cp_size or dp_size instead (a teacher's layout changes its "
                "speed and memory, not the losses)",
            )
        pipeline = node.pop("pipeline", None)
        if pipeline is not None and node.get("pp_size", 1) in (1, None):
            self.note("teacher_distributed", "pipeline: dropped (pp_size 1)")
        for key in [k for k in node if k in _TEACHER_DROPS]:
            node.pop(key)
            self.note("teacher_distributed", f"{key} dropped ({_TEACHER_DROPS[key]})")
        for key in [k for k in node if k not in _TEACHER_KEYS]:
            self.fail(f"teacher_distributed.{key}", f"{key} is not supported for the teacher; drop it")  # fmt: skip
        self.note(
            "teacher_distributed",
            "separate_meshes: true: the teacher on processes of its own (the last dp_size x "
            "tp_size x cp_size), the student on the others",
        )
