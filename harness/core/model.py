"""The lecture's network: a small MLP (ReLU, or the config's activation), a logit per class,
and a choice of initialization.

Every scheme draws the weights as torch.nn.init draws them, from the run's own generator;
the biases are drawn as nn.Linear draws them under `default`, and are zeros under every other
scheme (as after torch.nn.init.zeros_)."""

import math

import torch
from torch import nn

from harness.core.config import ACTIVATIONS, TrainConfig


def activation(name: str) -> nn.Module:
    """The activation module by its config name (torch.nn's, with its default arguments)."""
    return getattr(nn, ACTIVATIONS[name])()


def build_mlp(n_inputs: int, hidden: list[int], n_classes: int = 3, activation_name: str = "relu") -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_inputs
    for h in hidden:
        layers += [nn.Linear(width, h), activation(activation_name)]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


INIT_KEYS = ("init", "init_std", "init_value", "init_low", "init_high")  # what the drawing rules depend on
Rule = tuple[str, float, float]
"""("uniform", low, high), ("normal", 0, std), ("constant", value, 0) or ("orthogonal", gain, 0)"""
ZEROS: Rule = ("constant", 0.0, 0.0)


def init_rules(cfg: TrainConfig, fan_in: int, fan_out: int) -> tuple[Rule, Rule]:
    """How a layer's (weight, bias) are drawn, with the bounds and deviations computed as
    torch.nn.init computes them. `default` is what nn.Linear.reset_parameters draws:
    kaiming_uniform_ with a=sqrt(5), and its bias uniform in +-1/sqrt(fan_in)."""
    scheme = cfg.init
    if scheme == "default":
        bound = math.sqrt(3.0) * (nn.init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in))
        return ("uniform", -bound, bound), ("uniform", -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
    weight = {
        "xavier_uniform": lambda: ("uniform", -(b := math.sqrt(3.0) * math.sqrt(2.0 / float(fan_in + fan_out))), b),
        "xavier_normal": lambda: ("normal", 0.0, math.sqrt(2.0 / float(fan_in + fan_out))),
        "kaiming_uniform": lambda: ("uniform", -(b := math.sqrt(2.0) * math.sqrt(3.0 / fan_in)), b),
        "kaiming_normal": lambda: ("normal", 0.0, math.sqrt(2.0) / math.sqrt(fan_in)),
        "normal": lambda: ("normal", 0.0, cfg.init_std),
        "uniform": lambda: ("uniform", cfg.init_low, cfg.init_high),
        "orthogonal": lambda: ("orthogonal", 1.0, 0.0),
        "constant": lambda: ("constant", cfg.init_value, 0.0),
        "zeros": lambda: ZEROS,
    }
    if scheme not in weight:
        raise ValueError(f"init: unknown scheme {scheme!r}")
    return weight[scheme](), ZEROS


def draw(tensor: torch.Tensor, rule: Rule, generator: torch.Generator) -> None:
    """Fill `tensor` in place by `rule`, as torch.nn.init fills it; the random rules draw from
    `generator`."""
    kind, a, b = rule
    if kind == "uniform":
        tensor.uniform_(a, b, generator=generator)
    elif kind == "normal":
        tensor.normal_(a, b, generator=generator)
    elif kind == "orthogonal":
        tensor.copy_(orthogonal(tensor.shape, a, generator))
    else:
        tensor.fill_(a)


def orthogonal(shape: torch.Size, gain: float, generator: torch.Generator) -> torch.Tensor:
    """What torch.nn.init.orthogonal_ draws for a (rows, cols) weight: the Q of a normal
    matrix's QR decomposition, signs fixed by R's diagonal (written out: torch before 2.2 has no
    generator argument there)."""
    rows, cols = shape
    flat = torch.empty(rows, cols).normal_(0, 1, generator=generator)
    if rows < cols:
        flat.t_()
    q, r = torch.linalg.qr(flat)
    q *= torch.diag(r, 0).sign()
    if rows < cols:
        q.t_()
    return q * gain


@torch.no_grad()
def initialize(model: nn.Module, cfg: TrainConfig, generator: torch.Generator) -> None:
    """Draw every weight, then its bias, layer by layer from `generator`, so the seed alone
    fixes the start. The batched trainer draws its stacked weights in this same order."""
    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            weight_rule, bias_rule = init_rules(cfg, layer.in_features, layer.out_features)
            draw(layer.weight, weight_rule, generator)
            draw(layer.bias, bias_rule, generator)


def create(cfg: TrainConfig, n_inputs: int, n_classes: int, generator: torch.Generator,
           device: torch.device) -> nn.Sequential:
    """The initialized network, on `device`. Weights are drawn on the CPU, so every device starts alike."""
    model = build_mlp(n_inputs, cfg.hidden, n_classes, cfg.activation)
    initialize(model, cfg, generator)
    return model.to(device)
