"""Pipeline micro-batches whose sequence length changes between steps.

Torch's ``PipelineStage`` learns the shapes of what it sends and receives on the schedule's
first step (metadata inference: a forward and backward of one micro-batch) and sizes every
later step's receive buffers by them, so a step of another length would exchange tensors of
the wrong size. ``PipelineSeqLen.set`` gives the stages their shapes at the new length before
such a step: the shapes inferred once, with the sequence dimension (dim 1 of every tensor
that crosses a ``DecoderStage`` boundary: token ids, hidden states, logits and their
gradients) set to the new length, as the stages' static metadata. The schedule then sets
itself up again without running the model; the cost (rebuilding the receive descriptors and
the schedule's one small vote over the pipeline group) is paid only when the length changes.

Where no shapes can be derived that way (no training step has run yet, or a stage passes
DTensors or tensors without that sequence dimension) the schedule infers them again at the
new length, as on its first step.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.distributed.pipelining.schedules import _PipelineSchedule
from torch.distributed.pipelining.stage import PipelineStage

try:  # private parts of torch.distributed.pipelining (torch 2.12 on): a stage's shape metadata
    from torch.distributed.pipelining._utils import _DTensorMeta, _StageMeta, _TensorMeta
except ImportError:  # older torch keeps them elsewhere
    _DTensorMeta = _StageMeta = _TensorMeta = None

_META_FIELDS = ("inputs", "outputs", "input_grads", "output_grads")
# the schedule's "stages are set up" flags: single-stage and multi-stage schedules
_INIT_FLAGS = (
    "_stage_forward_initialized",
    "_stage_backward_initialized",
    "_stages_forward_initialized",
    "_stages_backward_initialized",
)


class PipelineSeqLen:
    """Lets ``schedule`` (from ``build_pipeline_schedule``) run each step at its own length.

    Call ``set(seq_len)`` before every ``step`` / ``eval``; every rank of the pipeline must
    pass the same length (the P2P transfers between stages have that size).
    """

    def __init__(self, schedule: _PipelineSchedule) -> None:
        stages = getattr(schedule, "_stages", None) or [schedule._stage]
        if not all(isinstance(stage, PipelineStage) for stage in stages):
            raise TypeError("PipelineSeqLen needs a schedule over PipelineStage objects")
        if _StageMeta is None or not all(hasattr(stage, "_user_meta") for stage in stages):
            raise NotImplementedError(
                "pipeline steps of changing length need the stage metadata of torch >= 2.12 "
                f"(this is torch {torch.__version__}); pad every micro-batch to one length"
            )
        self.schedule, self.stages = schedule, list(stages)
        self.seq_len: int | None = None  # the length the stages are set up for
        # (length, each stage's metadata) from the first training setup, once taken
        self._reference: tuple[int, list[_StageMeta]] | None = None

    def set(self, seq_len: int) -> bool:
        """Set the stages up for micro-batches of ``seq_len`` tokens; True if that changed them."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {seq_len}")
        if self._reference is None and self.seq_len is not None and self._trained():
            self._reference = (self.seq_len, [_copy(stage._stage_meta) for stage in self.stages])
        if seq_len == self.seq_len:
            return False
        if self.seq_len is not None:  # set up (or about to be) for another length
            for stage, meta in zip(self.stages, self.metadata(seq_len), strict=True):
                stage._user_meta = meta  # complete: the schedule takes it without inference
            for flag in _INIT_FLAGS:
                if hasattr(self.schedule, flag):
                    setattr(self.schedule, flag, False)
        self.seq_len = seq_len
        return True

    def metadata(self, seq_len: int) -> list[_StageMeta]:
        """Each stage's metadata at ``seq_len`` (empty where it must be inferred again)."""
        if self._reference is not None:
            length, metas = self._reference
            resized = [_resize(meta, length, seq_len) for meta in metas]
            if None not in resized:
                return resized
        return [_StageMeta() for _ in self.stages]

    def _trained(self) -> bool:
        """Whether the schedule's stages are set up for training (forward and backward)."""
        flags = ("_stage_backward_initialized", "_stages_backward_initialized")
        return any(getattr(self.schedule, flag, False) for flag in flags)


def _copy(meta: _StageMeta) -> _StageMeta:
    return _StageMeta(**{field: getattr(meta, field) for field in _META_FIELDS})


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _resize(meta: _StageMeta, length: int, seq_len: int) -> _StageMeta | None:
    """``meta`` with dim 1 of every tensor ``length`` -> ``seq_len`` (None: not that layout)."""
    if meta.inputs is None or meta.outputs is None:
        return None
    fields = {}
    for field in _META_FIELDS:
        tensors = getattr(meta, field)
        if tensors is None:
            fields[field] = None
            continue
        out = []
        for tensor in tensors:
            if tensor is None:
                out.append(None)
                continue
            shape = tuple(tensor.shape)
            if (
                isinstance(tensor, _DTensorMeta)
                or not isinstance(tensor, _TensorMeta)
                or len(shape) < 2
                or shape[1] != length
                or tuple(tensor.stride) != _contiguous(shape)
            ):
                return None
            shape = (shape[0], seq_len, *shape[2:])
            out.append(
                dataclasses.replace(tensor, shape=torch.Size(shape), stride=_contiguous(shape))
            )
        fields[field] = tuple(out)
    return _StageMeta(**fields)


__all__ = ["PipelineSeqLen"]
