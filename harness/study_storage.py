"""The Optuna side of a sweep: storage with heartbeats, dead-trial handling, the trial budget.

Trials are claimed with `study.ask()` under a lock, after checking the budget, so any number
of workers add exactly the requested number of trials. A trial whose worker died (no heartbeat
for `grace_period` seconds) is failed, its MLflow run is closed FAILED, and a retry with the
same parameters is queued; the retry takes the dead trial's place in the budget.
"""

import fcntl
import hashlib
import os
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from harness.sqlite import tune_sqlite_connections
from harness.study_config import SweepConfig
from harness.tracking import Tracker

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
RUN_ID_ATTR = "mlflow_run_id"
PARENT_RUN_ATTR = "mlflow_parent_run_id"

# We drive trials with ask/tell and keep the heartbeat ourselves (see `heartbeat` below).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_url() -> str:
    return os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE


class CloseDeadTrial:
    """Called by Optuna for a trial whose worker died: fail its MLflow run, then queue a retry."""

    def __init__(self, tracking_uri: str, max_retry: int):
        self.tracking_uri = tracking_uri
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        try:
            if run_id:
                Tracker(self.tracking_uri).end_run(run_id, "FAILED", {"optuna.trial_state": "FAILED",
                                                                    "failure": "worker stopped sending heartbeats"})
        except Exception as e:  # the run may be gone (deleted in the UI); the retry must still be queued
            print(f"trial {trial.number}: could not close its MLflow run {run_id}: {e}", file=sys.stderr)
        self.retry(study, trial)


def open_storage(url: str, settings: SweepConfig, tracking_uri: str) -> RDBStorage:
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers write to one file
        tune_sqlite_connections()
    return RDBStorage(url, engine_kwargs=engine_kwargs,
                      heartbeat_interval=settings.heartbeat_interval, grace_period=settings.grace_period,
                      heartbeat_stale_trial_callback=CloseDeadTrial(tracking_uri, settings.max_retry))


@contextmanager
def budget_lock(url: str) -> Iterator[None]:
    """Serialize "count the trials, then ask for one" across the processes of this machine."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///") + ".lock")
    else:
        path = Path("mlruns") / f".optuna-{hashlib.sha1(url.encode()).hexdigest()[:12]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def budget_count(trials: list[FrozenTrial]) -> int:
    """Trials that count against the budget: all of them, except dead ones that were retried."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


def claim_trials(study: optuna.Study, storage: RDBStorage, target: int, lock_url: str,
                 most: int = 1) -> list[optuna.Trial]:
    """Up to `most` trials to run (queued retries first); none once the budget is reached."""
    claimed = []
    with budget_lock(lock_url):
        fail_stale_trials(study)
        while len(claimed) < most:
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and budget_count(trials) >= target:
                break
            trial = study.ask()
            # a first heartbeat before the lock is released: Optuna only fails (and retries)
            # a dead trial that has one
            storage.record_heartbeat(trial._trial_id)
            claimed.append(trial)
    return claimed


@contextmanager
def heartbeat(storage: RDBStorage, trial_ids: list[int], interval: int) -> Iterator[None]:
    """Record the trials' heartbeats every `interval` seconds while the body runs."""
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            try:
                for trial_id in trial_ids:
                    storage.record_heartbeat(trial_id)
            except Exception as e:  # a busy or briefly unreachable database: try again next beat
                print(f"heartbeat not recorded: {e}", file=sys.stderr)

    thread = threading.Thread(target=beat, daemon=True, name="heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
