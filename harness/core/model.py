"""The lecture's network: a small MLP with ReLU, 3 logits, and a choice of initialization."""

import math

import torch
from torch import nn

from harness.core.config import TrainConfig


def build_mlp(n_inputs: int, hidden: list[int], n_classes: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def init_rules(scheme: str, init_std: float, fan_in: int, fan_out: int) -> tuple[tuple[str, float], tuple[str, float]]:
    """How a layer's (weight, bias) are drawn: ("uniform", bound), ("normal", std) or ("zeros", 0),
    with the bounds and deviations computed as torch.nn.init computes them.

    `default` is what nn.Linear.reset_parameters draws: kaiming_uniform_ with a=sqrt(5).
    """
    if scheme == "default":
        bound = math.sqrt(3.0) * (nn.init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in))
        return ("uniform", bound), ("uniform", 1 / math.sqrt(fan_in))
    if scheme == "xavier_uniform":
        return ("uniform", math.sqrt(3.0) * (1.0 * math.sqrt(2.0 / float(fan_in + fan_out)))), ("zeros", 0.0)
    if scheme == "kaiming_normal":
        return ("normal", math.sqrt(2.0) / math.sqrt(fan_in)), ("zeros", 0.0)
    if scheme == "normal":
        return ("normal", init_std), ("zeros", 0.0)
    raise ValueError(f"init: unknown scheme {scheme!r}")


def draw(tensor: torch.Tensor, rule: tuple[str, float], generator: torch.Generator) -> None:
    """Fill `tensor` in place by `rule`; only uniform and normal draws use the generator."""
    kind, scale = rule
    if kind == "uniform":
        tensor.uniform_(-scale, scale, generator=generator)
    elif kind == "normal":
        tensor.normal_(0.0, scale, generator=generator)
    else:
        tensor.zero_()


@torch.no_grad()
def initialize(model: nn.Module, scheme: str, init_std: float, generator: torch.Generator) -> None:
    """Draw every weight, then its bias, layer by layer from `generator`, so the seed alone
    fixes the start. The batched trainer draws its stacked weights in this same order."""
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            weight_rule, bias_rule = init_rules(scheme, init_std, layer.in_features, layer.out_features)
            draw(layer.weight, weight_rule, generator)
            draw(layer.bias, bias_rule, generator)


def create(cfg: TrainConfig, n_inputs: int, generator: torch.Generator, device: torch.device) -> nn.Sequential:
    """The initialized network, on `device`. Weights are drawn on the CPU, so every device starts alike."""
    model = build_mlp(n_inputs, cfg.hidden)
    initialize(model, cfg.init, cfg.init_std, generator)
    return model.to(device)
