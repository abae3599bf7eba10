"""The lecture's network: a small MLP with ReLU, 3 logits, and a choice of initialization."""

import math

import torch
from torch import nn

from harness.config import TrainConfig


def build_mlp(n_inputs: int, hidden: list[int], n_classes: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


@torch.no_grad()
def initialize(model: nn.Module, scheme: str, init_std: float, generator: torch.Generator) -> None:
    """Draw every weight and bias from `generator`, so the seed alone fixes the start.

    `default` repeats what nn.Linear.reset_parameters does, but with our generator.
    """
    for layer in model.modules():
        if not isinstance(layer, nn.Linear):
            continue
        fan_in = layer.in_features
        if scheme == "default":
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
            continue
        if scheme == "xavier_uniform":
            nn.init.xavier_uniform_(layer.weight, generator=generator)
        elif scheme == "kaiming_normal":
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
        elif scheme == "normal":
            nn.init.normal_(layer.weight, std=init_std, generator=generator)
        else:
            raise ValueError(f"init: unknown scheme {scheme!r}")
        nn.init.zeros_(layer.bias)


def create(cfg: TrainConfig, n_inputs: int, generator: torch.Generator, device: torch.device) -> nn.Sequential:
    """The initialized network, on `device`. Weights are drawn on the CPU, so every device starts alike."""
    model = build_mlp(n_inputs, cfg.hidden)
    initialize(model, cfg.init, cfg.init_std, generator)
    return model.to(device)
