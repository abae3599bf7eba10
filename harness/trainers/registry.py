"""Which trainer trains which configs, declared in one place, and the dispatch that asks.

The math of a training step has one definition: the lecture's loop, `core/train.py`. The other
trainers are faster ways to compute the same curves for many models at once, and each covers
only part of what a config can say. Each declares, for every field of `TrainConfig`, what it
does with it:

- FOLLOWED: any valid value, followed model by model exactly as the loop follows it;
- SHARED: any valid value, but models trained together must share it;
- OUTSIDE: not read by a training step (where to log, what to measure, how to draw);
- UNREAD: any value, not read by the only optimizer it trains (Adam's betas under SGD);
- `Only(...)`: only the values it names; a config with another value is not covered.

`tests/test_trainers.py` fails when a field of `TrainConfig` is not declared for every trainer,
and the parity tests (tests/test_batched.py) train every declared value against the loop.
Dispatch (`choose`) takes the first trainer in `TRAINERS` that covers every config of a batch,
or the one the config's `trainer` key names (refused in one line when it does not cover them).
"""

from dataclasses import dataclass
from typing import Callable

import torch

from harness.core.config import TRAINER_NAMES, ConfigError, TrainConfig, dataset_facts

FOLLOWED, SHARED, OUTSIDE, UNREAD = "followed", "shared", "outside", "unread"


@dataclass(frozen=True)
class Only:
    """Only the configs for which `accepts(cfg, device)` holds (device: the resolved one);
    `says` names what is covered, for the refusal."""
    accepts: Callable[[TrainConfig, torch.device], bool]
    says: str


@dataclass(frozen=True)
class Trainer:
    name: str
    fields: dict[str, object]
    """every TrainConfig field: FOLLOWED, SHARED, OUTSIDE or an Only"""
    draws: bool
    """can hand out the weights of the steps a boundary is drawn at"""
    missing: Callable[[], str | None] = lambda: None
    """why it cannot run on this machine (no compiler, no Triton), or None"""

    def refusal(self, cfgs: list[TrainConfig], device: torch.device, drawing: bool) -> str | None:
        """Why this trainer does not train these configs here, in a few words; None if it does."""
        if drawing and not self.draws:
            return "it draws no boundaries (the seed scan only)"
        device_rule = self.fields["device"]  # first: a kernel for another device is not even looked for
        if isinstance(device_rule, Only) and not device_rule.accepts(cfgs[0], device):
            return f"it trains {device_rule.says} (device={cfgs[0].device!r} on {device.type})"
        missing = self.missing()
        if missing:
            return missing
        for key, rule in self.fields.items():
            if key == "device" or not isinstance(rule, Only):
                continue
            refused = next((cfg for cfg in cfgs if not rule.accepts(cfg, device)), None)
            if refused is not None:
                return f"it trains {rule.says} ({key}={getattr(refused, key)!r})"
        return None


def declare(followed: tuple[str, ...], shared: tuple[str, ...], outside: tuple[str, ...], unread: tuple[str, ...] = (),
            **only: Only) -> dict:
    """A trainer's declaration from its own lists: a field in none of them is undeclared, and
    tests/test_trainers.py fails until each trainer says what it does with it."""
    return {**{k: FOLLOWED for k in followed}, **{k: SHARED for k in shared}, **{k: OUTSIDE for k in outside},
            **{k: UNREAD for k in unread}, **only}


NOT_TRAINING = ("experiment", "run_name", "target_accuracy", "hold_steps", "plot_every", "image_size")  # logging, measuring, drawing
DATA = ("dataset", "features", "label", "n_samples", "noise", "data_seed", "split_seed", "val_fraction")
INIT = ("init", "init_std", "init_value", "init_low", "init_high", "seed")
NOT_SGD = ("beta1", "beta2", "alpha", "eps")  # read by Adam, AdamW and RMSprop only

# The loop (core/train.py) and the batched torch ops (batched.py, stacked_optim.py, checked against it): all of it, on any device.
TORCH_FIELDS = declare(followed=(*INIT, "lr", "momentum", "nesterov", "weight_decay", *NOT_SGD, "iterations"),
                       shared=("device", *DATA, "hidden", "activation", "optimizer", "trainer"),
                       outside=NOT_TRAINING)


def kernel_fields(**only: Only) -> dict:
    """What the compiled kernels train: the lecture's step (SGD with momentum, ReLU, 3 classes)
    for every init, seed, learning rate, momentum and iteration count."""
    return declare(followed=(*INIT, "lr", "momentum", "iterations"),
                   shared=(*(k for k in DATA if k != "dataset"), "trainer"), outside=NOT_TRAINING, unread=NOT_SGD,
                   optimizer=Only(lambda cfg, device: cfg.optimizer == "sgd", "optimizer sgd only"),
                   nesterov=Only(lambda cfg, device: not (cfg.nesterov and cfg.momentum), "plain momentum only"),
                   weight_decay=Only(lambda cfg, device: cfg.weight_decay == 0, "no weight_decay"),
                   activation=Only(lambda cfg, device: cfg.activation == "relu", "relu only"),
                   dataset=Only(lambda cfg, device: dataset_facts(cfg).classes == 3, "datasets of 3 classes"),
                   **only)


def one_hidden_layer(cfg: TrainConfig, device: torch.device) -> bool:
    return len(cfg.hidden) == 1


def on(device_type: str) -> Only:
    return Only(lambda cfg, device: device.type == device_type, f"on {device_type} only")


def c_kernel_missing() -> str | None:
    from harness.trainers import fused_cpu
    return None if fused_cpu.library() is not None else "no C compiler here built harness/trainers/fused_cpu.c (cc, or $CC)"


def triton_fits(cfg: TrainConfig, device: torch.device) -> bool:
    from harness.trainers import fused_triton
    return len(cfg.hidden) == 1 and fused_triton.triton is not None and fused_triton.fits(cfg.hidden[0], n_features(cfg))


def n_features(cfg: TrainConfig) -> int:
    return len(dataset_facts(cfg).feature_names) if cfg.features == "all" else len(cfg.features)


def triton_missing() -> str | None:
    from harness.trainers import fused_triton
    return None if fused_triton.triton is not None else "Triton is not installed (it comes with PyTorch's CUDA builds)"


TRAINERS = {  # in the order `auto` tries them: the fastest first
    # fused_triton.py: the weights drawn in Python as the loop draws them (every init), per-model
    # lr, momentum and iteration count in the kernel's arguments; one layer, in registers
    "triton": Trainer("triton", kernel_fields(device=on("cuda"),
                                              hidden=Only(triton_fits, "one hidden layer that fits the kernel's registers")),
                      draws=False, missing=triton_missing),
    # fused_cpu.c: the same, per model, for one hidden layer of any width
    "fused_cpu": Trainer("fused_cpu", kernel_fields(device=on("cpu"), hidden=Only(one_hidden_layer, "one hidden layer")),
                         draws=True, missing=c_kernel_missing),
    "torch": Trainer("torch", TORCH_FIELDS, draws=True),
}
assert set(TRAINERS) | {"auto"} == set(TRAINER_NAMES)


def choose(cfgs: list[TrainConfig], device: torch.device, drawing: bool, name: str | None = None) -> Trainer:
    """The trainer for models trained together: the one their `trainer` key (or `name`) names,
    or with `auto` the first that covers them all. A named one that does not is a ConfigError."""
    name = name or cfgs[0].trainer
    if name != "auto":
        trainer = TRAINERS[name]
        reason = trainer.refusal(cfgs, device, drawing)
        if reason:
            raise ConfigError(f"trainer: {name} does not train this config: {reason}; "
                              f"allowed here: {', '.join(allowed(cfgs, device, drawing))}")
        return trainer
    covering = next((t for t in TRAINERS.values() if t.refusal(cfgs, device, drawing) is None), None)
    if covering is None:  # torch covers every config today; a narrowed declaration must not end here silently
        raise ConfigError(f"trainer: no trainer covers this config ({TRAINERS['torch'].refusal(cfgs, device, drawing)})")
    return covering


def allowed(cfgs: list[TrainConfig], device: torch.device, drawing: bool) -> list[str]:
    return ["auto", *(n for n, t in TRAINERS.items() if t.refusal(cfgs, device, drawing) is None)]
