"""Many initializations trained as one computation, with a leading model dimension K.

One wine model is so small that training it alone is all Python and kernel launches. Here K
models (each with its own seed, init, learning rate, optimizer settings and iteration count,
sharing the architecture, the activation, the optimizer and the data) are stacked: every layer
is one batched matmul over the K models, each model's gradient of its own loss is computed by
hand (each activation's derivative is aten's own backward op, the one autograd calls), and the
optimizer's rule is applied per model (stacked_optim.py). Model k follows the curve that
`train.train` gives for its config.

Nothing leaves the device until the end: a model that diverges or reaches its iteration count
is masked out (its weights stop moving, its metrics stop counting), without a sync per step.
Where a compiled kernel covers the configs (harness/trainers/registry.py), it takes over: on
the CPU the whole run is one call into C (fused_cpu.py); on CUDA, with nothing to draw along
the way (the seed scan), a step is one Triton kernel (fused_triton.py).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from harness.core import model as model_lib
from harness.core.config import TrainConfig
from harness.core.data import Data
from harness.core.runtime import init_generator
from harness.core.stacked import activate, predicted_classes
from harness.core.train import METRICS, TrainResult
from harness.trainers.registry import SHARED, TORCH_FIELDS, choose
from harness.trainers.stacked_optim import StackedOptimizer


@dataclass
class BatchResult:
    history: dict[str, np.ndarray]
    """every metric, shape (max steps + 1, K); NaN past a model's last_step"""
    last_step: np.ndarray
    """(K,) the last step each model measured"""
    diverged: np.ndarray
    """(K,) the loss became non-finite at last_step"""
    trainer: str = "torch"
    """the trainer that ran (harness/trainers/registry.py)"""

    def result(self, k: int, cfg: TrainConfig) -> TrainResult:
        """Model k's outcome, in the same form as the single-model loop returns it (`cfg`: its
        target and hold_steps)."""
        steps = slice(0, int(self.last_step[k]) + 1)
        out = TrainResult(history={m: self.history[m][steps, k].tolist() for m in METRICS},
                          diverged=bool(self.diverged[k]))
        return out.measure(cfg)


def stacked_parameters(cfgs: list[TrainConfig], n_inputs: int, n_classes: int, device: torch.device) -> list[torch.Tensor]:
    """[W1, b1, W2, b2, ...] with W: (K, out, in) and b: (K, out, 1), drawn exactly as
    `model.create` draws each model: its own generator, on the CPU, layer by layer, weight
    then bias. Drawn straight into the stacked tensors: 100,000 models in about 2 s."""
    widths = [n_inputs, *cfgs[0].hidden, n_classes]
    shapes = list(zip(widths[1:], widths[:-1]))  # (out, in) of each layer
    params = []
    for fan_out, fan_in in shapes:
        params += [torch.empty(len(cfgs), fan_out, fan_in), torch.empty(len(cfgs), fan_out, 1)]
    rules = {}  # the init keys -> each layer's (weight rule, bias rule)
    for k, cfg in enumerate(cfgs):
        key = tuple(getattr(cfg, name) for name in model_lib.INIT_KEYS)
        if key not in rules:
            rules[key] = [model_lib.init_rules(cfg, fan_in, fan_out) for fan_out, fan_in in shapes]
        generator = init_generator(cfg.seed)
        for i, (weight_rule, bias_rule) in enumerate(rules[key]):
            model_lib.draw(params[2 * i][k], weight_rule, generator)
            model_lib.draw(params[2 * i + 1][k], bias_rule, generator)
    return [p.to(device) for p in params]


def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor):
    """Per-model mean cross-entropy and accuracy, each (K,), and the log-probabilities.
    The loss reads only the label's log-probability, as nn.CrossEntropyLoss does: another
    class's -inf must not turn a finite loss into NaN."""
    log_probs = torch.log_softmax(logits, dim=1)
    labels = y.view(1, 1, -1).expand(len(logits), 1, -1)
    loss = -log_probs.gather(1, labels).squeeze(1).mean(dim=1)
    return loss, (predicted_classes(logits) == y).float().mean(dim=1), log_probs


AFTER_INPUT = ("gelu",)  # activations whose derivative needs the layer's output before them (the others: after)
BACKWARD = {  # the gradient through each activation, from the layer's output after it (or before it: AFTER_INPUT)
    "relu": lambda grad, kept: torch.ops.aten.threshold_backward(grad, kept, 0),
    "tanh": lambda grad, kept: torch.ops.aten.tanh_backward(grad, kept),
    "sigmoid": lambda grad, kept: torch.ops.aten.sigmoid_backward(grad, kept),
    "leaky_relu": lambda grad, kept: torch.ops.aten.leaky_relu_backward(grad, kept, 0.01, True),  # nn.LeakyReLU's slope
    "gelu": lambda grad, kept: torch.ops.aten.gelu_backward(grad, kept),
}


def fused_forward(trained: list[torch.Tensor], xt1: torch.Tensor, activation: str = "relu",
                  kept: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """`forward` for training: the first layer's bias is a weight on a constant input of 1
    (`trained[0]` is [W1 | b1], `xt1` the inputs with a row of ones), which spares the widest
    activations one pass to add the bias and one to sum its gradient. Into `kept`, what
    `gradients` needs of each hidden layer: its output before the activation (AFTER_INPUT) or after."""
    activations = []
    h = torch.matmul(trained[0], xt1)
    for i in range(1, len(trained), 2):
        if kept is not None and activation in AFTER_INPUT:
            kept.append(h)  # activate() makes a new tensor for these
        h = activate(h, activation)
        if kept is not None and activation not in AFTER_INPUT:
            kept.append(h)
        activations.append(h)
        h = torch.matmul(trained[i], h).add_(trained[i + 1])
    return [*activations, h]


def gradients(trained, xt1, activations, kept, log_probs, onehot, active, activation: str = "relu") -> list[torch.Tensor]:
    """Backpropagation by hand: each model's gradient of its own mean cross-entropy (what
    autograd gives for the single model), zero for stopped models; laid out as `trained`."""
    n = xt1.shape[1]
    delta = torch.where(active.view(-1, 1, 1), (log_probs.exp() - onehot) / n, 0.0)
    grads = [None] * len(trained)
    for i in range(len(trained) - 2, 0, -2):
        below = activations[i // 2]
        grads[i] = torch.matmul(delta, below.transpose(-1, -2))
        grads[i + 1] = delta.sum(dim=2, keepdim=True)
        delta = BACKWARD[activation](torch.matmul(trained[i].transpose(1, 2), delta), kept[i // 2])
    grads[0] = torch.matmul(delta, xt1.transpose(-1, -2))
    return grads


def batch_key(cfg: TrainConfig) -> tuple:
    """Configs with the same key can train in one batch: what the declarations call SHARED."""
    return tuple(str(getattr(cfg, key)) for key, rule in TORCH_FIELDS.items() if rule == SHARED)


def check_compatible(cfgs: list[TrainConfig]) -> None:
    """Models trained together share what the declarations call SHARED (harness/trainers/registry.py)."""
    first = cfgs[0]
    shared = [key for key, rule in TORCH_FIELDS.items() if rule == SHARED]
    for cfg in cfgs[1:]:
        for key in shared:
            if getattr(cfg, key) != getattr(first, key):
                raise ValueError(f"{key}: models trained together must share it ({getattr(first, key)} vs {getattr(cfg, key)})")


def boundary_steps(cfgs: list[TrainConfig]) -> set[int]:
    """Steps at which some model draws a boundary: multiples of its plot_every, and its last."""
    return {s for c in cfgs for s in range(0, c.iterations + 1, c.plot_every)} | {c.iterations for c in cfgs}


@torch.no_grad()
def train_batch(cfgs: list[TrainConfig], data: Data, device: torch.device, on_boundary=None,
                trainer: str | None = None) -> BatchResult:
    """Train len(cfgs) models at once; model k follows `train.train(cfgs[k], ...)`.

    `on_boundary(step, params, models, metrics)` is called where the single-model loop would
    draw model k's boundary, with the indices of those models and their metrics (4 x len).
    The trainer is the configs' `trainer` (or the `trainer` argument, to compare them), as
    `registry.choose` resolves it: a compiled kernel where one covers the configs, else torch ops.
    """
    check_compatible(cfgs)
    chosen = choose(cfgs, device, drawing=on_boundary is not None, name=trainer).name
    k = len(cfgs)
    params = stacked_parameters(cfgs, data.n_features, data.n_classes, device)
    trained = [torch.cat(params[:2], dim=2), *params[2:]]  # [W1 | b1], W2, b2, ...
    params = [trained[0][..., :-1], trained[0][..., -1:], *params[2:]]  # views, as forward() takes them
    activation = cfgs[0].activation
    buffers = [torch.zeros_like(p) for p in trained]  # the kernels' momentum buffers
    lr = torch.tensor([c.lr for c in cfgs], dtype=torch.float32, device=device)
    momentum = torch.tensor([c.momentum for c in cfgs], dtype=torch.float32, device=device)
    iterations = torch.tensor([c.iterations for c in cfgs], device=device)
    steps = int(iterations.max()) + 1

    history = torch.full((len(METRICS), steps, k), float("nan"), device=device)
    active = torch.ones(k, dtype=torch.bool, device=device)
    diverged = torch.zeros(k, dtype=torch.bool, device=device)
    last_step = torch.zeros(k, dtype=torch.long, device=device)

    plot_every = torch.tensor([c.plot_every for c in cfgs], device=device)
    drawing_steps = boundary_steps(cfgs) if on_boundary else set()
    def with_ones(x):  # (features + 1, N): the inputs, samples last, and the bias's constant 1
        return torch.cat([x.T, torch.ones(1, x.shape[0], device=device)]).contiguous()

    xt1, xt1_val = with_ones(data.x_train), with_ones(data.x_val)
    onehot = F.one_hot(data.y_train, data.n_classes).float().T.contiguous()

    optimizer = StackedOptimizer(cfgs, trained, device) if chosen == "torch" else None  # the kernels step in their own code
    one_kernel = one_call = None
    if chosen == "triton":  # a step is one Triton kernel (harness/trainers/fused_triton.py)
        from harness.trainers.fused_triton import step as one_kernel
    elif chosen == "fused_cpu":  # the whole run is one call into C (harness/trainers/fused_cpu.py)
        from harness.trainers.fused_cpu import train as one_call
    if one_call:
        snap_steps = sorted(drawing_steps)
        at = torch.tensor(snap_steps, dtype=torch.long).view(-1, 1)
        drawn_at = ((at % plot_every == 0) | (at == iterations)) & (at <= iterations)  # unless a model diverges first
        weights_at = one_call(trained, buffers, lr, momentum, iterations, active, diverged, last_step, history, data,
                              snap_steps, drawn_at)
        for index, step in enumerate(snap_steps):  # the boundaries the loop below draws as it goes
            measured = (step <= last_step) & ~(diverged & (step == last_step))
            models = torch.nonzero(measured & drawn_at[index]).flatten()
            if len(models):
                w1b1, *rest = weights_at(index, models)
                on_boundary(step, [w1b1[..., :-1], w1b1[..., -1:], *rest], models, history[:, step, models].numpy())

    for step in range(steps if not one_call else 0):
        if one_kernel:
            one_kernel(trained, buffers, lr, momentum, iterations, active, diverged, last_step, history, data, step)
            if step % 50 == 49 and not bool(active.any()):
                break
            continue

        # forward and loss of every model on its current weights: step k's training metrics
        kept = []
        activations = fused_forward(trained, xt1, activation, kept)
        train_loss, train_accuracy, log_probs = loss_and_accuracy(activations[-1], data.y_train)
        val_loss, val_accuracy, _ = loss_and_accuracy(fused_forward(trained, xt1_val, activation)[-1], data.y_val)
        history[:, step] = torch.stack([train_loss, train_accuracy, val_loss, val_accuracy])

        # models still running measured this step; a non-finite loss ends a model here
        last_step = torch.where(active, step, last_step)
        newly_diverged = active & ~torch.isfinite(train_loss)
        diverged |= newly_diverged
        if step in drawing_steps:
            draw = active & ~newly_diverged & ((step % plot_every == 0) | (step == iterations))
            models = torch.nonzero(draw).flatten()
            if len(models):
                on_boundary(step, params, models, history[:, step, models].cpu().numpy())
        active &= ~newly_diverged & (step < iterations)
        if step % 50 == 49 and not bool(active.any()):  # an occasional sync to stop early
            break
        if step == steps - 1:
            break

        # backward: each model's own gradient
        grads = gradients(trained, xt1, activations, kept, log_probs, onehot, active, activation)

        # the optimizer's step per model, as torch.optim does it; stopped models do not move
        optimizer.step(grads, active)

    measured = torch.arange(steps, device=device)[:, None] <= last_step[None, :]
    history = torch.where(measured, history, float("nan"))
    return BatchResult(history={m: history[i].cpu().numpy() for i, m in enumerate(METRICS)},
                       last_step=last_step.cpu().numpy(), diverged=diverged.cpu().numpy(), trainer=chosen)
