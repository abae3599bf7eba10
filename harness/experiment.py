"""One tracked training run: resolve the device, load the data, train, log it all to MLflow."""

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from harness.core import data as data_lib, datasets
from harness.core.config import TrainConfig, flatten
from harness.core.runtime import resolve_device
from harness.core.train import CONVERGENCE, Callbacks, TrainResult, record_step, train
from harness.render.boundary import BoundaryRenderer, renderer_for, title_text
from harness.tracking.tracker import RunLogger, Tracker
from harness.trainers.batched import BatchResult, train_batch
from harness.trainers.registry import DATA, choose


class LoggingCallbacks(Callbacks):
    """Every step's metrics into the run's batch buffer, every boundary image into the run."""

    def __init__(self, logger: RunLogger, renderer: BoundaryRenderer, inner: Callbacks | None = None):
        self.logger = logger
        self.renderer = renderer
        self.inner = inner or Callbacks()

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        self.logger.log_metrics(metrics, step=step)
        return self.inner.on_step(step, metrics)

    def on_boundary(self, step: int, model: nn.Module, metrics: dict[str, float]) -> None:
        image = self.renderer.render(model, step, metrics["train_loss"], metrics["train_accuracy"])
        self.logger.log_image(image, key="boundary", step=step)
        self.inner.on_boundary(step, model, metrics)


@dataclass
class Workspace:
    """What runs with the same data settings share: the device, the tensors, the renderer."""
    device: torch.device
    data: data_lib.Data
    renderer: BoundaryRenderer
    key: tuple

    @staticmethod
    def data_key(cfg: TrainConfig) -> tuple:
        return (*(str(getattr(cfg, key)) for key in DATA), cfg.image_size, cfg.device, cfg.trainer == "torch")

    @classmethod
    def for_config(cls, cfg: TrainConfig, reuse: "Workspace | None" = None) -> "Workspace":
        key = cls.data_key(cfg)
        if reuse is not None and reuse.key == key:
            return reuse
        device = resolve_device(cfg.device)
        data = data_lib.load(cfg, device)
        grid_classes = None
        if device.type == "cpu" and cfg.trainer != "torch":  # the C grid forward draws one hidden layer's regions
            from harness.trainers.fused_cpu import grid_classes
        return cls(device, data, renderer_for(data, cfg.image_size, device, grid_classes), key)


@dataclass
class RunSpec:
    """How a run is named, nested and tagged, and what its caller hears of it."""
    run_name: str | None = None
    """None: `default_run_name`"""
    parent_run_id: str | None = None
    tags: dict[str, object] = field(default_factory=dict)
    on_start: Callable[[str], None] | None = None
    """called with the run's id once the run exists (the sweep records it on its trial)"""
    end_tags: Callable[[TrainResult], dict[str, object]] | None = None
    """tags set from the result before the run closes (the sweep's trial state)"""


Drawn = list[tuple[int, list[torch.Tensor], str]]
"""a model's boundaries to draw: (step, its weights at that step, the image's title)"""


def train_together(cfgs: list[TrainConfig], workspace: Workspace) -> tuple[BatchResult, list[Drawn]]:
    """Train models of one architecture and data as one batch (harness/trainers/batched.py),
    keeping the weights their boundary images show: drawn later (`draw`), not during training."""
    drawn: list[Drawn] = [[] for _ in cfgs]

    def keep(step, params, models, metrics):
        for j, m in enumerate(models.tolist()):
            title = title_text(step, float(metrics[0, j]), float(metrics[1, j]))
            drawn[m].append((step, [p[m].clone() for p in params], title))

    return train_batch(cfgs, workspace.data, workspace.device, keep), drawn


def draw(workspace: Workspace, kept: Drawn, activation_name: str = "relu") -> list[tuple[int, object]]:
    """The boundary images of one model's kept weights, as (step, image), in one batched forward."""
    steps, weights, titles = zip(*kept) if kept else ((), (), ())
    return list(zip(steps, workspace.renderer.render_stacked(weights, titles, activation_name)))


@dataclass
class RunOutcome:
    run_id: str
    result: TrainResult
    device: torch.device


def default_run_name(cfg: TrainConfig) -> str:
    return cfg.run_name or f"{cfg.experiment}__seed{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def run_params(cfg: TrainConfig, device: torch.device) -> dict[str, str]:
    """Every config key, what ran, and for a CSV dataset its file's SHA-256 (its path is the one given)."""
    csv_file = datasets.csv_path(cfg.dataset)
    return {**flatten(cfg), "device_resolved": str(device), "torch_version": torch.__version__,
            **({"dataset_sha256": hashlib.sha256(Path(csv_file).read_bytes()).hexdigest()} if csv_file else {})}


def outcome_tags(result: TrainResult) -> dict[str, str]:
    return {"diverged": str(result.diverged).lower(),
            "reached_target": str(result.iterations_to_target is not None).lower()}


def start_trained_run(cfg: TrainConfig, tracker: Tracker, device: torch.device, result: TrainResult,
                      images: list[tuple[int, object]], spec: RunSpec,
                      callbacks: Callbacks | None = None) -> tuple[RunLogger, TrainResult]:
    """Log a run that was trained elsewhere (in a batch) exactly as `run_training` logs one (the
    same params, every step's metrics, the boundary images, the outcome tags) and hand its
    writes over without waiting for them: `tracker.close_run(logger, "FINISHED")` ends it once
    they are in. The steps are walked again as the loop walks them (`replay`), so `callbacks`
    (a pruner) may end the run earlier than its training did; the result as logged is returned.
    A failure on the way closes the run (KILLED on Ctrl-C, else FAILED)."""
    logger = tracker.open_run(cfg.experiment, spec.run_name or default_run_name(cfg), tags=spec.tags,
                              parent_run_id=spec.parent_run_id)
    try:
        if spec.on_start:
            spec.on_start(logger.run_id)
        logger.log_params(run_params(cfg, device), later=True)
        result = replay(cfg, result, dict(images), logger, callbacks or Callbacks())
        finish_run(logger, result, spec.end_tags, later=True)
        logger.hand_over()
    except BaseException as e:
        tracker.close_run(logger, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    return logger, result


def replay(cfg: TrainConfig, result: TrainResult, images: dict[int, object], logger: RunLogger,
           callbacks: Callbacks) -> TrainResult:
    """`train.train`'s loop walked again over a finished result: each step's metrics logged and
    given to `callbacks.on_step` (which may stop it there, as in the loop), each image logged
    at its step. Returns the result up to where the loop would have stopped."""
    out = TrainResult()
    for step in range(result.last_step + 1):
        metrics = {m: values[step] for m, values in result.history.items()}
        logger.log_metrics(metrics, step=step)
        if record_step(out, step, metrics, callbacks):
            break
        if step in images:
            logger.log_image(images[step], key="boundary", step=step)
    return out.measure(cfg)


def record_trained_run(cfg: TrainConfig, tracker: Tracker, device: torch.device, result: TrainResult,
                       images: list[tuple[int, object]], spec: RunSpec, callbacks: Callbacks | None = None
                       ) -> tuple[str, TrainResult]:
    """`start_trained_run`, then the run closed once its writes are in; its id and the result as logged."""
    logger, result = start_trained_run(cfg, tracker, device, result, images, spec, callbacks)
    tracker.close_run(logger, "FINISHED")
    return logger.run_id, result


def finish_run(logger: RunLogger, result: TrainResult, end_tags=None, later: bool = False) -> None:
    logger.log_metrics({name: value for name in CONVERGENCE if (value := getattr(result, name)) is not None})
    logger.set_tags({**outcome_tags(result), **(end_tags(result) if end_tags else {})}, later=later)


def run_training(cfg: TrainConfig, tracker: Tracker, workspace: Workspace | None = None,
                 spec: RunSpec | None = None, callbacks: Callbacks | None = None) -> RunOutcome:
    """Train `cfg` as one MLflow run; the run is closed whatever happens. With `trainer = auto`
    it is the lecture's loop, which logs each step and image as it trains (a run that fills as
    you watch, its images streamed to the store however long it runs); a named trainer
    (harness/trainers/registry.py) trains it otherwise, and its run is logged as the loop would
    have logged it. The run's `trainer` tag says which."""
    workspace = workspace or Workspace.for_config(cfg)
    spec = spec or RunSpec()
    trainer = "torch" if cfg.trainer == "auto" else choose([cfg], workspace.device, drawing=True).name
    spec = replace(spec, tags={**spec.tags, "trainer": trainer})
    if trainer != "torch":
        batch, drawn = train_together([cfg], workspace)
        run_id, result = record_trained_run(cfg, tracker, workspace.device, batch.result(0, cfg),
                                            draw(workspace, drawn[0], cfg.activation), spec, callbacks)
        return RunOutcome(run_id, result, workspace.device)
    with tracker.run(cfg.experiment, spec.run_name or default_run_name(cfg),
                     params=run_params(cfg, workspace.device), tags=spec.tags,
                     parent_run_id=spec.parent_run_id) as logger:
        if spec.on_start:
            spec.on_start(logger.run_id)
        result = train(cfg, workspace.data, workspace.device,
                       LoggingCallbacks(logger, workspace.renderer, callbacks))
        finish_run(logger, result, spec.end_tags)
    return RunOutcome(logger.run_id, result, workspace.device)
