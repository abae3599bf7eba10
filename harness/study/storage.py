"""The Optuna side of a sweep: storage with heartbeats, dead-trial handling, the trial budget.

Trials are claimed with `study.ask()` under a lock, after checking the budget, so any number
of workers add exactly the requested number of trials, and sweep commands started together on
one study add exactly the sum of theirs (each trial is marked with the command that added it). A trial whose worker died (no heartbeat
for `grace_period` seconds) is failed, its MLflow run is closed FAILED, and a retry with the
same parameters is queued; the retry takes the dead trial's place in the budget.

The lock is PostgreSQL's own (an advisory lock keyed on the study's name) when the study is
there, so it holds across machines; on SQLite, whose file only one machine can share, it is a
file lock beside the database.
"""

import fcntl
import hashlib
import os
import sys
import threading
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from harness.core.config import ConfigError
from harness.study.optuna_fast import record_trial, trial_id
from harness.tracking.store_check import PARENT_RUN_ATTR, check_file, local_path, read_only_url  # noqa: F401  (PARENT_RUN_ATTR: defined with the check that reads it)
from harness.signals import interrupts_held
from harness.tracking.sqlite import file_lock, tune_sqlite_connections
from harness.study.config import SweepConfig
from harness.tracking.tracker import Tracker

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
RUN_ID_ATTR = "mlflow_run_id"
SWEEP_ID_ATTR = "sweep_id"  # the command that added a trial: `Budget`
FAILURE_ATTR = "failure"  # a failed trial's error, in one line
MEASURE_ATTR = "measure"  # what a study's trials are measured by: objectives, target_accuracy, hold_steps


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
            tracker = Tracker(self.tracking_uri) if run_id else None
            # a run that ended (FINISHED before its trial could be told: a full disk) keeps its status
            if run_id and tracker.get_run(run_id).info.status == "RUNNING":
                tracker.end_run(run_id, "FAILED", {"optuna.trial_state": "FAILED",
                                                  "failure": "worker stopped sending heartbeats"})
        except Exception as e:  # the run may be gone (deleted in the UI); the retry must still be queued
            print(f"trial {trial.number}: could not close its MLflow run {run_id}: {e}", file=sys.stderr)
        self.retry(study, trial)


def masked(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "(not a database URL)"


def connect_error(error: Exception) -> str:
    """The driver's reason, without its preamble: 'password authentication failed for user "x"'."""
    first = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return first.split("failed: ")[-1].replace("FATAL:", "").strip()


def lock_key(name: str, kind: str = "study") -> int:
    """A signed 64-bit key for pg_advisory_xact_lock, the same on every machine."""
    return int.from_bytes(hashlib.sha1(f"wine-init {kind} {name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def tables_lock(url: str, engine_kwargs: dict) -> Iterator[None]:
    """One worker at a time past Optuna's table creation: workers that open a new database
    together would all create the tables at once and collide."""
    if url.startswith("sqlite:///"):
        with file_lock(Path(url.removeprefix("sqlite:///"))):
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("", "tables")})
            yield
    finally:
        engine.dispose()


def open_storage(url: str, settings: SweepConfig, tracking_uri: str) -> RDBStorage:
    """The study's storage; a wrong URL or password fails here in one line, before any trial."""
    # we drive trials with ask/tell and keep the heartbeat ourselves (`heartbeat` below)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        check_file(Path(url.removeprefix("sqlite:///")))  # a damaged file: one line before Optuna opens it
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers write to one file
        tune_sqlite_connections()
    elif url.startswith("postgresql"):
        # a firewalled host fails in 10 s, not minutes; a connection the server dropped (a restart)
        # is replaced before use instead of failing a write
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    try:
        with tables_lock(url, engine_kwargs):
            return RDBStorage(url, engine_kwargs=engine_kwargs,
                              heartbeat_interval=settings.heartbeat_interval, grace_period=settings.grace_period,
                              heartbeat_stale_trial_callback=CloseDeadTrial(tracking_uri, settings.max_retry))
    except (sqlalchemy.exc.ArgumentError, ImportError, ValueError) as e:
        raise ConfigError(f"OPTUNA_STORAGE: not a database URL Optuna can use: {masked(url)} ({e})") from None
    except sqlalchemy.exc.OperationalError as e:
        raise ConfigError(f"OPTUNA_STORAGE: cannot connect to {masked(url)}: {connect_error(e)}") from None


@contextmanager
def study_lock(storage: RDBStorage, study_name: str) -> Iterator[None]:
    """Serialize "count the trials, then ask for one" (and a study's creation) among its workers."""
    if storage.engine.dialect.name == "postgresql":
        # held by a transaction of its own: committing (or the server noticing a dead worker's
        # connection) releases it
        with storage.engine.connect() as connection, connection.begin():
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(study_name)})
            yield
        return
    url = storage.url
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///") + ".lock")
    else:  # another database: this machine's processes only
        path = Path("mlruns") / f".optuna-{hashlib.sha1(url.encode()).hexdigest()[:12]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Budget:
    """How many trials a sweep command runs: `trials` of its own, the ones marked with its
    `sweep_id` (so commands running at once on one study add exactly the sum of theirs), or,
    with `total`, until the study has that many in all (`make worker`)."""
    trials: int = 0
    sweep_id: str = ""
    total: int | None = None

    def left(self, trials: list[FrozenTrial]) -> int:
        """Trials still to add, counted from the study's trials (read under the study's lock)."""
        if self.total is not None:
            return self.total - budget_count(trials)
        return self.trials - budget_count([t for t in trials if t.user_attrs.get(SWEEP_ID_ATTR) == self.sweep_id])


def budget_count(trials: list[FrozenTrial]) -> int:
    """Trials that count against the budget: all of them, except dead ones that were retried."""
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


def others_running(study: optuna.Study) -> bool:
    """Whether a trial is still running somewhere; its worker may yet die and need a retry."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))


def claim_trials(study: optuna.Study, storage: RDBStorage, budget: Budget, most: int = 1,
                 workers: int = 1, attrs: dict | None = None) -> list[optuna.Trial]:
    """Up to `most` trials to run (queued retries first); none once the budget is reached.
    Near the end of the budget a worker takes only its share of what is left, so that the
    `workers` sharing the study finish together rather than one training a last batch alone.
    Each claimed trial gets the user attributes `attrs` (who runs it), with the command's mark
    when it is new, in one transaction (`record_trial`)."""
    claimed = []
    with study_lock(storage, study.study_name):
        fail_stale_trials(study)
        # read once: under the lock only this loop changes the count. `ask` takes a queued
        # retry (already counted, for the command whose mark it inherited) before it makes a
        # new trial (one more, marked as this command's before the lock is released)
        trials = study.get_trials(deepcopy=False)
        waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
        left = budget.left(trials)
        most = max(1, min(most, -(-(waiting + max(0, left)) // workers)))
        try:
            while len(claimed) < most and (waiting or left > 0):
                # a first heartbeat with the trial, Ctrl-C or not: Optuna only fails (and
                # retries) a dead trial that has one
                with interrupts_held():
                    trial = study.ask()
                    storage.record_heartbeat(trial_id(trial))
                claimed.append(trial)
                marks = dict(attrs or {})
                if waiting:
                    waiting -= 1
                else:
                    left -= 1
                    if budget.sweep_id:
                        marks[SWEEP_ID_ATTR] = budget.sweep_id
                if marks:
                    record_trial(trial, {}, marks)
        except BaseException:  # nothing will run them: failed now where the store takes it, else by their heartbeat
            for trial in claimed:
                with suppress(Exception):
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
    return claimed


@contextmanager
def heartbeat(storage: RDBStorage, trial_ids: list[int], interval: int) -> Iterator[None]:
    """Record the trials' heartbeats every `interval` seconds while the body runs."""
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            try:
                for identity in trial_ids:
                    storage.record_heartbeat(identity)
            except Exception as e:  # a busy or briefly unreachable database: try again next beat
                print(f"heartbeat not recorded: {e}", file=sys.stderr)

    thread = threading.Thread(target=beat, daemon=True, name="heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def read_study(study_name: str, storage_url: str) -> optuna.Study:
    """A study to read (make compare, make export): nothing is created, a damaged or missing
    store and an unknown study are one line (the studies there are named)."""
    if storage_url.startswith("sqlite:///") and not Path(storage_url.removeprefix("sqlite:///")).exists():
        raise ConfigError(f"study: no study named '{study_name}': {storage_url} has no studies yet (run make sweep first)")
    check_file(local_path(storage_url))  # a damaged file: one line before Optuna opens it
    storage = read_only_url(storage_url)  # a store this process cannot write to is read as it is
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ConfigError(f"study: no study named '{study_name}' in {storage_url}; "
                          f"existing: {', '.join(names) or 'none (run make sweep first)'}") from None
