"""Runs handed over to the writer whose trials are told once their writes are in (`OpenRuns`)."""

import sys

import optuna
from optuna.trial import TrialState

from harness.errors import ServiceError
from harness.study.optuna_fast import trial_id
from harness.tracking.tracker import RunLogger, Tracker
from harness.core.train import TrainResult
from harness.study.trial import Job, fail, keep_reports, tell


class OpenRuns:
    """Trials whose runs' writes are handed over to the writer but not yet in, oldest first.

    A run is closed (and its trial told) only once the next run is handed over, or when the
    worker stops: a writer process writes one run while this process trains, draws and replays
    the next, from one batch to the next too. `trial_done(number)` follows the trials told.
    """

    def __init__(self, job: Job, tracker: Tracker, trial_done=None):
        self.job, self.tracker, self.trial_done = job, tracker, trial_done
        self.runs: list[tuple[optuna.Trial, RunLogger, TrainResult, dict[int, float]]] = []
        self.told: set[int] = set()  # the numbers of the trials that ended here

    def trial_ids(self) -> list[int]:
        return [trial_id(trial) for trial, *_ in self.runs]

    def beat(self, storage) -> None:
        """A heartbeat for each open trial now: its last one, from the claim before, may be
        nearly an interval old, and the next claim's first comes an interval later."""
        for identity in self.trial_ids():
            storage.record_heartbeat(identity)

    def add(self, trial: optuna.Trial, logger: RunLogger, result: TrainResult,
            reports: dict[int, float] | None = None) -> None:
        """The newest run is handed over: close the ones before it. `reports`: as for `tell`."""
        self.runs.append((trial, logger, result, reports or {}))
        while len(self.runs) > 1:
            self.close_first()

    def close_all(self) -> None:
        while self.runs:
            self.close_first()

    def close_first(self) -> None:
        """Close the oldest run and tell its trial; a write of it that failed fails it alone."""
        trial, logger, result, reports = self.runs.pop(0)
        try:
            self.tracker.close_run(logger, "FINISHED")
        except ServiceError:
            keep_reports(trial, reports)
            raise
        except BaseException as e:  # close_run ended the run FAILED (KILLED on Ctrl-C)
            fail(trial, self.tracker, logger.run_id, reports)
            self.done(trial)
            if not isinstance(e, Exception):
                raise
            print(f"trial {trial.number} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return
        try:
            tell(trial, self.job, result, reports)
        except BaseException:  # not left RUNNING: no claim of this worker covers it any more
            trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        finally:
            self.done(trial)

    def kill_first(self) -> None:
        """The oldest run ends KILLED once its writes are in; its trial is failed."""
        trial, logger, _, reports = self.runs.pop(0)
        try:
            self.tracker.close_run(logger, "KILLED")
        except Exception:
            pass  # its writes failed too: it is closed all the same
        fail(trial, self.tracker, logger.run_id, reports)
        self.done(trial)

    def done(self, trial: optuna.Trial) -> None:
        self.told.add(trial.number)
        if self.trial_done:
            self.trial_done(trial.number)

    def end(self, error: BaseException) -> None:
        """An exception is on its way out: a run handed over before it (its trial trained to
        the end) is closed as it would have been, Ctrl-C or not. A Ctrl-C while they are
        closed ends the rest KILLED, their trials failed."""
        while self.runs:
            try:
                self.close_first()
            except KeyboardInterrupt:
                while self.runs:
                    self.kill_first()
                raise
