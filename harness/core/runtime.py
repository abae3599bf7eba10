"""Where randomness and the device are decided: once each, then passed down."""

import random

import numpy as np
import torch

from harness.core.config import ConfigError


def init_generator(seed: int) -> torch.Generator:
    """The generator that draws a model's initial weights: the seed alone fixes them."""
    return torch.Generator().manual_seed(seed)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return the generator that draws the initial weights."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return init_generator(seed)


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; naming a device that is not there is an error."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if name == "auto":
        name = next(d for d in ("cuda", "mps", "cpu") if available[d])
    if name not in available:
        raise ConfigError(f"device: {name!r} is not one of auto, cpu, cuda, mps")
    if not available[name]:
        have = ", ".join(["auto"] + [d for d, ok in available.items() if ok])
        raise ConfigError(f"device: {name!r} is not available on this machine; available: {have}")
    return torch.device(name)
