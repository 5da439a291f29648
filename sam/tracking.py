"""Experiment tracking with MLflow (the optional `mlflow` extra), on when a tracking URI is given (`--tracking-uri`
or MLFLOW_TRACKING_URI): a run per `sam train` / `sam distill` / `sam evaluate`, a parent run with a child per trial
for `sam tune`, registered model versions, and `models:/NAME/VERSION` or `models:/NAME@ALIAS` wherever a model
directory is read."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Optional

from sam.config import FLAGS
from sam.storage import StorageError

log = logging.getLogger("sam")

URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "sam"
RUN_TAG = "sam.ray_run"  # the Ray run or search name: a resumed run continues its MLflow run
DECISION_TAG = "sam.decision"  # a trial's end: finished, or stopped (by ASHA or patience) at epoch N
MODEL_ARTIFACT = "model"
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


class TrackingError(StorageError):
    """Tracking asked for and not possible (MLflow missing, a model name not registered): one line saying why."""


def tracking_uri(given: Optional[str] = None) -> Optional[str]:
    """The tracking URI given or in the environment; a relative sqlite path made absolute, since Ray's processes
    run elsewhere."""
    uri = given or os.environ.get(URI_ENV)
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().absolute())
    return uri or None


def client(uri: Optional[str] = None):
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise TrackingError("tracking needs MLflow: pip install -e '.[mlflow]'") from None
    return MlflowClient(tracking_uri(uri))


def flat_params(config) -> dict:
    """The config's knobs by the names of their command-line flags (`--data` for the source)."""
    return {FLAGS.get(name, name): value for section in config.to_dict().values() for name, value in section.items()}


def _git_commit() -> Optional[str]:
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def run_tags(config, report=None) -> dict:
    """What a run is of: its data, the rows it kept and dropped (by reason), its split seed, code and libraries."""
    import ray
    import torch

    tags = {"sam.source": config.data.source, "sam.split_seed": config.train.seed, "sam.val_fraction": config.data.val_fraction,
            "sam.holdout_fraction": config.data.holdout_fraction,
            "ray_version": ray.__version__, "torch_version": torch.__version__}
    if config.start.init:
        tags["sam.init"] = config.start.init
    if config.distill.teacher:
        tags["sam.teacher"] = config.distill.teacher
    if report is not None:
        tags["sam.rows_kept"] = report.kept
        tags.update({f"sam.rows_dropped.{reason}": count for reason, count in report.dropped.items()})
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return {name: str(value) for name, value in tags.items()}


def _numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class Tracker:
    """One command's handle on the tracking server."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT

    @cached_property
    def client(self):
        return client(self.uri)

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        return found.experiment_id if found else self.client.create_experiment(self.experiment)

    def start(self, ray_name: str, params: dict, tags: dict, parent: Optional[str] = None) -> str:
        """The MLflow run of a Ray run: the one already tagged with its name (a `--resume` continues it), else a
        new one with the params."""
        mlflow_client, experiment = self.client, self.experiment_id()
        found = mlflow_client.search_runs([experiment], filter_string=f"tags.`{RUN_TAG}` = '{ray_name}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
            mlflow_client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {RUN_TAG: ray_name, **tags, **({"mlflow.parentRunId": parent} if parent else {})}
        run_id = mlflow_client.create_run(experiment, run_name=ray_name, tags=tags).info.run_id
        self.log_params(run_id, params)
        return run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v in _numeric(metrics).items()])

    def log_model(self, run_id: str, model_dir: str) -> None:
        """The exported model directory, a local one as it is on disk (a standard Hugging Face directory), under
        `model/`."""
        self.client.log_artifacts(run_id, model_dir, MODEL_ARTIFACT)

    def register(self, run_id: str, name: str) -> str:
        """The run's `model/` artifact as a new version of `name`; returns `models:/NAME/VERSION`."""
        from mlflow.exceptions import MlflowException

        mlflow_client = self.client
        try:
            mlflow_client.get_registered_model(name)
        except MlflowException:
            mlflow_client.create_registered_model(name)
        # A runs:/ source, which a tracking server accepts too (it refuses a bare path); MLflow's own
        # register_model wants a logged MLflow model, and this is a plain Hugging Face directory.
        version = mlflow_client.create_model_version(name, source=f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id).version
        return f"models:/{name}/{version}"

    @contextmanager
    def running(self, run_id: str) -> Iterator[str]:
        """Ends the run as FINISHED, or FAILED (KILLED on Ctrl-C) when the command raises."""
        try:
            yield run_id
        except KeyboardInterrupt:
            self.client.set_terminated(run_id, status="KILLED")
            raise
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")


def tracker(uri: Optional[str], experiment: str = DEFAULT_EXPERIMENT) -> Optional[Tracker]:
    """A Tracker when a URI is given or set; checked here, before a run spends its time."""
    uri = tracking_uri(uri)
    if not uri:
        return None
    tracked = Tracker(uri, experiment)
    tracked.client  # MLflow is installed
    return tracked


def trial_logger(tracked: Tracker, parent: str):
    """Ray Tune's MLflow callback: a child run of `parent` per trial, its sampled knobs as params and every epoch's
    metrics as steps."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return MLflowLoggerCallback(tracking_uri=tracked.uri, experiment_name=tracked.experiment,
                                tags={"mlflow.parentRunId": parent})


def record_decisions(tracked: Tracker, parent: str, rows: list[dict]) -> None:
    """Each child run tagged with how its trial ended (finished, stopped by ASHA or patience at epoch N, error),
    and the leaderboard on the parent."""
    mlflow_client = tracked.client
    children = mlflow_client.search_runs([tracked.experiment_id()], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    # Tune names a trial `<trainable>_<trial id>`, and its id is `<search>_<number>`.
    by_trial = {"_".join(run.data.tags.get("trial_name", "").rsplit("_", 2)[-2:]): run.info.run_id for run in children}
    for row in rows:
        if row["status"] == "ERROR":
            decision = "error"
        elif row["stopped_by"]:
            decision = f"stopped by {'ASHA' if row['stopped_by'] == 'asha' else 'patience'} at epoch {row['epochs']}"
        else:
            decision = f"finished at epoch {row['epochs']}"
        if row["trial_id"] in by_trial:
            mlflow_client.set_tag(by_trial[row["trial_id"]], DECISION_TAG, decision)
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "leaderboard.json").write_text(json.dumps(
            [{k: v for k, v in row.items() if k != "curve"} for row in rows], indent=2, default=str) + "\n")
        mlflow_client.log_artifacts(parent, directory, "leaderboard")


def registered_version(uri: str) -> tuple[str, str, str]:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS` as (name, version, where MLflow keeps that version's files);
    an alias is resolved to the version it names now."""
    match = MODEL_URI.match(uri)
    if not match:
        raise TrackingError(f"{uri}: not a registered model (models:/NAME/VERSION or models:/NAME@ALIAS)")
    from mlflow.exceptions import MlflowException

    mlflow_client, name = client(), match["name"]
    try:
        version = match["version"] or mlflow_client.get_model_version_by_alias(name, match["alias"]).version
        return name, str(version), mlflow_client.get_model_version_download_uri(name, version)
    except MlflowException as error:
        raise TrackingError(f"{uri}: {error.message} (tracking URI {tracking_uri() or 'unset'})") from None


def download_model(source: str, destination: Path) -> Path:
    """Files only MLflow can read (a tracking server's proxied `mlflow-artifacts:` store), into a directory
    under `destination`, which is returned."""
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(destination), tracking_uri=tracking_uri()))
