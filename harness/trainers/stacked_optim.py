"""torch.optim's update rules for K models stacked along a leading dimension, each model with its
own hyper-parameters: what the batched torch ops (batched.py) step with.

The loop (core/train.py) steps with torch.optim itself (`make_optimizer`). Here each rule is
written out after torch.optim's single-tensor code, op by op, with every hyper-parameter a
(K, 1, 1) tensor, so model k moves as its own optimizer would move it; models that are no
longer `active` do not move. tests/test_batched.py holds each rule to torch.optim through the
loop's curves. These rules are elementwise, so stacking changes nothing but the bookkeeping.
"""

import torch

from harness.core.config import TrainConfig


class StackedOptimizer:
    def __init__(self, cfgs: list[TrainConfig], params: list[torch.Tensor], device: torch.device):
        self.name = cfgs[0].optimizer  # shared by the models of a batch (registry.py: SHARED)
        self.params = params

        def per_model(key: str, dtype=torch.float32) -> torch.Tensor:
            return torch.tensor([getattr(c, key) for c in cfgs], dtype=dtype, device=device).view(-1, 1, 1)

        self.lr, self.momentum, self.weight_decay, self.eps = (per_model(k) for k in ("lr", "momentum", "weight_decay", "eps"))
        self.decays = any(c.weight_decay for c in cfgs)
        self.nesterov = per_model("nesterov", torch.bool) if any(c.nesterov for c in cfgs) else None
        if self.name in ("adam", "adamw"):
            # torch computes these from Python floats (float64), then uses them as float32
            self.lr64 = per_model("lr", torch.float64)
            self.decay = (1 - self.lr64 * per_model("weight_decay", torch.float64)).float()
            self.beta1, self.beta2 = per_model("beta1", torch.float64), per_model("beta2", torch.float64)
            self.one_minus_beta1 = (1 - self.beta1).float()
            self.one_minus_beta2 = (1 - self.beta2).float()
            self.beta2_f = self.beta2.float()
        if self.name == "rmsprop":
            self.alpha = per_model("alpha")
            self.one_minus_alpha = per_model("alpha", torch.float64).neg().add(1).float()
        self.buffers = [torch.zeros_like(p) for p in params]  # momentum, or Adam's exp_avg
        self.squares = [torch.zeros_like(p) for p in params] if self.name != "sgd" else None  # exp_avg_sq, square_avg
        self.steps = 0

    def step(self, grads: list[torch.Tensor], active: torch.Tensor) -> None:
        """One update of every active model from its gradient (as laid out as `params`)."""
        self.steps += 1
        moving = active.view(-1, 1, 1)
        if self.name == "sgd":  # p - lr * direction, as torch.optim.SGD; in place, the lecture's step being the hot one
            for i, (p, g) in enumerate(zip(self.params, grads)):
                p.sub_(torch.where(moving, self.lr * self.sgd_direction(i, p, g), 0.0))
            return
        rule = self.adam if self.name in ("adam", "adamw") else self.rmsprop
        for i, (p, g) in enumerate(zip(self.params, grads)):
            p.copy_(torch.where(moving, rule(i, p, g), p))

    def with_decay(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return g.add(self.weight_decay * p) if self.decays else g

    def sgd_direction(self, i: int, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """What SGD moves the weights along, times lr: the momentum buffer (g itself without momentum)."""
        g = self.with_decay(p, g)
        buf = self.buffers[i].mul_(self.momentum).add_(g)  # the first step: 0 * m + g, torch's clone of g; m = 0: g
        if self.nesterov is not None:
            return torch.where(self.nesterov, g + self.momentum * buf, buf)
        return buf

    def adam(self, i: int, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.name == "adamw":
            p = p * self.decay  # decoupled: the weights decay, the gradient is left alone
        else:
            g = self.with_decay(p, g)
        exp_avg = self.buffers[i].lerp_(g, self.one_minus_beta1)
        exp_avg_sq = self.squares[i].mul_(self.beta2_f).add_(self.one_minus_beta2 * g * g)
        step_size = (self.lr64 / (1 - self.beta1 ** self.steps)).float()
        bias_correction2_sqrt = ((1 - self.beta2 ** self.steps) ** 0.5).float()
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        return p + -step_size * (exp_avg / denom)

    def rmsprop(self, i: int, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g = self.with_decay(p, g)
        square_avg = self.squares[i].mul_(self.alpha).add_(self.one_minus_alpha * g * g)
        avg = square_avg.sqrt().add_(self.eps)
        buf = self.buffers[i].mul_(self.momentum).add_(g / avg)  # momentum 0: g / avg itself
        return p + -self.lr * buf
