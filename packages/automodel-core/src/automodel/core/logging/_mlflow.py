"""MLflow tracking through the optional extra `automodel-core[mlflow]` (the mlflow-skinny client)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from ..config import UserError
from ._metric_logger import metrics_row
from ._rank import global_rank

logger = logging.getLogger(__name__)

MLFLOW_INSTALL = "pip install 'automodel-core[mlflow]'"
MLFLOW_KEYS = (
    "tracking_uri",
    "experiment_name",
    "run_name",
    "run_id",
    "tags",
    "description",
    "artifact_location",
    "log_config",
    "async_logging",
)
MLFLOW_CONFIG_ARTIFACT = "config.yaml"

# MLflow's limits on a param or metric name and on a param value.
_MAX_KEY_LENGTH = 250
_MAX_PARAM_LENGTH = 6000
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /:]")
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description
_DEFAULT_EXPERIMENT_ID = "0"  # the experiment every MLflow store starts with, named Default


def check_mlflow_available(tracking_uri: str | None = None) -> None:
    """Raise a UserError when MLflow, or the backend its tracking URI needs, is not installed."""
    _check_backend(_import_mlflow(), tracking_uri)


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError as e:
        raise UserError(
            f"the config has an `mlflow:` section but MLflow is not installed; install it with "
            f"`{MLFLOW_INSTALL}` (or remove the section)"
        ) from e
    return mlflow


def _check_backend(mlflow: Any, tracking_uri: str | None) -> None:
    """Fail before training for a tracking URI whose store cannot be opened by this install."""
    if tracking_uri:
        uri, source = tracking_uri, "mlflow.tracking_uri"
    else:
        uri = mlflow.get_tracking_uri()
        source = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default"
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in ("", "file") and not _file_store_allowed():
        raise UserError(
            f"MLflow tracking URI {uri!r} ({source}) is a local file store, which MLflow "
            f"{mlflow.__version__} opens only with MLFLOW_ALLOW_FILE_STORE=true in the environment; "
            "set that, or set mlflow.tracking_uri to a tracking server (http://host:5000)"
        )
    if scheme in _DATABASE_SCHEMES and not _installed("sqlalchemy"):
        raise UserError(
            f"MLflow tracking URI {uri!r} ({source}) is a database store, which needs the full "
            f"MLflow package (`{MLFLOW_INSTALL}` installs only the mlflow-skinny client): "
            "`pip install mlflow`, or set mlflow.tracking_uri to a tracking server "
            "(http://host:5000) or, with MLFLOW_ALLOW_FILE_STORE=true, to file:///path/mlruns"
        )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _file_store_allowed() -> bool:
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # MLflow versions before the opt-in accept file stores
        return True
    return bool(MLFLOW_ALLOW_FILE_STORE.get())


class MlflowLogger:
    """Log metrics rows under `train/` and `val/` and the (already redacted) config to MLflow.

    The config becomes the run's params (dotted keys) and a `config.yaml` artifact. Only rank 0
    starts a run, or resumes the one named by `run_id`; other ranks check that MLflow is usable
    and then do nothing. A failure to log a metrics row is a warning: training goes on.
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, Any] | Sequence[str] | None = None,
        description: str | None = None,
        artifact_location: str | None = None,
        log_config: bool = True,
        async_logging: bool = False,
        config: Mapping[str, Any] | None = None,
        *,
        rank: int | None = None,
    ):
        mlflow = _import_mlflow()
        _check_backend(mlflow, tracking_uri)
        self.client: Any = None
        self.run_id: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._failures = 0
        self._next_step = 0
        self._skipped: set[str] = set()
        if global_rank(rank) != 0:
            return
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        run_tags = _run_tags(tags, description)
        if run_id:
            run = self._resume(run_id, run_name, run_tags)
        else:
            experiment_id = self._experiment_id(experiment_name, artifact_location)
            run = self.client.create_run(experiment_id, run_name=run_name, tags=run_tags)
        self.run_id = run.info.run_id
        if config and log_config:
            self._log_config(config, run.data.params)
        if async_logging:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mlflow-logger")
        logger.info(
            "logging to MLflow at %s: experiment %s, run %s (%s)",
            self.client.tracking_uri,
            run.info.experiment_id,
            run.info.run_name,
            self.run_id,
        )

    def _experiment_id(self, name: str | None, artifact_location: str | None) -> str:
        """The named experiment, created if missing; unnamed: $MLFLOW_EXPERIMENT_ID, else Default."""
        name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            return os.environ.get("MLFLOW_EXPERIMENT_ID") or _DEFAULT_EXPERIMENT_ID
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # created meanwhile by another job
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _resume(self, run_id: str, run_name: str | None, tags: dict[str, str]) -> Any:
        try:
            run = self.client.get_run(run_id)
        except Exception as e:
            raise UserError(
                f"mlflow.run_id {run_id!r} cannot be resumed at {self.client.tracking_uri}: {e}"
            ) from e
        from mlflow.entities import RunTag

        self.client.update_run(run_id, status="RUNNING", name=run_name)
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return run

    def _log_config(self, config: Mapping[str, Any], existing: Mapping[str, str]) -> None:
        """The config as params (a resumed run keeps the values it has) and as a YAML artifact."""
        from mlflow.entities import Param

        params = _flatten(config)
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            logger.warning(
                "MLflow params cannot change; the resumed run keeps its values of %s",
                ", ".join(changed),
            )
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        self.client.log_batch(self.run_id, params=new)
        try:
            self.client.log_dict(self.run_id, dict(config), MLFLOW_CONFIG_ARTIFACT)
        except Exception as e:  # e.g. an artifact store needing a client library not installed
            logger.warning("could not upload %s to MLflow: %s", MLFLOW_CONFIG_ARTIFACT, e)

    def log(self, metrics: Mapping[str, Any] | Any, split: str = "train") -> None:
        """Log one metrics row (a dict or an object with `to_dict()`) at its `step`."""
        if self.client is None:
            return
        from mlflow.entities import Metric

        step, row = metrics_row(metrics, split)
        step = self._next_step if step is None else step
        self._next_step = step + 1
        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in row.items():
            if isinstance(value, int | float):
                entries.append(Metric(_key(key), float(value), timestamp, step))
            elif key not in self._skipped:
                self._skipped.add(key)
                logger.warning("not logging %s to MLflow: %r is not a number", key, value)
        if entries:
            self._send(self.client.log_batch, self.run_id, metrics=entries)

    def _send(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._executor is not None:
            self._executor.submit(self._call, fn, *args, **kwargs)
        else:
            self._call(fn, *args, **kwargs)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self._failures += 1
            if self._failures == 1:
                logger.warning(
                    "could not log metrics to MLflow run %s (training goes on; later failures "
                    "are counted): %s",
                    self.run_id,
                    e,
                )

    def close(self, status: str | None = None) -> None:
        """Send what is pending and end the run (FAILED or KILLED while an exception propagates)."""
        if self.client is None:
            return
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if status is None:
            status = _status(sys.exc_info()[0])
        if self._failures:
            logger.warning(
                "%d metrics rows could not be logged to MLflow run %s", self._failures, self.run_id
            )
        client, self.client = self.client, None
        try:
            client.set_terminated(self.run_id, status)
        except Exception as e:
            logger.warning("could not end MLflow run %s: %s", self.run_id, e)

    def __enter__(self) -> MlflowLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(_status(exc_type))


def _status(exc_type: type[BaseException] | None) -> str:
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


def _run_tags(
    tags: Mapping[str, Any] | Sequence[str] | None, description: str | None
) -> dict[str, str]:
    """Tags as strings (a list of names gives empty values) plus MLflow's user/source/git tags."""
    if isinstance(tags, str):
        tags = [tags]
    if tags is None:
        data: dict[str, str] = {}
    elif isinstance(tags, Mapping):
        data = {_key(str(k)): str(v) for k, v in tags.items()}
    else:
        data = {_key(str(t)): "" for t in tags}
    if description:
        data[_NOTE_TAG] = description
    try:
        from mlflow.tracking.context.registry import resolve_tags
    except ImportError:  # pragma: no cover - an MLflow without context providers
        return data
    return resolve_tags(data)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as `a.b.c` keys; values as JSON text, strings as themselves."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[_key(name)] = text[:_MAX_PARAM_LENGTH]
    return out


def _key(name: str) -> str:
    """A name MLflow accepts: unsupported characters replaced by `_`, at most 250 characters."""
    return _BAD_KEY_CHARS.sub("_", name)[:_MAX_KEY_LENGTH]
