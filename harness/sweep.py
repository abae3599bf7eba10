"""`make sweep`: an Optuna study whose every trial is a nested MLflow run.

The objective is Optuna's usual shape: suggest the parameters, call the same training code as
`make train`, report intermediate values, return one number (or one per objective). Workers,
in this process or in others, claim trials from the shared study until the budget is spent.
"""

import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from harness import study_storage
from harness.config import ConfigError
from harness.experiment import Workspace, run_training
from harness.study_config import PRUNERS, Sweep, SweepConfig
from harness.study_storage import PARENT_RUN_ATTR, RUN_ID_ATTR
from harness.tracking import Tracker
from harness.train import Callbacks, TrainResult


def make_sampler(settings: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar keeps parallel workers from proposing the same point
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    assert name in PRUNERS
    return {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
            "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
            "hyperband": optuna.pruners.HyperbandPruner}[name]()


def objective_values(sweep: Sweep, result: TrainResult) -> list[float]:
    """One number per objective; an unreached target counts as one step past the longest run."""
    values = []
    for name in sweep.settings.objectives:
        if name == "iterations_to_target":
            reached = result.iterations_to_target
            values.append(float(reached if reached is not None else sweep.max_iterations + 1))
        else:
            values.append(result.final[name])
    return values


class ReportToTrial(Callbacks):
    """Report the objective every `every` steps; ask to stop when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str | None, every: int):
        self.trial, self.metric, self.every = trial, metric, every

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        if self.metric is None or step % self.every or step == 0:
            return False
        self.trial.report(metrics[self.metric], step)
        return self.trial.should_prune()


def intermediate_metric(settings: SweepConfig) -> str | None:
    """What the trial reports along the way: the objective, or val_loss; None when multi-objective."""
    if len(settings.objectives) > 1:
        return None
    return settings.objective if settings.objective != "iterations_to_target" else "val_loss"


@dataclass
class Job:
    """Everything a worker needs; picklable, so worker processes get the same job."""
    sweep: Sweep
    study_name: str
    storage_url: str
    tracking_uri: str
    parent_run_id: str
    target: int
    sampler_seed: int
    single_thread: bool = False


def run_trial(trial: optuna.Trial, job: Job, tracker: Tracker, workspace: Workspace | None) -> Workspace:
    """Train one trial as a child run of the study's parent run, and tell Optuna how it went."""
    settings = job.sweep.settings
    values = {name: param.suggest(trial) for name, param in settings.space.items()}
    cfg = job.sweep.trial_config(values)
    trial.set_user_attr("sampler_seed", job.sampler_seed)
    workspace = Workspace.for_config(cfg, reuse=workspace)

    def state_of(result: TrainResult) -> str:
        return "PRUNED" if result.diverged or result.stopped_early else "COMPLETE"

    run_ids = []
    try:
        outcome = run_training(
            cfg, tracker, workspace, run_name=f"trial-{trial.number}", parent_run_id=job.parent_run_id,
            tags={"optuna.study_name": job.study_name, "optuna.trial_number": trial.number},
            callbacks=ReportToTrial(trial, intermediate_metric(settings), cfg.plot_every),
            on_start=lambda run_id: (run_ids.append(run_id), trial.set_user_attr(RUN_ID_ATTR, run_id)),
            end_tags=lambda result: {"optuna.trial_state": state_of(result)})
    except BaseException:
        # the run is already closed (FAILED, or KILLED on Ctrl-C); say what Optuna makes of it
        if run_ids:
            tracker.set_tags(run_ids[0], {"optuna.trial_state": "FAILED"})
        trial.study.tell(trial, state=TrialState.FAIL)
        raise
    if state_of(outcome.result) == "PRUNED":
        trial.set_user_attr("diverged", outcome.result.diverged)
        trial.study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr("reached_target", outcome.result.iterations_to_target is not None)
        trial.study.tell(trial, objective_values(job.sweep, outcome.result))
    return workspace


def load_study(job: Job, storage) -> optuna.Study:
    return optuna.load_study(study_name=job.study_name, storage=storage,
                             sampler=make_sampler(job.sweep.settings, job.sampler_seed),
                             pruner=make_pruner(job.sweep.settings.pruner))


def work(job: Job, on_trial_done=None) -> None:
    """Claim and run trials until the budget is spent. A failing trial is FAILED and work goes on."""
    if job.single_thread:
        torch.set_num_threads(1)  # one core per worker process
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage.open_storage(job.storage_url, job.sweep.settings, job.tracking_uri)
    study = load_study(job, storage)
    tracker = Tracker(job.tracking_uri)
    workspace = None
    while (trial := study_storage.claim_trial(study, job.target, job.storage_url)) is not None:
        with study_storage.heartbeat(storage, trial._trial_id, job.sweep.settings.heartbeat_interval):
            try:
                workspace = run_trial(trial, job, tracker, workspace)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # the trial is FAILED on both sides; the sweep goes on
                print(f"trial {trial.number} failed: {type(e).__name__}: {e}", file=sys.stderr)
        if on_trial_done:
            on_trial_done(trial.number)


def worker_main(job: Job) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        work(job)
    except KeyboardInterrupt:
        sys.exit(130)


def sweep_params(sweep: Sweep) -> dict[str, object]:
    """The parent run's params: how the study searches, and what it holds fixed."""
    s = sweep.settings
    space = {f"space.{p.name}": (p.choices if p.choices is not None else f"[{p.low}, {p.high}]" + (" log" if p.log else ""))
             for p in s.space.values()}
    fixed = {f"fixed.{k}": v for k, v in sweep.fixed.items()}
    return {"sampler": s.sampler, "sampler_seed": s.sampler_seed, "objective": s.objective,
            "pruner": s.pruner, **space, **fixed}


def open_study(sweep: Sweep, study_name: str, storage_url: str, tracker: Tracker):
    """Create the study and its parent run, or load both to continue them."""
    settings = sweep.settings
    storage = study_storage.open_storage(storage_url, settings, tracker.uri)
    study = optuna.create_study(study_name=study_name, storage=storage, directions=settings.directions,
                                load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != settings.directions:
        raise ConfigError(f"sweep.objective: study '{study_name}' was created to {', '.join(have)}; "
                          f"this file asks to {', '.join(settings.directions)}: choose another study name")
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    parent = tracker.resume_run(run_id) if run_id else None
    if parent is None:
        parent = tracker.open_run(sweep.base.experiment, study_name, params=sweep_params(sweep),
                                  tags={"optuna.study_name": study_name})
        study.set_user_attr(PARENT_RUN_ATTR, parent.run_id)
    return study, parent


def finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())


def run_processes(jobs: list[Job], study: optuna.Study, progress) -> None:
    """One process a job; forward Ctrl-C to them and wait for them to close their runs."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker_main, args=(job,), name=f"sweep-worker-{i}")
                 for i, job in enumerate(jobs)]
    for p in processes:
        p.start()
    start = finished_count(study)
    try:
        while any(p.is_alive() for p in processes):
            progress.n = finished_count(study) - start
            progress.refresh()
            time.sleep(0.5)
    except KeyboardInterrupt:
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in processes:
            p.join(60)
        raise
    progress.n = finished_count(study) - start
    progress.refresh()
    dead = [p.name for p in processes if p.exitcode not in (0, None)]
    if dead:
        print(f"workers that did not end cleanly: {', '.join(dead)}; their trials are retried by the next sweep",
              file=sys.stderr)


def run_sweep(sweep: Sweep, trials: int | None = None, study_name: str | None = None,
              workers: int | None = None, progress: bool = True):
    """Add `trials` trials to the study (created if new) and return its summary."""
    from tqdm import tqdm

    from harness.sweep_summary import summarize
    from harness.tracking import tracking_uri

    settings = sweep.settings
    trials = settings.trials if trials is None else trials
    study_name = study_name or settings.study
    workers = workers or settings.workers
    if trials < 0 or workers < 1:
        raise ConfigError(f"trials must be >= 0 and workers >= 1, got trials={trials} workers={workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    Workspace.for_config(sweep.base)  # an unavailable device fails here, before any trial
    tracker = Tracker(tracking_uri())
    storage_url = study_storage.storage_url()
    study, parent = open_study(sweep, study_name, storage_url, tracker)

    with study_storage.budget_lock(storage_url):
        optuna.storages.fail_stale_trials(study)
        existing = study.get_trials(deepcopy=False)
        target = study_storage.budget_count(existing) + trials
    # a fresh sampler seed per worker and per continuation, all derived from sampler_seed
    jobs = [Job(sweep, study_name, storage_url, tracker.uri, parent.run_id, target,
                sampler_seed=settings.sampler_seed + 7919 * len(existing) + i, single_thread=workers > 1)
            for i in range(workers)]
    bar = tqdm(total=trials, desc=f"study {study_name}", unit="trial", disable=not progress)
    status = "FAILED"
    try:
        if workers == 1:
            work(jobs[0], on_trial_done=lambda number: bar.update(1))
        else:
            run_processes(jobs, study, bar)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        try:
            summary = summarize(study, settings.objectives, parent, tracker.experiment_url(sweep.base.experiment),
                                with_figures=status == "FINISHED")
        finally:
            tracker.close_run(parent, status)
    return summary
