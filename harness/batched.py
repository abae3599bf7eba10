"""Many initializations trained as one computation, with a leading model dimension K.

One wine model is so small that training it alone is all Python and kernel launches. Here K
models (each with its own seed, init, learning rate, momentum and iteration count, sharing the
architecture and the data) are stacked: every layer is one batched matmul over the K models,
the loss is the sum of the K models' losses (so each model gets exactly its own gradient), and
SGD is applied per model. Model k follows the curve that `train.train` gives for its config.

Nothing leaves the device until the end: a model that diverges or reaches its iteration count
is masked out (its weights stop moving, its metrics stop counting), without a sync per step.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from harness import model as model_lib
from harness.config import TrainConfig
from harness.data import WineData
from harness.runtime import init_generator
from harness.train import METRICS, TrainResult, first_reaching


@dataclass
class BatchResult:
    history: dict[str, np.ndarray]
    """every metric, shape (max steps + 1, K); NaN past a model's last_step"""
    last_step: np.ndarray
    """(K,) the last step each model measured"""
    diverged: np.ndarray
    """(K,) the loss became non-finite at last_step"""

    def result(self, k: int, target_accuracy: float) -> TrainResult:
        """Model k's outcome, in the same form as the single-model loop returns it."""
        steps = slice(0, int(self.last_step[k]) + 1)
        out = TrainResult(history={m: self.history[m][steps, k].tolist() for m in METRICS},
                          diverged=bool(self.diverged[k]))
        out.iterations_to_target = first_reaching(out.history["train_accuracy"], target_accuracy)
        return out


def stacked_parameters(cfgs: list[TrainConfig], n_inputs: int, device: torch.device) -> list[torch.Tensor]:
    """[W1, b1, W2, b2, ...] with W: (K, in, out) and b: (K, 1, out), drawn exactly as
    `model.create` draws each model (its own generator, on the CPU)."""
    models = [model_lib.create(cfg, n_inputs, init_generator(cfg.seed), torch.device("cpu")) for cfg in cfgs]
    layers = [[m for m in model if isinstance(m, nn.Linear)] for model in models]
    params = []
    for i in range(len(layers[0])):
        params.append(torch.stack([ls[i].weight.detach().T for ls in layers]))
        params.append(torch.stack([ls[i].bias.detach()[None] for ls in layers]))
    return [p.contiguous().to(device).requires_grad_() for p in params]


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (K, N, 3) of all K models on the shared inputs x (N, features)."""
    h = x.expand(params[0].shape[0], *x.shape)
    for i in range(0, len(params), 2):
        h = torch.baddbmm(params[i + 1], h, params[i])
        if i + 2 < len(params):
            h = torch.relu(h)
    return h


def losses_and_accuracies(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model mean cross-entropy and accuracy, each (K,)."""
    k, n, c = logits.shape
    loss = F.cross_entropy(logits.reshape(k * n, c), y.repeat(k), reduction="none").view(k, n).mean(dim=1)
    accuracy = (logits.argmax(dim=2) == y).float().mean(dim=1)
    return loss, accuracy


def check_compatible(cfgs: list[TrainConfig]) -> None:
    first = cfgs[0]
    for cfg in cfgs[1:]:
        for key in ("hidden", "features", "split_seed", "val_fraction"):
            if getattr(cfg, key) != getattr(first, key):
                raise ValueError(f"{key}: models trained together must share it ({getattr(first, key)} vs {getattr(cfg, key)})")


def train_batch(cfgs: list[TrainConfig], data: WineData, device: torch.device) -> BatchResult:
    """Train len(cfgs) models at once; model k follows `train.train(cfgs[k], ...)`."""
    check_compatible(cfgs)
    k = len(cfgs)
    params = stacked_parameters(cfgs, data.n_features, device)
    buffers = [torch.zeros_like(p) for p in params]
    lr = torch.tensor([c.lr for c in cfgs], dtype=torch.float32, device=device)
    momentum = torch.tensor([c.momentum for c in cfgs], dtype=torch.float32, device=device)
    iterations = torch.tensor([c.iterations for c in cfgs], device=device)
    steps = int(iterations.max()) + 1

    history = torch.full((len(METRICS), steps, k), float("nan"), device=device)
    active = torch.ones(k, dtype=torch.bool, device=device)
    diverged = torch.zeros(k, dtype=torch.bool, device=device)
    last_step = torch.zeros(k, dtype=torch.long, device=device)

    for step in range(steps):
        # forward and loss of every model on its current weights: step k's training metrics
        logits = forward(params, data.x_train)
        train_loss, train_accuracy = losses_and_accuracies(logits, data.y_train)
        with torch.no_grad():
            val_loss, val_accuracy = losses_and_accuracies(forward(params, data.x_val), data.y_val)
            history[:, step] = torch.stack([train_loss, train_accuracy, val_loss, val_accuracy])

            # models still running measured this step; a non-finite loss ends a model here
            last_step = torch.where(active, step, last_step)
            newly_diverged = active & ~torch.isfinite(train_loss)
            diverged |= newly_diverged
            active &= ~newly_diverged & (step < iterations)
        if step % 50 == 49 and not bool(active.any()):  # an occasional sync to stop early
            break
        if step == steps - 1:
            break

        # backward: the sum of the losses gives each model its own gradient
        grads = torch.autograd.grad(torch.where(active, train_loss, 0.0).sum(), params)

        # SGD per model, as torch.optim.SGD does it; stopped models do not move
        with torch.no_grad():
            for p, g, buf in zip(params, grads, buffers):
                buf.mul_(momentum.view(k, 1, 1)).add_(g)
                p.sub_(torch.where(active.view(k, 1, 1), lr.view(k, 1, 1) * buf, 0.0))

    measured = torch.arange(steps, device=device)[:, None] <= last_step[None, :]
    history = torch.where(measured, history, float("nan"))
    return BatchResult(history={m: history[i].cpu().numpy() for i, m in enumerate(METRICS)},
                       last_step=last_step.cpu().numpy(), diverged=diverged.cpu().numpy())
