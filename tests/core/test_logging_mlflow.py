"""Tests of the MLflow metric logger against a real local file store, and of its early errors."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest

from automodel.core.config import ConfigError, ConfigNode, UserError
from automodel.core.logging import (
    MLFLOW_CONFIG_ARTIFACT,
    MlflowLogger,
    build_metric_loggers,
    check_metric_loggers,
)
from automodel.core.logging import _mlflow as mlflow_module
from automodel.core.training import MetricsSample

EXTRA = "pip install 'automodel-core[mlflow]'"
RUN_CONFIG = {
    "model": {"_target_": "transformers.AutoModelForCausalLM.from_pretrained", "revision": None},
    "optimizer": {"lr": 1e-4, "betas": [0.9, 0.95]},
    "hf_token": "<redacted>",
}


def _sample(step: int) -> MetricsSample:
    return MetricsSample(step=step, epoch=0, loss=1.0 / step, lr=1e-3, extra={"tokens": 10 * step})


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local file-store tracking URI; MLflow 3 opens one only when opted in."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return (tmp_path / "mlruns").as_uri()


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_file_store_run_holds_metrics_params_and_config(store: str, tmp_path: Path):
    from mlflow import MlflowClient

    section = {
        "mlflow": {
            "tracking_uri": store,
            "experiment_name": "tiny",
            "run_name": "run-1",
            "tags": {"team": "llm", "stage": 1},
            "description": "a tiny run",
        }
    }
    check_metric_loggers(section)
    (logger,) = build_metric_loggers(section, run_config=RUN_CONFIG, rank=0)
    assert isinstance(logger, MlflowLogger)
    logger.log(_sample(1))
    logger.log(_sample(2), split="training")
    logger.log({"step": 2, "epoch": 0, "loss": 0.75, "grad_norm": None}, split="validation")
    with pytest.raises(ValueError, match="split"):
        logger.log(_sample(3), split="test")
    logger.close()
    logger.close()  # a second close does nothing

    client = MlflowClient(tracking_uri=store)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-1"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    assert _history(client, run.info.run_id, "train/loss") == [(1, 1.0), (2, 0.5)]
    assert _history(client, run.info.run_id, "train/tokens") == [(1, 10.0), (2, 20.0)]
    assert _history(client, run.info.run_id, "val/loss") == [(2, 0.75)]
    assert "val/grad_norm" not in run.data.metrics and "train/step" not in run.data.metrics
    params = run.data.params
    assert params["optimizer.lr"] == "0.0001" and params["optimizer.betas"] == "[0.9, 0.95]"
    assert params["model._target_"] == "transformers.AutoModelForCausalLM.from_pretrained"
    assert params["model.revision"] == "null" and params["hf_token"] == "<redacted>"
    tags = run.data.tags
    assert tags["team"] == "llm" and tags["stage"] == "1"
    assert tags["mlflow.note.content"] == "a tiny run" and "mlflow.user" in tags
    artifact = Path(client.download_artifacts(run.info.run_id, MLFLOW_CONFIG_ARTIFACT, tmp_path))
    import yaml

    assert yaml.safe_load(artifact.read_text()) == RUN_CONFIG


def test_resume_async_and_failed_status(store: str, caplog: pytest.LogCaptureFixture):
    from mlflow import MlflowClient

    first = MlflowLogger("tiny", tracking_uri=store, config=RUN_CONFIG, rank=0)
    first.log(_sample(1))
    with pytest.raises(RuntimeError), first:
        raise RuntimeError("crash")  # the run ends as FAILED

    changed = {**RUN_CONFIG, "optimizer": {"lr": 3e-5, "betas": [0.9, 0.95]}, "seed": 7}
    with (
        caplog.at_level(logging.WARNING, logger="automodel.core.logging"),
        MlflowLogger(
            tracking_uri=store, run_id=first.run_id, async_logging=True, config=changed, rank=0
        ) as resumed,
    ):
        for step in (2, 3):
            resumed.log(_sample(step))
        resumed.log({"step": 3, "note": "text"})  # not a number: warned about once, not sent
    assert "keeps its values of optimizer.lr" in caplog.text
    assert "not logging train/note to MLflow" in caplog.text

    client = MlflowClient(tracking_uri=store)
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert _history(client, first.run_id, "train/loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    params = client.get_run(first.run_id).data.params
    assert params["optimizer.lr"] == "0.0001" and params["seed"] == "7"


def test_failed_logging_warns_and_training_goes_on(store: str, caplog):
    logger = MlflowLogger("tiny", tracking_uri=store, log_config=False, rank=0)

    def broken(*args, **kwargs):
        raise ConnectionError("tracking server unreachable")

    logger.client.log_batch = broken
    with caplog.at_level(logging.WARNING, logger="automodel.core.logging"):
        logger.log(_sample(1))
        logger.log(_sample(2))
        logger.close()
    assert caplog.text.count("tracking server unreachable") == 1
    assert "2 metrics rows could not be logged" in caplog.text


def test_other_ranks_start_no_run(store: str, tmp_path: Path):
    logger = MlflowLogger("tiny", tracking_uri=store, config=RUN_CONFIG, rank=1)
    logger.log(_sample(1))
    logger.close()
    assert logger.run_id is None and not (tmp_path / "mlruns").exists()


def test_mlflow_section_mistakes_are_reported_together():
    with pytest.raises(ConfigError) as err:
        check_metric_loggers(
            ConfigNode({"mlflow": {"experiment": "x", "tags": 3}, "wandb": {"projet": "y"}})
        )
    msg = str(err.value)
    assert "mlflow.experiment" in msg and "did you mean 'mlflow.experiment_name'" in msg
    assert "mlflow.tags: must be a list or a mapping" in msg
    assert "wandb.projet" in msg
    assert build_metric_loggers({"mlflow": None, "wandb": False}) == []


def test_missing_mlflow_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails
    calls = (
        lambda: check_metric_loggers(ConfigNode({"mlflow": {"experiment_name": "x"}})),
        lambda: build_metric_loggers({"mlflow": {}}),
        lambda: MlflowLogger("x", rank=1),  # every rank fails the same way
    )
    for call in calls:
        with pytest.raises(UserError, match=re.escape(EXTRA)) as err:
            call()
        assert "`mlflow:` section but MLflow is not installed" in str(err.value)


def test_backends_this_install_cannot_open_fail_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    file_uri = (tmp_path / "mlruns").as_uri()
    with pytest.raises(UserError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        check_metric_loggers({"mlflow": {"tracking_uri": file_uri}})
    monkeypatch.setattr(mlflow_module, "_installed", lambda module: False)
    with pytest.raises(UserError, match=r"database store.*`pip install mlflow`") as err:
        check_metric_loggers({"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}})
    assert "(mlflow.tracking_uri)" in str(err.value)
    monkeypatch.chdir(tmp_path)  # MLflow's default, sqlite:///mlflow.db, is the same case
    with pytest.raises(UserError, match=r"\(the default\) is a database store"):
        MlflowLogger("x", rank=0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg2://db/mlflow")
    with pytest.raises(UserError, match=r"\(\$MLFLOW_TRACKING_URI\) is a database store"):
        check_metric_loggers({"mlflow": {}})
    assert not list(tmp_path.iterdir())
