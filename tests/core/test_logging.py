"""Tests of automodel.core.logging: log setup, JSONL metrics with resume, progress bar, W&B."""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automodel.core.config import ConfigError, ConfigNode, UserError
from automodel.core.logging import (
    JsonlWriter,
    ProgressBar,
    WandbLogger,
    build_metric_loggers,
    check_metric_loggers,
    setup_logging,
)
from automodel.core.logging import _progress as progress_module
from automodel.core.training import MetricsSample


# -- setup_logging -------------------------------------------------------------------------
@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_rank0_logs_info_with_a_timestamp():
    out = io.StringIO()
    setup_logging("INFO", rank=0, stream=out)
    setup_logging("INFO", rank=0, stream=out)  # a second call replaces, not duplicates
    log = logging.getLogger("automodel.test")
    log.debug("hidden")
    log.info("hello %d", 3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO automodel\.test: hello 3", lines[0])


@pytest.mark.usefixtures("restore_root_logger")
def test_other_ranks_log_warnings_only():
    out = io.StringIO()
    setup_logging("DEBUG", rank=3, stream=out)
    log = logging.getLogger("automodel.test")
    log.info("not shown")
    log.warning("careful")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[rank 3] ") and lines[0].endswith("WARNING automodel.test: careful")


def test_unknown_level():
    with pytest.raises(ValueError, match="VERBOSE"):
        setup_logging("VERBOSE", rank=0, stream=io.StringIO())


# -- JsonlWriter ---------------------------------------------------------------------------
def _sample(step: int) -> MetricsSample:
    return MetricsSample(step=step, epoch=0, loss=1.0 / step, lr=1e-3, extra={"tokens": 10 * step})


def test_jsonl_rows_are_flushed_per_line(tmp_path: Path):
    path = tmp_path / "run" / "training.jsonl"
    writer = JsonlWriter(path, rank=0)
    writer.write(_sample(1))
    writer.write({"step": 2, "loss": float("nan")})
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # read while still open
    assert rows[0] == _sample(1).to_dict()
    assert rows[1]["step"] == 2 and rows[1]["loss"] != rows[1]["loss"]
    assert writer.state_dict() == {"rows": 2, "offset": path.stat().st_size}
    writer.close()


def test_jsonl_resume_truncates_back_to_the_checkpoint(tmp_path: Path):
    whole = tmp_path / "uninterrupted.jsonl"
    with JsonlWriter(whole, rank=0) as writer:
        for step in range(1, 11):
            writer.write(_sample(step))

    path = tmp_path / "resumed.jsonl"
    with JsonlWriter(path, rank=0) as writer:
        for step in range(1, 5):
            writer.write(_sample(step))
        state = json.loads(json.dumps(writer.state_dict()))  # saved with the step-4 checkpoint
        writer.write(_sample(5))
        writer.write(_sample(6))  # progress after the checkpoint, lost by the crash
    with path.open("a") as f:
        f.write('{"step": 7, "lo')  # a line cut off by the crash

    with JsonlWriter(path, rank=0) as writer:
        assert writer.rows == 6  # an append-only reopen counts complete lines
        writer.load_state_dict(state)
        assert writer.state_dict() == state == {"rows": 4, "offset": state["offset"]}
        assert path.stat().st_size == state["offset"]
        for step in range(5, 11):
            writer.write(_sample(step))
    assert path.read_bytes() == whole.read_bytes()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == list(range(1, 11))


def test_jsonl_resume_with_a_shorter_file_appends(tmp_path: Path):
    path = tmp_path / "training.jsonl"
    with JsonlWriter(path, rank=0) as writer:
        writer.write(_sample(1))
        writer.write(_sample(2))
        state = writer.state_dict()
    path.unlink()
    with JsonlWriter(path, rank=0) as writer:
        writer.load_state_dict(state)
        assert writer.state_dict() == {"rows": 0, "offset": 0}
        writer.write(_sample(3))
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [3]


def test_jsonl_only_rank0_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "validation.jsonl"
    with JsonlWriter(path, rank=1) as writer:
        writer.write(_sample(1))
        writer.load_state_dict({"rows": 0, "offset": 0})
    assert not path.exists()
    monkeypatch.setenv("RANK", "2")  # the rank a launcher sets, when none is passed
    with JsonlWriter(path) as writer:
        writer.write(_sample(1))
    assert not path.exists()
    monkeypatch.setenv("RANK", "0")
    with JsonlWriter(path) as writer:
        writer.write(_sample(1))
    assert len(path.read_text().splitlines()) == 1


# -- ProgressBar ---------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(progress_module, "_now", fake)
    return fake


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_without_tty_prints_a_line_every_n_percent(clock: _Clock):
    out = io.StringIO()
    bar = ProgressBar(total=20, desc="train", stream=out, rank=0, every_percent=25, quiet_seconds=2)
    for step in range(1, 21):
        clock.now += 0.5
        bar.update(1, loss=1.0 / step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [re.search(r"(\d+)% (\d+)/20", x).groups() for x in lines] == [
        ("25", "5"),
        ("50", "10"),
        ("75", "15"),
        ("100", "20"),
    ]
    assert lines[0] == "train: 25% 5/20 [00:02<00:07, 2.00 it/s] loss=0.2"
    assert lines[-1].endswith("loss=0.05")


def test_progress_without_tty_prints_every_m_seconds(clock: _Clock):
    out = io.StringIO()
    bar = ProgressBar(desc="val", stream=out, rank=0, every_seconds=10)
    for _ in range(7):
        clock.now += 4
        bar.update(2)
    bar.close()  # the final count is printed once more
    assert out.getvalue().splitlines() == [
        "val: 6 [00:12, 0.50 it/s]",
        "val: 12 [00:24, 0.50 it/s]",
        "val: 14 [00:28, 0.50 it/s]",
    ]


def test_progress_without_tty_keeps_quiet_for_a_short_bar(clock: _Clock):
    out = io.StringIO()
    with ProgressBar(total=13, desc="val", stream=out, rank=0) as bar:  # 10% steps
        for _ in range(13):
            clock.now += 0.1
            bar.update(1)
    assert out.getvalue().splitlines() == ["val: 100% 13/13 [00:01<00:00, 10.00 it/s]"]


def test_progress_on_a_tty_redraws_in_place(clock: _Clock):
    out = _Tty()
    bar = ProgressBar(total=4, desc="train", stream=out, rank=0, initial=1)
    for _ in range(3):
        clock.now += 1
        bar.update()
    assert "\n" not in out.getvalue()
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n")
    assert "|####################| 100% 4/4" in text.rsplit("\r", 1)[1]


def test_progress_disabled_or_other_rank_writes_nothing(clock: _Clock):
    for kwargs in ({"enabled": False, "rank": 0}, {"rank": 1}):
        out = io.StringIO()
        with ProgressBar(total=2, stream=out, every_percent=1, **kwargs) as bar:
            bar.update(2, loss=1.0)
        assert out.getvalue() == ""
        assert bar.n == 2


# -- Weights & Biases ----------------------------------------------------------------------
def test_metric_loggers_from_a_config_section():
    assert build_metric_loggers(ConfigNode({"model": {}})) == []
    assert build_metric_loggers({"wandb": None}) == []
    check_metric_loggers({})
    with pytest.raises(ConfigError) as err:
        check_metric_loggers(ConfigNode({"wandb": {"projet": "x"}}))
    msg = str(err.value)
    assert "wandb.projet" in msg and "did you mean 'wandb.project'" in msg
    assert "wandb.project: is required" in msg


def test_missing_wandb_extra_is_a_clear_error():
    code = """
import sys
sys.modules["wandb"] = None
from automodel.core.config import UserError
from automodel.core.logging import WandbLogger, build_metric_loggers, check_metric_loggers
check_metric_loggers({"model": {}})
for call in (
    lambda: WandbLogger("p"),
    lambda: check_metric_loggers({"wandb": {"project": "p"}}),
    lambda: build_metric_loggers({"wandb": {"project": "p"}}),
):
    try:
        call()
    except UserError as e:
        print("ERROR:", e)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    errors = [x for x in result.stdout.splitlines() if x.startswith("ERROR:")]
    assert len(errors) == 3
    assert all("pip install 'automodel-core[wandb]'" in x for x in errors)


def test_missing_wandb_fails_before_any_run_starts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=re.escape("pip install 'automodel-core[wandb]'")):
        check_metric_loggers(ConfigNode({"wandb": {"project": "p"}}))
    with pytest.raises(UserError, match="wandb is not installed"):
        WandbLogger("p", rank=1)  # every rank fails the same way


def _wandb_records(path: Path):
    """Decode the records of an offline `.wandb` file (a LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block  # block trailer padding
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break  # still being written
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start a record
        if kind in (1, 4) and pending:  # FULL/LAST end one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _items(updates) -> dict:
    return {(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in updates}


def test_wandb_offline_run_holds_metrics_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_config = {"optimizer": {"lr": 1e-4}, "hf_token": "<redacted>"}
    wandb_dir = tmp_path / "wandb-dir"
    section = {
        "wandb": {
            "project": "tiny",
            "name": "run-1",
            "group": "sweep-7",
            "tags": ["a", "b"],
            "mode": "offline",
            "dir": str(wandb_dir),
        }
    }
    (logger,) = build_metric_loggers(section, run_config=run_config, rank=0)
    assert isinstance(logger, WandbLogger)
    logger.log(_sample(1))
    logger.log(_sample(2), split="train")
    logger.log({"step": 2, "epoch": 0, "loss": 0.75, "grad_norm": None}, split="validation")
    with pytest.raises(ValueError, match="split"):
        logger.log(_sample(3), split="test")
    logger.close()

    (run_file,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 30  # wandb's service process may still be writing the file
    while True:
        records = list(_wandb_records(run_file))
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "exit" in kinds and "run" in kinds, kinds
    run = records[kinds.index("run")].run
    assert (run.project, run.display_name, list(run.tags)) == ("tiny", "run-1", ["a", "b"])
    assert run.run_group == "sweep-7"
    assert _items(run.config.update)["optimizer"] == {"lr": 1e-4}
    assert _items(run.config.update)["hf_token"] == "<redacted>"
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [1, 2]
    assert history[0]["train/loss"] == 1.0 and history[0]["train/tokens"] == 10
    assert history[1]["train/loss"] == 0.5 and history[1]["val/loss"] == 0.75
    assert "val/grad_norm" not in history[1] and "train/step" not in history[0]


def test_wandb_logger_on_other_ranks_starts_no_run(tmp_path: Path):
    pytest.importorskip("wandb")
    logger = WandbLogger("tiny", mode="offline", dir=tmp_path / "w", rank=1)
    logger.log(_sample(1))
    logger.close()
    assert logger.run is None
    assert not (tmp_path / "w").exists()
