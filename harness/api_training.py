"""The training the Python API (harness/api.py) does where no command does it: the boundary
images kept for a notebook, and a sweep without tracking.

`sweep(tracking=False)` makes the study `make sweep` would make of the file, in memory: the
same sampler and seed (those of the first command on a new study), pruner, directions and
search space. Each trial's config is suggested by the space's own `Param`s, trained by the
trainer a seed scan would choose (harness/trainers/registry.py; nothing is drawn), walked step
by step through the sweep's `ReportToTrial` as the tracked sweep replays it, and told by the
same rules (`state_of`, `objective_values`, harness/study/trial.py). On the CPU with a compiler
both train in the C kernel, so their trials and values are the same.
"""

import optuna
from optuna.trial import TrialState

from harness.api_results import SweepResult
from harness.core.config import ConfigError, TrainConfig
from harness.core.runtime import resolve_device
from harness.core.train import Callbacks, TrainResult, record_step
from harness.experiment import Workspace
from harness.study.config import Sweep
from harness.study.trial import ReportToTrial, intermediate_metric, objective_values, state_of
from harness.study.worker import make_pruner, make_sampler
from harness.trainers.batched import train_batch
from harness.trainers.registry import choose


class KeepBoundaries(Callbacks):
    """Keep the boundary image of every plot step, drawn as the run logs it; `inner`'s hooks after."""

    def __init__(self, renderer, inner: Callbacks):
        self.renderer, self.inner = renderer, inner
        self.images: dict[int, object] = {}

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        return self.inner.on_step(step, metrics)

    def on_boundary(self, step, model, metrics: dict[str, float]) -> None:
        self.images[step] = self.renderer.render(model, step, metrics["train_loss"], metrics["train_accuracy"])
        self.inner.on_boundary(step, model, metrics)


def walk(cfg: TrainConfig, result: TrainResult, callbacks: Callbacks) -> TrainResult:
    """A finished result's steps told to `callbacks` as the loop tells them (experiment.replay
    without a run), so a pruner may stop it earlier; the result up to where it stopped."""
    out = TrainResult()
    for step in range(result.last_step + 1):
        if record_step(out, step, {name: values[step] for name, values in result.history.items()}, callbacks):
            break
    return out.measure(cfg)


def sweep_in_memory(sweep: Sweep, trials: int, study_name: str) -> SweepResult:
    """Run `trials` trials of `sweep` in a new in-memory study; a trial that raises is FAILED
    and its error raised."""
    if trials < 0:
        raise ConfigError(f"trials: must be >= 0, got {trials}")
    device = resolve_device(sweep.base.device)
    for cfg in sweep.corners():  # a named trainer that does not train every trial: refused as make sweep refuses it
        choose([cfg], device, drawing=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # as make sweep: no line per trial; the caller's, after
    try:
        return in_memory_trials(sweep, trials, study_name)
    finally:
        optuna.logging.set_verbosity(verbosity)


def in_memory_trials(sweep: Sweep, trials: int, study_name: str) -> SweepResult:
    settings = sweep.settings
    study = optuna.create_study(study_name=study_name, directions=settings.directions,
                                sampler=make_sampler(settings, settings.sampler_seed),
                                pruner=make_pruner(settings.pruner))
    metric, workspace, curves = intermediate_metric(settings), None, {}
    for _ in range(trials):
        trial = study.ask()
        try:
            cfg = sweep.trial_config({name: param.suggest(trial) for name, param in settings.space.items()})
            workspace = Workspace.for_config(cfg, reuse=workspace)
            trained = train_batch([cfg], workspace.data, workspace.device).result(0, cfg)
            result = walk(cfg, trained, ReportToTrial(trial, metric, cfg.plot_every))
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        curves[trial.number] = result.history
        if state_of(result) == "PRUNED":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, objective_values(sweep, result))
    return SweepResult.of_study(study, settings.objectives, curves)
