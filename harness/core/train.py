"""The lecture's training loop: forward, loss, backward, step; then the every-N-steps work.

Step k is the network after k SGD updates, so step 0 is the untrained network and the loop
measures one step more than it updates. Logging and drawing live in callbacks.
"""

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.core import model as model_lib
from harness.core.config import TrainConfig
from harness.core.data import WineData
from harness.core.runtime import seed_everything

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


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

    @property
    def last_step(self) -> int:
        return len(self.history["train_loss"]) - 1

    @property
    def final(self) -> dict[str, float]:
        return {m: values[-1] for m, values in self.history.items()}


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module) -> tuple[float, float]:
    # The MLP has no dropout or batch norm, so eval mode would change nothing; toggling it
    # every step walks every module and costs more than the forward itself.
    logits = model(x)
    return criterion(logits, y).item(), accuracy(logits, y)


def first_reaching(values: list[float], target: float) -> int | None:
    return next((step for step, v in enumerate(values) if v >= target), None)


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


def train(cfg: TrainConfig, data: WineData, device: torch.device, callbacks: Callbacks = Callbacks()) -> TrainResult:
    generator = seed_everything(cfg.seed)
    model = model_lib.create(cfg, data.n_features, generator, device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
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

        # backward and step: one small move in the error space
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    result.iterations_to_target = first_reaching(result.history["train_accuracy"], cfg.target_accuracy)
    return result
