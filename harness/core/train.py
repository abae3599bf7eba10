"""The lecture's training loop: forward, loss, backward, step; then the every-N-steps work.

Step k is the network after k optimizer steps (SGD in the lecture), so step 0 is the untrained network and the loop
measures one step more than it updates. Logging and drawing live in callbacks. How many steps a
network takes to reach the target is defined here too (`steps_to_target`), for every trainer.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from harness.core import model as model_lib
from harness.core.config import OPTIMIZERS, TrainConfig, target_points, train_size
from harness.core.data import Data
from harness.core.runtime import seed_everything

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
CONVERGENCE = ("iterations_to_target", "iterations_to_target_held")  # logged once per run, when reached


class Callbacks:
    """Hooks the loop calls; the default does nothing."""

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        """After every step's metrics are known; return True to stop training here (a pruner)."""
        return False

    def on_boundary(self, step: int, model: nn.Module, metrics: dict[str, float]) -> None:
        """At steps 0, plot_every, 2*plot_every, ... and the last step."""


@dataclass
class TrainResult:
    history: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    """every metric at steps 0..last_step"""
    diverged: bool = False
    """the loss became non-finite; training stopped at last_step"""
    stopped_early: bool = False
    """a callback asked to stop at last_step"""
    iterations_to_target: int | None = None
    """first step whose train_accuracy reached target_accuracy; None if never"""
    iterations_to_target_held: int | None = None
    """first step from which train_accuracy stays at or above target_accuracy for hold_steps
    steps; None if never"""

    @property
    def last_step(self) -> int:
        return len(self.history["train_loss"]) - 1

    @property
    def final(self) -> dict[str, float]:
        return {m: values[-1] for m, values in self.history.items()}

    def measure(self, cfg: TrainConfig) -> "TrainResult":
        """Set both iterations-to-target values from the history (`steps_to_target`)."""
        (self.iterations_to_target,), (self.iterations_to_target_held,) = steps_to_target(
            np.array(self.history["train_accuracy"], dtype=float).reshape(-1, 1), cfg)
        return self


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module) -> tuple[float, float]:
    # The MLP has no dropout or batch norm, so eval mode would change nothing; toggling it
    # every step walks every module and costs more than the forward itself.
    logits = model(x)
    return criterion(logits, y).item(), accuracy(logits, y)


def steps_to_target(train_accuracy: np.ndarray, cfg: TrainConfig) -> tuple[list[int | None], list[int | None]]:
    """For each column (a network) of `train_accuracy`, shape (steps, K), NaN after a network's
    last step: `iterations_to_target`, the first step k at which it classifies at least
    `target_points(cfg)` of the training points right (train accuracy at or above
    target_accuracy), and `iterations_to_target_held`, the first step k from which it stays there
    for `hold_steps` steps (k .. k + hold_steps - 1, all measured). None where there is none.
    Step k is the network after k optimizer steps (step 0: as initialized). Counted in points, so a
    float32 accuracy and a float64 one of the same network give the same steps."""
    threshold = (target_points(cfg) - 0.5) / train_size(cfg)  # half a point below the target's count
    at = np.nan_to_num(np.asarray(train_accuracy, dtype=np.float64), nan=-1.0) >= threshold
    steps, count = at.shape
    first = np.where(at.any(axis=0), at.argmax(axis=0), -1) if steps else np.full(count, -1)
    if cfg.hold_steps > steps:
        held = np.full(count, -1)
    else:
        ups = np.concatenate([np.zeros((1, count), dtype=np.int64), np.cumsum(at, axis=0)])
        window = ups[cfg.hold_steps:] - ups[:-cfg.hold_steps] == cfg.hold_steps  # (steps - hold_steps + 1, K)
        held = np.where(window.any(axis=0), window.argmax(axis=0), -1)
    return ([int(v) if v >= 0 else None for v in first], [int(v) if v >= 0 else None for v in held])


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """The config's optimizer, by name from torch.optim, with the keys it takes."""
    take = {"sgd": dict(momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay),
            "adam": dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay),
            "rmsprop": dict(alpha=cfg.alpha, eps=cfg.eps, weight_decay=cfg.weight_decay, momentum=cfg.momentum)}
    take["adamw"] = take["adam"]
    return getattr(torch.optim, OPTIMIZERS[cfg.optimizer])(params, lr=cfg.lr, **take[cfg.optimizer])


def record_step(result: TrainResult, step: int, metrics: dict[str, float], callbacks: Callbacks) -> bool:
    """Step `step`'s metrics into the result and to `callbacks.on_step`; whether the run ends
    here. A non-finite loss ends it (diverged; what was logged stays), else a callback that asks
    to stop (stopped early). The loop and the replay of a batch's result
    (harness/experiment.py) end runs by this one rule."""
    for name, value in metrics.items():
        result.history[name].append(value)
    stop = callbacks.on_step(step, metrics)
    if not math.isfinite(metrics["train_loss"]):
        result.diverged = True
    elif stop:
        result.stopped_early = True
    return result.diverged or result.stopped_early


def train(cfg: TrainConfig, data: Data, device: torch.device, callbacks: Callbacks = Callbacks()) -> TrainResult:
    generator = seed_everything(cfg.seed)
    model = model_lib.create(cfg, data.n_features, data.n_classes, generator, device)
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(cfg, model.parameters())
    result = TrainResult()

    for step in range(cfg.iterations + 1):
        # forward and loss on the current weights: these are step k's training metrics
        logits = model(data.x_train)
        loss = criterion(logits, data.y_train)
        val_loss, val_accuracy = evaluate(model, data.x_val, data.y_val, criterion)
        metrics = {"train_loss": loss.item(), "train_accuracy": accuracy(logits, data.y_train),
                   "val_loss": val_loss, "val_accuracy": val_accuracy}
        if record_step(result, step, metrics, callbacks):
            break

        last = step == cfg.iterations
        if step % cfg.plot_every == 0 or last:
            callbacks.on_boundary(step, model, metrics)
        if last:
            break

        # backward and step: one small move in the error space (SGD in the lecture)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return result.measure(cfg)
