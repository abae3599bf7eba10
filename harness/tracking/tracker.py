"""Everything MLflow: runs and their loggers here, the writer (harness/tracking/writer.py and
writer_process.py) and the fenced fast paths (harness/tracking/mlflow_fast.py). Outside
harness/tracking/ only `make bench`'s tutorial-style reference imports mlflow.

Runs are always closed: FINISHED when the body returns, KILLED on Ctrl-C, FAILED on any other
exception, and only after every write they were given is in the store. Metrics are buffered and
written in batches of at most 1000 values (one transaction of a SQL store, harness/tracking/mlflow_fast.py;
log_batch for a server); images are encoded and written many at a time (harness/tracking/images.py);
both are written by a background thread, or for a sweep on a local store by a writer process
(MlflowClient with explicit run ids), so training does not wait for them.
A tracking server (an http URI) is reached through harness/tracking/server.py: bounded retries,
one clear line when it stays down.
"""

import functools
import os
import subprocess
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from PIL import Image
from mlflow import MlflowClient
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID

from harness.tracking import store_check, server as tracking_server
from harness.core.config import ConfigError
from harness.tracking.mlflow_fast import BATCH_LIMIT
from harness.tracking.reader import RunReader
from harness.tracking.sqlite import file_lock, tune_sqlite_connections
from harness.tracking.server import TrackingUnavailable
from harness.tracking.commands import Batch, Forget, StepImage, WriteImages
from harness.tracking.writer import WriteError, Writer, tracking_uri
from harness.tracking.writer_process import WriterProcess

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""Set on every experiment the harness makes, for the MLflow UIs that choose their view by the
experiment (MLflow 3.16-3.17's choose by the page: harness/ops/ui_app.py tells how)."""


def now_ms() -> int:
    return int(time.time() * 1000)


@functools.cache  # once a process: a sweep opens a run per trial
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class RunLogger:
    """Writes to one run through MlflowClient with an explicit run id; the slow writes (metric
    batches, images) through the tracker's writer (harness/tracking/writer.py)."""

    def __init__(self, client: MlflowClient, run_id: str, writer: Writer | WriterProcess,
                 artifact_uri: str | None = None):
        self.client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri  # the writer reads the run for it where it is None
        self.writer = writer
        self.pending: list[tuple] = []  # (key, value, timestamp, step): what mlflow's Metric takes
        self.pending_params: list[tuple[str, str]] = []  # go with the next metrics (`later=True`)
        self.pending_tags: list[tuple[str, str]] = []
        self.handed_over = False  # everything logged is with the writer (`hand_over`)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.handed_over = False
        timestamp = now_ms()
        self.pending += [(key, float(value), timestamp, step) for key, value in metrics.items()]
        if len(self.pending) >= self.writer.metric_batch:
            self.flush(whole_batches_only=True)

    def flush(self, whole_batches_only: bool = False) -> None:
        """Hand the buffered metrics to the writer, `writer.metric_batch` (at most BATCH_LIMIT) a
        call, the buffered params and tags with the first; the rest too unless
        `whole_batches_only` (each log_batch has a fixed cost)."""
        size = min(BATCH_LIMIT, self.writer.metric_batch)
        while (len(self.pending) >= size if whole_batches_only
               else self.pending or self.pending_params or self.pending_tags):
            params, self.pending_params = self.pending_params[:100], self.pending_params[100:]  # MLflow's limits
            tags, self.pending_tags = self.pending_tags[:100], self.pending_tags[100:]
            n = max(0, size - len(params) - len(tags))  # the limit of a call counts all three
            batch, self.pending = self.pending[:n], self.pending[n:]
            self.writer.submit(Batch(self.run_id, batch, params, tags))

    def hand_over(self) -> None:
        """Hand every write logged so far to the writer, without waiting for it (see `wait`)."""
        self.flush()
        self.writer.submit(WriteImages(self.run_id))
        self.writer.hand_over(self.run_id)
        self.handed_over = True

    def wait(self) -> None:
        """Everything logged so far is in the store once this returns."""
        if not self.handed_over:
            self.hand_over()
        self.handed_over = False
        self.writer.drain(self.run_id)

    def log_params(self, params: dict[str, object], later: bool = False) -> None:
        """Now, or `later`: handed to the writer with the next metrics (`flush`)."""
        if later:
            self.handed_over = False
            self.pending_params += [(k, str(v)) for k, v in params.items()]
            return
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit of params per call
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, object], later: bool = False) -> None:
        """Now, or `later`: handed to the writer with the next metrics (`flush`)."""
        if later:
            self.handed_over = False
            self.pending_tags += [(k, str(v)) for k, v in tags.items()]
            return
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_image(self, image: Image.Image, key: str, step: int) -> None:
        """A step image, laid out as `MlflowClient.log_image(key=key, step=step)` lays it out."""
        self.handed_over = False
        self.writer.submit(StepImage(self.run_id, image, key, step, now_ms(), self.artifact_uri))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


class Tracker(RunReader):
    """A tracking store: the default SQLite file under mlruns/, or MLFLOW_TRACKING_URI."""

    def __init__(self, uri: str | None = None, writer_process: bool = False):
        """`writer_process`: do the slow writes in a child process (a local store on POSIX;
        elsewhere a thread does them), so that they run beside training on another core."""
        self.uri = uri or tracking_uri()
        self.local_db = store_check.local_path(self.uri)
        # a store this process cannot write to is opened read-only: `make compare` reads it
        read_only_uri = store_check.read_only_url(self.uri)
        self.read_only = read_only_uri != self.uri
        if self.local_db:
            store_check.check_file(self.local_db)  # a damaged file: one line before MLflow opens it
            tune_sqlite_connections()
        if self.local_db and not self.read_only:
            self.local_db.parent.mkdir(parents=True, exist_ok=True)
        if self.is_server:
            tracking_server.use_server_defaults()
        if self.read_only:
            client = MlflowClient(read_only_uri)
        elif self.local_db:
            with file_lock(self.local_db):  # a new store's tables are made by one process at a time
                client = MlflowClient(self.uri)  # it opens the model registry's store, on the same file
                client.search_experiments(max_results=1)
        else:
            client = MlflowClient(self.uri)
        # only a server can become unreachable; a local store keeps the plain client on its hot path
        self.client = tracking_server.ServerClient(client, self.uri) if self.is_server else client
        in_process = writer_process and self.local_db is not None and os.name == "posix"
        self.writer = WriterProcess(self.uri) if in_process else Writer(self.client)
        if in_process:
            self.writer.open_store()  # the store exists now: the client above made it
        self.experiment_ids: dict[str, str] = {}

    def close(self) -> None:
        """Stop the writer process, if there is one (every run's writes are in by then)."""
        self.writer.close()

    def find_experiment_id(self, name: str) -> str | None:
        """The id of a live experiment, or None; creates nothing."""
        experiment = self.client.get_experiment_by_name(name)
        return experiment.experiment_id if experiment is not None and experiment.lifecycle_stage == "active" else None

    @property
    def is_server(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    def check(self) -> None:
        """Fail in one line, before anything is created, when no MLflow server answers at an
        http URI (a local store is created on first use)."""
        if self.is_server:
            tracking_server.check(self.uri)

    def experiment_id(self, name: str) -> str:
        if name not in self.experiment_ids:  # a sweep opens a run per trial in the same experiment
            self.experiment_ids[name] = self._experiment_id(name)
        return self.experiment_ids[name]

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise ConfigError(f"experiment: '{name}' is deleted in MLflow; restore it in the UI or choose another name")
        if experiment is not None:
            if experiment.tags.get(EXPERIMENT_KIND[0]) is None:  # made by an older version, or by hand
                self.client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
            return experiment.experiment_id
        # a local store keeps its artifacts beside the database, under mlruns/
        location = (self.local_db.parent / "artifacts").resolve().as_uri() if self.local_db else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
        except MlflowException as e:  # another machine created it meanwhile
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise e
            return experiment.experiment_id

    def open_run(self, experiment: str, run_name: str, params: dict[str, object] | None = None,
                 tags: dict[str, object] | None = None, parent_run_id: str | None = None) -> RunLogger:
        """A new RUNNING run; the caller closes it (prefer `run`, which always does)."""
        tags = dict(tags or {})
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        commit = git_commit()
        if commit:
            tags[MLFLOW_GIT_COMMIT] = commit
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name,
                                     tags={k: str(v) for k, v in tags.items()})
        logger = RunLogger(self.client, run.info.run_id, self.writer, run.info.artifact_uri)
        if params:
            logger.log_params(params)
        return logger

    def run_exists(self, run_id: str) -> bool:
        """Whether the store has the run, deleted or not (any other error is raised)."""
        try:
            self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def resume_run(self, run_id: str) -> RunLogger | None:
        """Mark an existing run RUNNING again; None if the store does not have it."""
        try:
            if self.client.get_run(run_id).info.lifecycle_stage == "deleted":
                return None
        except MlflowException:
            return None
        self.client.update_run(run_id, status="RUNNING")
        return RunLogger(self.client, run_id, self.writer)

    def close_run(self, logger: RunLogger, status: str) -> None:
        """End the run once its writes are in the store; FAILED if one of them failed."""
        try:
            logger.wait()
        except TrackingUnavailable:
            raise  # nothing more can be written; the run is closed like a dead worker's (study_storage)
        except BaseException as e:  # Ctrl-C while its writes went in: KILLED
            killed = status == "KILLED" or isinstance(e, KeyboardInterrupt)
            self.client.set_terminated(logger.run_id, "KILLED" if killed else "FAILED")
            raise
        finally:
            with suppress(WriteError):  # a writer process that died has nothing left to forget
                self.writer.submit(Forget(logger.run_id))
        self.client.set_terminated(logger.run_id, status)

    @contextmanager
    def run(self, experiment: str, run_name: str, params: dict[str, object] | None = None,
            tags: dict[str, object] | None = None, parent_run_id: str | None = None) -> Iterator[RunLogger]:
        logger = self.open_run(experiment, run_name, tags=tags, parent_run_id=parent_run_id)
        status = "FAILED"
        try:
            if params:
                logger.log_params(params)
            yield logger
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.close_run(logger, status)

    def set_tags(self, run_id: str, tags: dict[str, object]) -> None:
        RunLogger(self.client, run_id, self.writer).set_tags(tags)

    def end_run(self, run_id: str, status: str, tags: dict[str, object] | None = None) -> None:
        """Close a run some other process left open (a worker that died), with tags."""
        if tags:
            self.set_tags(run_id, tags)
        self.client.set_terminated(run_id, status)

    def running_children(self, parent_run_id: str) -> dict[str, str]:
        """The parent's child runs still RUNNING: run id -> their `optuna.trial_number` tag."""
        experiment_id = self.client.get_run(parent_run_id).info.experiment_id
        runs = self.client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                       "and attributes.status = 'RUNNING'", max_results=1000)
        return {r.info.run_id: r.data.tags.get("optuna.trial_number", "") for r in runs}
