"""A sweep's worker: claim trials from the shared study until the budget is spent, train them
(as one batched computation where they share an architecture, harness/trainers/), log each as a
nested MLflow run and tell Optuna how it went. The trials' trainer is the one their config
chooses (harness/trainers/registry.py): a kernel's result is replayed step by step through the
lecture loop's callbacks (`run_trials`); a lone trial that only the torch path covers trains in
`make train`'s loop, a batch of them in the batched torch ops. Workers, in this process or in
others, share the study.
"""

import sys
import time

import optuna
import torch
from optuna.trial import TrialState

from harness.study import storage as study_storage
from harness.errors import ServiceError
from harness.experiment import Workspace, draw, start_trained_run, train_together
from harness.trainers.batched import batch_key
from harness.trainers.registry import choose
from harness.study.config import PRUNERS, Sweep, SweepConfig
from harness.tracking.store_check import store_fault, store_folders
from harness.study.optuna_fast import trial_id
from harness.tracking.tracker import Tracker
from harness.tracking.writer_process import WriterProcess
from harness.study.open_runs import OpenRuns
from harness.study.trial import Job, ReportToTrial, fail, failure_attrs, keep_reports, run_trial, suggest_config, trial_run, worker_name


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


def run_trials(trials: list[optuna.Trial], job: Job, tracker: Tracker, workspace: Workspace | None,
               open_runs: OpenRuns) -> Workspace:
    """Train the claimed trials, log each as a child run of the study's parent run, and tell
    Optuna how each went (through `open_runs`, once its writes are in).

    Trials train together, as one batched computation (harness/trainers/batched.py), then each run is
    logged by walking its steps again as the loop does (`replay`): the pruner is consulted at
    every report, and a pruned run ends where the loop would have stopped it. A lone trial that
    no compiled kernel trains (a GPU, several hidden layers) trains in the lecture's loop instead.
    """
    try:
        cfgs = [suggest_config(trial, job) for trial in trials]
        if len(trials) == 1:
            workspace = Workspace.for_config(cfgs[0], reuse=workspace)
            if choose(cfgs[:1], workspace.device, drawing=True).name == "torch":
                open_runs.close_all()
                run_trial(trials[0], cfgs[0], job, tracker, workspace)
                open_runs.done(trials[0])
                return workspace
        groups: dict[tuple, list[int]] = {}
        for i, cfg in enumerate(cfgs):  # trials that cannot share a batch train in separate ones
            groups.setdefault((*batch_key(cfg), *Workspace.data_key(cfg)), []).append(i)
        for indices in groups.values():
            workspace = Workspace.for_config(cfgs[indices[0]], reuse=workspace)
            batch, drawn = train_together([cfgs[i] for i in indices], workspace)
            for j, i in enumerate(indices):
                trial, cfg = trials[i], cfgs[i]
                if job.sweep.settings.pruner != "none":  # the pruner compares with the trials before
                    open_runs.close_all()
                run_ids, reports = [], ReportToTrial.for_job(trial, job, cfg)
                try:
                    # drawn here, not during training: while the writer writes the trial before
                    images, drawn[j] = draw(workspace, drawn[j], cfg.activation), []
                    logger, result = start_trained_run(
                        cfg, tracker, workspace.device, batch.result(j, cfg), images,
                        trial_run(job, trial, run_ids, trainer=batch.trainer), callbacks=reports)
                except ServiceError:
                    keep_reports(trial, reports.values)
                    raise
                except BaseException:
                    fail(trial, tracker, run_ids[0] if run_ids else None, reports.values)
                    open_runs.done(trial)
                    raise
                open_runs.add(trial, logger, result, reports.values)
    except ServiceError:
        raise  # as in run_trial: the heartbeat check fails and retries the trials
    except BaseException as e:
        open_runs.end(e)
        for trial in trials:
            if trial.number not in open_runs.told:
                keep_reports(trial, None, failure_attrs())
                trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                open_runs.done(trial)
        raise
    return workspace


def load_study(job: Job, storage) -> optuna.Study:
    return optuna.load_study(study_name=job.study_name, storage=storage,
                             sampler=make_sampler(job.sweep.settings, job.sampler_seed),
                             pruner=make_pruner(job.sweep.settings.pruner))


def work(job: Job, on_trial_done=None, workspace: Workspace | None = None) -> None:
    """Claim and run trials until the budget is spent. A failing trial is FAILED and work goes on.
    `workspace`: one made beforehand (`prepare_workspace`), used where the trials' data match it."""
    # The network is tiny: torch's intra-op threads only fight the MLflow writes (and the other
    # workers) for the cores, which slows each step several times over.
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage.open_storage(job.storage_url, job.sweep.settings, job.tracking_uri)
    study = load_study(job, storage)
    # A lone worker on a local store hands its runs' writes to a writer process on the spare
    # core, and trains, draws and replays the next run meanwhile (`OpenRuns`). Several workers
    # already fill the cores: each keeps a writer thread.
    tracker = Tracker(job.tracking_uri, writer_process=job.workers == 1)
    try:
        claim_and_run(job, study, storage, tracker, OpenRuns(job, tracker, on_trial_done), workspace)
    finally:
        tracker.close()


def prepare_workspace(sweep: Sweep) -> Workspace | None:
    """The data and the renderer for the sweep's fixed settings, made by a worker process while
    the sweep's process opens the study; None where they cannot be (the trial says why)."""
    torch.set_num_threads(1)  # as in `work`
    try:
        return Workspace.for_config(sweep.base)
    except Exception:
        return None


def claim_and_run(job: Job, study: optuna.Study, storage, tracker: Tracker, open_runs: OpenRuns,
                  workspace: Workspace | None = None) -> None:
    batch_size = job.sweep.settings.batch_size
    try:
        while True:
            trials = study_storage.claim_trials(study, storage, job.budget, batch_size, job.workers,
                                                {"sampler_seed": job.sampler_seed, "worker": worker_name()})
            if not trials:
                open_runs.beat(storage)
                open_runs.close_all()
                if job.wait_for_others and study_storage.others_running(study):
                    time.sleep(job.sweep.settings.heartbeat_interval)  # a dead worker's trial comes back as a retry
                    continue
                return
            open_runs.beat(storage)
            beating = [trial_id(t) for t in trials] + open_runs.trial_ids()
            with study_storage.heartbeat(storage, beating, job.sweep.settings.heartbeat_interval):
                try:
                    workspace = run_trials(trials, job, tracker, workspace, open_runs)
                    if not isinstance(tracker.writer, WriterProcess):
                        open_runs.close_all()  # a thread's writes do not run beside the next claim's
                except (KeyboardInterrupt, ServiceError):
                    raise
                except Exception as e:  # the trials are FAILED on both sides; the sweep goes on
                    if store_fault(e, store_folders(job.tracking_uri, job.storage_url)):
                        raise  # a full disk or a read-only store: every next trial would fail the same way
                    numbers = ", ".join(str(t.number) for t in trials)
                    print(f"trial {numbers} failed: {type(e).__name__}: {e}", file=sys.stderr)
    except ServiceError:
        raise  # nothing can be closed: the heartbeat check fails and retries the open trials
    except BaseException as e:  # Ctrl-C while claiming, a database gone: close what is open
        open_runs.end(e)
        raise
