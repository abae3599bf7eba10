"""Run or continue a study: its parent MLflow run, its trial budget, its workers, its summary.

Several workers, on one machine or many, can run the same study at once. The parent run is
created once, under the study's lock, and each worker marks it RUNNING when it starts and ends
it FINISHED (after writing the summary) when it stops; with a total budget (`make worker`) a
worker stops only once no trial of the study is running anywhere, so the last one to stop
leaves the parent FINISHED with the final summary.
"""

import os
import socket
import time
import zlib

import optuna
from optuna.trial import TrialState

from harness.tracking import store_check

from harness.study import storage as study_storage
from harness.core.config import ConfigError
from harness.errors import NothingCompleted, ServiceError
from harness.core.runtime import resolve_device
from harness.study.config import Sweep
from harness.progress import bar as progress_bar
from harness.study.storage import FAILURE_ATTR, MEASURE_ATTR, PARENT_RUN_ATTR, SWEEP_ID_ATTR
from harness.study.trial import Job
from harness.study.worker import work
from harness.trainers.registry import choose
from harness.study.summary import SweepSummary, draw_figures, summarize
from harness.tracking.tracker import Tracker, tracking_uri
from harness.study.pool import WorkerPool

COMMANDS_ATTR = "sweep_commands"  # how many sweep commands have started on the study
WORKED = (TrialState.COMPLETE, TrialState.PRUNED)  # a trial that trained (a pruned one was stopped on purpose)


def sweep_params(sweep: Sweep) -> dict[str, object]:
    """The parent run's params: how the study searches, and what it holds fixed."""
    s = sweep.settings
    space = {f"space.{p.name}": (p.choices if p.choices is not None else f"[{p.low}, {p.high}]" + (" log" if p.log else ""))
             for p in s.space.values()}
    fixed = {f"fixed.{k}": v for k, v in sweep.fixed.items()}
    return {"sampler": s.sampler, "sampler_seed": s.sampler_seed, "objective": s.objective,
            "pruner": s.pruner, **space, **fixed}


def open_study(sweep: Sweep, study_name: str, storage_url: str, tracker: Tracker):
    """Create the study and its parent run, or load both to continue them. Under the study's lock:
    workers starting together on several machines make one parent run."""
    settings = sweep.settings
    storage = study_storage.open_storage(storage_url, settings, tracker.uri)
    with study_storage.study_lock(storage, study_name):
        study = optuna.create_study(study_name=study_name, storage=storage, directions=settings.directions,
                                    load_if_exists=True)
        have = [d.name.lower() for d in study.directions]
        if have != settings.directions:
            raise ConfigError(f"sweep.objective: study '{study_name}' was created to {', '.join(have)}; "
                              f"this file asks to {', '.join(settings.directions)}: choose another study name")
        check_measure(study, sweep)
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)
        parent = tracker.resume_run(run_id) if run_id else None  # None: deleted in the UI, a new one is made
        if run_id and parent is None and not tracker.run_exists(run_id):
            raise ConfigError(f"study '{study_name}': its parent run {run_id} is not in the tracking store "
                              f"{tracker.uri}; to start afresh, choose another study (STUDY=name)")
        if parent is None:
            parent = tracker.open_run(sweep.base.experiment, study_name, params=sweep_params(sweep),
                                      tags={"optuna.study_name": study_name})
            study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
    return study, storage, parent


def check_measure(study: optuna.Study, sweep: Sweep) -> None:
    """A study's trials are measured alike: the objectives (Optuna's figures name their axes by
    them, summary.py), the target and the hold are kept on the study when it is made, and a file
    that asks for others to continue it is refused."""
    measure = {"objectives": sweep.settings.objectives, "target_accuracy": sweep.base.target_accuracy,
               "hold_steps": sweep.base.hold_steps}
    kept = study.user_attrs.get(MEASURE_ATTR)
    if kept is None:
        study.set_user_attr(MEASURE_ATTR, measure)
        return
    for key, value in measure.items():
        if key in kept and kept[key] != value:
            raise ConfigError(f"{'sweep.objective' if key == 'objectives' else key}: study '{study.study_name}' measures "
                              f"its trials by {kept[key]!r}, this file by {value!r}: choose another study name")


def close_stray_runs(study: optuna.Study, tracker: Tracker, parent_run_id: str) -> None:
    """End FAILED the child runs still RUNNING whose trial is finished: no worker will close them.
    A server that crashed after creating a run but before answering gets the request again and
    makes a second run; a dead worker's run stays open when the server was down as it was failed."""
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    for run_id, number in tracker.running_children(parent_run_id).items():
        if number.isdigit() and int(number) in finished:
            tracker.end_run(run_id, "FAILED", {"failure": "left running by a lost server answer or a dead worker"})


def run_sweep(sweep: Sweep, trials: int | None = None, study_name: str | None = None,
              workers: int | None = None, progress: bool = True, total: int | None = None) -> SweepSummary:
    """Add `trials` trials to the study (created if new), or with `total`, work on it until it
    has that many in all, and return its summary."""
    settings = sweep.settings
    trials = settings.trials if trials is None else trials
    if total is not None and total < 0:
        raise ConfigError(f"total: must be >= 0, got {total}")
    study_name = study_name or settings.study
    workers = settings.workers if workers is None else workers
    if trials < 0:
        raise ConfigError(f"trials: must be >= 0, got {trials}")
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pool = WorkerPool(workers, sweep) if workers > 1 else None  # forked before any database is open
    parent, status, nothing_completed = None, "FAILED", None
    try:
        device = resolve_device(sweep.base.device)  # an unavailable device fails here, before any trial
        for cfg in sweep.corners():  # and a named trainer that does not train every trial the space can make
            choose([cfg], device, drawing=True)
        storage_url = study_storage.storage_url()
        store_check.check_writable(tracking_uri(), storage_url)
        store_check.check_sweep_stores(tracking_uri(), storage_url, study_name)
        tracker = Tracker(tracking_uri())
        tracker.check()  # a wrong tracking URL fails here, in one line; a wrong storage URL just below
        study, storage, parent = open_study(sweep, study_name, storage_url, tracker)
        with study_storage.study_lock(storage, study_name):
            optuna.storages.fail_stale_trials(study)
            existing = study.get_trials(deepcopy=False)
            started = study.user_attrs.get(COMMANDS_ATTR, 0)  # sweep commands before this one
            study.set_user_attr(COMMANDS_ATTR, started + 1)
        # this command's trials are marked with its id: started together on one study, commands
        # add exactly the sum of their trials (study_storage.Budget)
        sweep_id = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        budget = study_storage.Budget(trials, sweep_id, total)
        # a fresh sampler seed per worker and per command, all derived from sampler_seed; commands
        # or workers on several machines started together would otherwise draw the same points
        shared = zlib.crc32(sweep_id.encode()) if total is not None else 0
        jobs = [Job(sweep, study_name, storage_url, tracker.uri, parent.run_id, budget,
                    sampler_seed=(settings.sampler_seed + 7919 * len(existing) + 104729 * started + shared + i) % 2**32,
                    wait_for_others=total is not None, workers=workers)
                for i in range(workers)]
        with progress_bar(max(budget.left(existing), 0), f"study {study_name}", "trial", shown=progress) as bar:
            if pool:
                pool.run(jobs, study, bar)
            else:
                work(jobs[0], on_trial_done=lambda number: bar.update(1))
        ended = study.get_trials(deepcopy=False)
        nothing_completed = not_one_completed(ended, sweep_id)  # this command's exit code
        # the parent is the study's, shared with other commands and machines: FAILED only when
        # this command's trials all failed and not one trial of the study has worked
        worked = any(t.state in WORKED for t in ended)
        status = "FAILED" if nothing_completed and not worked else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except ServiceError:
        status = None  # the tracking server is gone: the parent stays as it is for the next worker
        raise
    finally:
        try:
            if parent is not None and status is not None:
                try:
                    if status == "FINISHED":
                        close_stray_runs(study, tracker, parent.run_id)
                    summary = summarize(study, settings.objectives, parent,
                                        tracker.experiment_url(sweep.base.experiment), tracker.ui_command(),
                                        with_figures=status == "FINISHED", draw=pool.draw if pool else draw_figures,
                                        run_link=tracker.run_url(parent.run_id))
                finally:
                    tracker.close_run(parent, status)
        finally:
            if pool:
                pool.cancel()  # releases the workers still waiting for a job or a figure to draw
    if nothing_completed:
        raise NothingCompleted(nothing_completed)
    return summary


def not_one_completed(trials: list, sweep_id: str) -> str | None:
    """Why this command's sweep did nothing, when it ran trials (among the study's `trials`) and
    not one completed or was pruned; None otherwise."""
    own = [t for t in trials if t.user_attrs.get(SWEEP_ID_ATTR) == sweep_id]
    if not own or any(t.state in WORKED for t in own):
        return None
    first = min(own, key=lambda t: t.number)
    return (f"not one of this sweep's {len(own)} trials completed; the first, trial {first.number}: "
            f"{first.user_attrs.get(FAILURE_ATTR, 'no error was recorded')}")
