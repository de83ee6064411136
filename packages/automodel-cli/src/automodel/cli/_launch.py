"""Launch flags: validation, the torchrun command they build, and running it with signal forwarding."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from automodel.cli._errors import LaunchError, UsageError

DEFAULT_RDZV_ID = "automodel"
_FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")  # the ones torchrun handles
_DIGITS = re.compile(r"[0-9]+")
_EXAMPLE_ENDPOINT = "node0:29400"


@dataclass(frozen=True)
class LaunchOptions:
    """Validated launch flags; the defaults mean one process, run in-process."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None

    @property
    def uses_torchrun(self) -> bool:
        """True when the run needs torchrun: several processes or any rendezvous flag."""
        return (
            self.nproc_per_node > 1
            or self.nnodes > 1
            or self.rdzv_endpoint is not None
            or self.master_addr is not None
            or self.master_port is not None
            or self.node_rank is not None
        )


def _positive_int(flag: str, raw: str) -> int:
    if not _DIGITS.fullmatch(raw) or int(raw) < 1:
        raise UsageError(f"{flag} expects a positive integer, got {raw!r}.")
    return int(raw)


def _non_negative_int(flag: str, raw: str) -> int:
    if not _DIGITS.fullmatch(raw):
        raise UsageError(f"{flag} expects a non-negative integer, got {raw!r}.")
    return int(raw)


def _port(flag: str, raw: str) -> int:
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= 65535:
        raise UsageError(f"{flag} expects a port number between 1 and 65535, got {raw!r}.")
    return int(raw)


def _word(flag: str, raw: str) -> str:
    if not raw or any(ch.isspace() for ch in raw):
        raise UsageError(f"{flag} expects a non-empty value without spaces, got {raw!r}.")
    return raw


def _endpoint(flag: str, raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    bracketed = len(host) > 2 and host[0] == "[" and host[-1] == "]"  # IPv6: [::1]:29400
    plain = bool(host) and not any(ch in host for ch in ":[]")
    bad_host = not (bracketed or plain) or any(ch.isspace() for ch in host)
    if not sep or bad_host or not _DIGITS.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise UsageError(
            f"{flag} expects HOST:PORT with a port between 1 and 65535 "
            f"(e.g. {_EXAMPLE_ENDPOINT}, or [::1]:29400 for IPv6), got {raw!r}."
        )
    return raw


# Canonical flag -> (LaunchOptions field, value parser, metavar, help text).
LAUNCH_FLAGS = {
    "--nproc-per-node": (
        "nproc_per_node",
        _positive_int,
        "N",
        "processes per node, usually one per GPU; N > 1 launches with torchrun",
    ),
    "--nnodes": ("nnodes", _positive_int, "N", "number of nodes (default 1)"),
    "--node-rank": (
        "node_rank",
        _non_negative_int,
        "R",
        "this node's rank, 0..nnodes-1 (static rendezvous, with --master-addr)",
    ),
    "--master-addr": ("master_addr", _word, "HOST", "address of the node with rank 0"),
    "--master-port": ("master_port", _port, "PORT", "port on the rank-0 node (default 29500)"),
    "--rdzv-endpoint": (
        "rdzv_endpoint",
        _endpoint,
        "HOST:PORT",
        "c10d rendezvous endpoint; nodes get their ranks from it",
    ),
    "--rdzv-id": (
        "rdzv_id",
        _word,
        "ID",
        f"rendezvous job id, the same on every node (default {DEFAULT_RDZV_ID!r})",
    ),
}


def canonical_launch_flag(name: str) -> str | None:
    """The canonical spelling of a launch flag (`--nproc_per_node` too), or None."""
    canonical = "--" + name[2:].replace("_", "-") if name.startswith("--") else name
    return canonical if canonical in LAUNCH_FLAGS else None


def parse_launch_value(flag: str, raw: str) -> object:
    """Check and convert the value of one launch flag."""
    _, parse, _, _ = LAUNCH_FLAGS[flag]
    return parse(flag, raw)


def resolve_launch(values: dict[str, object]) -> LaunchOptions:
    """Build LaunchOptions from parsed flag values and check that they fit together."""
    opts = LaunchOptions(**{LAUNCH_FLAGS[flag][0]: value for flag, value in values.items()})
    static = [
        flag
        for flag, value in (
            ("--master-addr", opts.master_addr),
            ("--master-port", opts.master_port),
            ("--node-rank", opts.node_rank),
        )
        if value is not None
    ]
    if opts.rdzv_endpoint is not None and static:
        raise UsageError(
            f"{', '.join(static)} cannot be combined with --rdzv-endpoint: use either "
            "--rdzv-endpoint HOST:PORT (c10d rendezvous, ranks assigned automatically) or "
            "--master-addr/--master-port/--node-rank (static rendezvous)."
        )
    if opts.rdzv_id is not None and opts.rdzv_endpoint is None:
        raise UsageError("--rdzv-id only applies together with --rdzv-endpoint HOST:PORT.")
    if opts.node_rank is not None and opts.node_rank >= opts.nnodes:
        raise UsageError(
            f"--node-rank {opts.node_rank} is out of range for --nnodes {opts.nnodes} "
            f"(node ranks are 0..{opts.nnodes - 1})."
        )
    if opts.nnodes > 1 and opts.rdzv_endpoint is None:
        if opts.master_addr is None:
            raise UsageError(
                f"--nnodes {opts.nnodes} needs to know where the nodes meet: give either "
                f"--rdzv-endpoint HOST:PORT (e.g. {_EXAMPLE_ENDPOINT}, the same on every node) or "
                "--master-addr HOST with --node-rank R on each node."
            )
        if opts.node_rank is None:
            raise UsageError(
                f"--master-addr with --nnodes {opts.nnodes} needs --node-rank R on each node "
                f"(0 on the master node, 0..{opts.nnodes - 1} in all)."
            )
    return opts


def torchrun_command(opts: LaunchOptions, cli_args: list[str]) -> list[str]:
    """The torchrun command for `opts`: `python -m LAUNCHER ... -m automodel.cli ARGS`.

    The launcher is torch's, through `automodel.distributed._torchrun` when that package is
    installed (a one-line failure report and the failed process's exit code), else plain
    `torch.distributed.run`.
    """
    cmd = [sys.executable, "-m", _launcher()]
    cmd += ["--nnodes", str(opts.nnodes), "--nproc-per-node", str(opts.nproc_per_node)]
    if opts.rdzv_endpoint is not None:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", opts.rdzv_endpoint]
        cmd += ["--rdzv-id", opts.rdzv_id or DEFAULT_RDZV_ID]
    elif opts.master_addr is None and opts.master_port is None and opts.node_rank is None:
        cmd += ["--standalone"]  # single node: a local rendezvous on a free port
    else:
        if opts.node_rank is not None:
            cmd += ["--node-rank", str(opts.node_rank)]
        if opts.master_addr is not None:
            cmd += ["--master-addr", opts.master_addr]
        if opts.master_port is not None:
            cmd += ["--master-port", str(opts.master_port)]
    return [*cmd, "-m", "automodel.cli", *cli_args]


def _launcher() -> str:
    """The module that runs torchrun; found without importing it (the CLI never imports torch)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("automodel.distributed") is not None
    except ImportError:
        found = False
    return "automodel.distributed._torchrun" if found else "torch.distributed.run"


def run_torchrun(cmd: list[str]) -> int:
    """Run `cmd`, forwarding SIGINT/SIGTERM/SIGHUP/SIGQUIT to it; return its exit status."""
    import importlib.util
    import signal
    import subprocess

    if importlib.util.find_spec("torch") is None:
        raise LaunchError(
            f"launching several processes needs torch (torch.distributed.run), which is not "
            f"installed for {sys.executable}. Install automodel-recipes (it brings torch) or torch."
        )
    child: list[subprocess.Popen[bytes]] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child and child[0].poll() is None:
            child[0].send_signal(signum)
        elif not child:
            pending.append(signum)

    previous = {}
    for name in _FORWARDED_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None or signal.getsignal(signum) is signal.SIG_IGN:
            continue
        try:
            previous[signum] = signal.signal(signum, forward)
        except ValueError:  # not the main thread: signals cannot be caught here
            break
    try:
        # Own process group: a Ctrl-C in the terminal reaches torchrun once (forwarded by us),
        # not twice, so its shutdown of the workers is not interrupted by a second signal.
        extra: dict[str, object] = {"process_group": 0} if os.name == "posix" else {}
        if sys.platform == "linux":
            extra["preexec_fn"] = _die_with_parent(signal.SIGTERM)
        child.append(subprocess.Popen(cmd, **extra))
        for signum in pending:
            child[0].send_signal(signum)
        returncode = child[0].wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if child and child[0].poll() is None:  # we are failing: do not leave torchrun behind
            child[0].terminate()
    return 128 - returncode if returncode < 0 else returncode


def _die_with_parent(signum: int) -> Callable[[], None]:
    """A Popen preexec_fn (Linux): the child gets `signum` if the CLI dies, e.g. by SIGKILL."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        libc.prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the CLI died before prctl took effect
            os.kill(os.getpid(), signum)

    return set_parent_death_signal
