"""A frozen teacher on processes of its own (kd.llm's `teacher_distributed:`).

The processes split in two: the student's first (laid out by `distributed:`), the teacher's
last (by `teacher_distributed:`, whose dp_size says how many). A teacher replica (its cp × tp
processes: tensor parallel, and with context parallelism each on a part of every row, the
hidden states gathered back into whole rows) serves the student's dp ranks d with
d % teacher dp = its dp rank, one after the other. Each optimizer step, a student process
sends all of its micro-batches at once; the teacher answers each, in order, with its final
hidden states, working on micro-batch i + 1 while the student works on i. The first answer
also carries the teacher's LM head (float32, frozen: sent once). The student's loss is then
the one it computes beside a teacher on its own processes.

Messages are point-to-point in the default group, each pair's in one order (what NCCL needs):
the student sends a step's micro-batches, then receives their answers; the teacher receives
every micro-batch of the step, then answers.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from automodel.core.config import ConfigNode
from automodel.core.logging import setup_logging
from automodel.distributed import submesh, tp_plan_for

from ._errors import config_problem
from ._parallel import Parallel, read_distributed, setup_parallel
from ._preemption import PreemptionWatcher
from ._sections import Distributed, Logging, read_section

TEACHER_SECTION = "teacher_distributed"
# What of a micro-batch the teacher reads: [rows, length] integer tensors (labels stay behind)
TEACHER_KEYS = ("input_ids", "attention_mask", "position_ids")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_STOP, _STEP = 0, 1  # a step header: (command, micro-batches)

# (batch) -> (hidden states, head weight, head bias); the head only when asked for
TeacherForward = Callable[..., tuple[Any, ...]]


@dataclass(frozen=True)
class RankSplit:
    """The student's processes (the first ones) and the teacher's (the last), and how the
    teacher's replicas (`teacher_tp` consecutive processes each) share the student's out."""

    student: range
    teacher: range
    teacher_tp: int = 1
    teacher_cp: int = 1

    @property
    def replica_size(self) -> int:
        """The processes of one teacher replica (cp × tp, consecutive)."""
        return self.teacher_tp * self.teacher_cp

    @property
    def teacher_dp(self) -> int:
        """The number of teacher replicas."""
        return len(self.teacher) // self.replica_size

    def teacher_of(self, student_rank: int) -> int:
        """The teacher process (cp and tp rank 0 of its replica) that serves `student_rank`."""
        replica = (student_rank - self.student.start) % self.teacher_dp
        return self.teacher.start + replica * self.replica_size

    def students_of(self, teacher_rank: int) -> range:
        """The student processes that `teacher_rank`'s replica serves, in the order it does."""
        replica = (teacher_rank - self.teacher.start) // self.replica_size
        return self.student[replica :: self.teacher_dp]


def read_rank_split(cfg: ConfigNode, world_size: int | None = None) -> RankSplit | None:
    """The student's and the teacher's processes, checked (no process group needed); None
    without a `teacher_distributed:` section (the teacher then runs beside the student).

    `world_size`: the processes launched (default: torchrun's WORLD_SIZE, 1 without it).
    """
    if TEACHER_SECTION not in cfg:
        return None
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    teacher = read_section(cfg, TEACHER_SECTION, Distributed)
    student = read_section(cfg, "distributed", Distributed)
    _refuse_layouts(cfg, teacher, student)
    dp = teacher.dp_size
    if not isinstance(dp, int) or isinstance(dp, bool) or dp < 1:
        message = (
            f"set dp_size to a number of processes (got {dp!r}): the teacher takes dp_size x "
            "tp_size x cp_size processes, the last ones, and the student the others"
        )
        raise config_problem(cfg, f"{TEACHER_SECTION}.dp_size", message)
    size, student_size = _processes(teacher), _processes(student)
    if world - size < max(student_size, 1) or (student_size and size + student_size != world):
        student_part = f"distributed: {student_size}" if student_size else "the student: 1+"
        message = (
            f"the teacher's dp_size x tp_size x cp_size = {size} processes and {student_part} need "
            f"{size + max(student_size, 1)}, but {world} were launched (--nproc-per-node)"
        )
        raise config_problem(cfg, f"{TEACHER_SECTION}.dp_size", message)
    teacher_ranks = range(world - size, world)
    split = RankSplit(range(world - size), teacher_ranks, teacher.tp_size, teacher.cp_size)
    _, student_dp = read_distributed(cfg, len(split.student))
    read_distributed(cfg, size, TEACHER_SECTION)
    if student_dp % split.teacher_dp:
        message = (
            f"dp_size {split.teacher_dp} does not divide the student's dp size {student_dp}: "
            "each teacher replica serves the same number of the student's processes"
        )
        raise config_problem(cfg, f"{TEACHER_SECTION}.dp_size", message)
    return split


def _refuse_layouts(cfg: ConfigNode, teacher: Distributed, student: Distributed) -> None:
    """The layouts a teacher on processes of its own does not support yet, by key."""
    if teacher.pp_size != 1:
        message = (
            "a teacher in pipeline stages is not supported yet: give it tp_size, cp_size or "
            "dp_size (a teacher's layout changes its speed and memory, not the losses)"
        )
        raise config_problem(cfg, f"{TEACHER_SECTION}.pp_size", message)
    if teacher.sequence_parallel:
        message = "sequence parallelism is not supported for the teacher: set it false"
        raise config_problem(cfg, f"{TEACHER_SECTION}.sequence_parallel", message)
    for name, layout in (("distributed", student), (TEACHER_SECTION, teacher)):
        for key in ("dp_replicate_size", "ep_size"):  # on meshes over some of the processes
            if getattr(layout, key) != 1:
                message = f"{key} > 1 is not supported yet with a teacher on processes of its own"
                raise config_problem(cfg, f"{name}.{key}", message)


def _processes(section: Distributed) -> int:
    """The processes an explicit layout spans; 0 for dp_size "auto" (the ones left)."""
    if not isinstance(section.dp_size, int):
        return 0
    return section.dp_size * section.tp_size * section.cp_size * section.pp_size


def setup_processes(cfg: ConfigNode, split: RankSplit) -> tuple[Parallel | None, Parallel | None]:
    """Logging, then both models' processes, meshes and strategies; every process builds both
    (creating process groups is a collective). (The student's, the teacher's): None for the
    model this process has no part in."""
    setup_logging(read_section(cfg, "logging", Logging).level)
    student = setup_parallel(cfg, ranks=split.student)
    return student, setup_parallel(cfg, name=TEACHER_SECTION, ranks=split.teacher)


def teacher_tp_plan(teacher: nn.Module, parallel: Parallel) -> dict[str, Any] | None:
    """The tensor-parallel plan of `teacher` (a TeacherOutputs) without its input embedding
    and LM head: both stay whole on every tp rank (the head is read, not called: the KD loss
    applies it; and it is often tied to the embedding). None without tensor parallelism."""
    if parallel.mesh is None or submesh(parallel.mesh, "tp").size() == 1:
        return None
    causal_lm = teacher.causal_lm
    ends = (causal_lm.get_input_embeddings(), causal_lm.get_output_embeddings())
    whole = {name for name, module in teacher.named_modules() if any(module is e for e in ends)}
    return {key: style for key, style in tp_plan_for(teacher).items() if key not in whole}


def _pack(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """A micro-batch (labels left out) as (header [keys bitmask, rows, length], ids [keys,
    rows, length] int64) on `device`."""
    unknown = sorted(set(batch) - {"labels", *TEACHER_KEYS})
    if unknown:
        raise ValueError(
            f"a teacher on processes of its own reads {', '.join(TEACHER_KEYS)} from a batch; "
            f"this one also has {', '.join(unknown)}"
        )
    keys = [k for k in TEACHER_KEYS if k in batch]
    ids = torch.stack([batch[k].to(device, torch.int64) for k in keys])
    mask = sum(1 << TEACHER_KEYS.index(k) for k in keys)
    header = torch.tensor([mask, *ids.shape[1:]], dtype=torch.int64, device=device)
    return header, ids


class RemoteTeacher:
    """A student process's side: its micro-batches to its teacher replica, outputs back."""

    def __init__(self, split: RankSplit, device: torch.device):
        self.peer = split.teacher_of(dist.get_rank())
        self.device = device
        self.head: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the first answer's
        self.hidden: tuple[int, torch.dtype] | None = None  # the teacher's hidden size, dtype
        self.sending: list[tuple[Any, torch.Tensor]] = []  # sends in flight, with their buffers
        self.shapes: deque[tuple[int, int]] = deque()  # (rows, length) of requests not answered

    def _send(self, tensor: torch.Tensor) -> None:
        self.sending.append((dist.isend(tensor, self.peer), tensor))

    def _recv(self, *shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(tensor, self.peer)
        return tensor

    def _sent(self) -> None:
        for work, _ in self.sending:
            work.wait()
        self.sending.clear()

    def request(self, batches: list[dict[str, torch.Tensor]]) -> None:
        """Send a step's micro-batches: the teacher starts on them at once."""
        self._sent()
        self._send(torch.tensor([_STEP, len(batches)], dtype=torch.int64, device=self.device))
        for batch in batches:
            header, ids = _pack(batch, self.device)
            self._send(header)
            self._send(ids)
            self.shapes.append(tuple(ids.shape[1:]))

    def receive(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The teacher's (hidden states, float32 head weight, head bias) for the next request."""
        rows, length = self.shapes.popleft()
        if self.head is None:
            hidden_size, vocab, dtype, has_bias = self._recv(4).tolist()
            weight = self._recv(vocab, hidden_size, dtype=torch.float32)
            bias = self._recv(vocab, dtype=torch.float32) if has_bias else None
            self.head, self.hidden = (weight, bias), (hidden_size, _DTYPES[dtype])
        hidden_size, dtype = self.hidden
        return self._recv(rows, length, hidden_size, dtype=dtype), *self.head

    def stop(self) -> None:
        """Tell the teacher the training is over (its processes return from `serve_teacher`)."""
        self._sent()
        self._send(torch.tensor([_STOP, 0], dtype=torch.int64, device=self.device))
        self._sent()


def _whole(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A tensor-parallel DTensor gathered (every tp rank calls it); others as they are."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class _Inbox:
    """A teacher process's receiving side: its replica's tp rank 0 receives from the student
    processes and passes each message on to the replica's other processes."""

    def __init__(self, split: RankSplit, parallel: Parallel):
        rank = dist.get_rank()
        self.students = split.students_of(rank)
        self.leader = split.teacher_of(self.students[0])
        self.is_leader = rank == self.leader
        self.tp = submesh(parallel.mesh, "tp").get_group() if split.teacher_tp > 1 else None
        self.cp = submesh(parallel.mesh, "cp").get_group() if split.teacher_cp > 1 else None
        self.splitter = parallel.cp  # context parallel: each process runs a part of each row
        self.device = parallel.device

    def part(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This process's part of each row of `batch` (itself without context parallelism)."""
        return batch if self.splitter is None else self.splitter.shard_batch(batch)

    def whole_rows(self, hidden: torch.Tensor, seq_len: int) -> torch.Tensor:
        """The hidden states of whole rows from every cp process's part (collective)."""
        return hidden if self.splitter is None else self.splitter.gather_sequence(hidden, seq_len)

    def recv(self, student: int, *shape: int) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=torch.int64, device=self.device)
        if self.is_leader:
            dist.recv(tensor, student)
        # the leader's tp group first (cp rank 0 of the replica), then each cp group from it
        first_row = self.cp is None or dist.get_rank(self.cp) == 0
        for group in (self.tp if first_row else None, self.cp):
            if group is not None:
                dist.broadcast(tensor, src=dist.get_global_rank(group, 0), group=group)
        return tensor

    def step(self, student: int) -> list[dict[str, torch.Tensor]] | None:
        """`student`'s micro-batches of the step; None when it stopped."""
        command, count = self.recv(student, 2).tolist()
        if command == _STOP:
            return None
        batches = []
        for _ in range(count):
            mask, rows, length = self.recv(student, 3).tolist()
            keys = [k for i, k in enumerate(TEACHER_KEYS) if mask >> i & 1]
            ids = self.recv(student, len(keys), rows, length)
            batches.append(dict(zip(keys, ids, strict=True)))
        return batches


def serve_teacher(
    forward: TeacherForward, split: RankSplit, parallel: Parallel, signals: tuple[str, ...] = ()
) -> None:
    """On the teacher's processes: answer the student processes' micro-batches with
    `forward(batch, with_head)` until they stop; the head goes with each one's first answer.

    Preemption `signals` are caught and let pass: the student's processes save, then stop it.
    """
    watcher = PreemptionWatcher(signals)
    watcher.install()
    try:
        _serve(forward, _Inbox(split, parallel))
    finally:
        watcher.uninstall()


def _serve(forward: TeacherForward, inbox: _Inbox) -> None:
    head: tuple[torch.Tensor, torch.Tensor | None] | None = None
    headless = set(inbox.students)  # students not sent the head yet
    sending: list[tuple[Any, torch.Tensor]] = []
    while True:
        steps = [inbox.step(student) for student in inbox.students]
        if any(batches is None for batches in steps):
            if not all(batches is None for batches in steps):
                raise RuntimeError("some of a teacher's student processes stopped, not all")
            break
        if len({len(batches) for batches in steps}) > 1:
            raise RuntimeError("a teacher's student processes sent different micro-batch counts")
        for work, _ in sending:  # the previous step's answers, all received by now
            work.wait()
        sending.clear()
        for i in range(len(steps[0])):
            for student, batches in zip(inbox.students, steps, strict=True):
                batch = batches[i]
                hidden, weight, bias = forward(inbox.part(batch), with_head=head is None)
                if head is None:  # frozen: the first forward's is every forward's
                    head = _whole(weight).contiguous(), _whole(bias)
                length = batch["input_ids"].shape[1]
                hidden = inbox.whole_rows(_whole(hidden), length).contiguous()
                if inbox.is_leader:
                    first = student in headless
                    headless.discard(student)
                    answer = _answer(hidden, head if first else None)
                    sending += [(dist.isend(t, student), t) for t in answer]
    for work, _ in sending:
        work.wait()


def _answer(
    hidden: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor | None] | None
) -> list[torch.Tensor]:
    """The messages of an answer: its hidden states, after (on a student's first answer) the
    teacher's hidden size, vocabulary, dtype and bias flag, and the head's weight and bias."""
    if head is None:
        return [hidden]
    weight, bias = head
    meta = [hidden.shape[-1], weight.shape[0], _DTYPES.index(hidden.dtype), int(bias is not None)]
    info = torch.tensor(meta, dtype=torch.int64, device=hidden.device)
    return [info, weight, *([] if bias is None else [bias]), hidden]
