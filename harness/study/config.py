"""The `[sweep]` table of an experiment file: the study, its objective and its search space.

    [sweep]
    study = "wine-sweep"
    objective = "val_loss"            # or "val_accuracy", "iterations_to_target(_held)", or a list
    [sweep.space]
    lr = { low = 1e-3, high = 1.0, log = true }
    init = { choices = ["default", "xavier_uniform"] }

lr, seed and iterations are searched by default; a key fixed at the top level of the file is
taken out of the default space. Every other top-level key is a fixed override of the defaults.
"""

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import config
from harness.core.config import ConfigError, TrainConfig

OBJECTIVES = {"val_loss": "minimize", "val_accuracy": "maximize", "iterations_to_target": "minimize",
              "iterations_to_target_held": "minimize"}
MEASURE = ("target_accuracy", "hold_steps")  # one yardstick for every trial of a study
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
DEFAULT_SPACE = {
    "lr": {"low": 1e-3, "high": 1.0, "log": True},
    "seed": {"low": 0, "high": 9999},
    "iterations": {"low": 50, "high": 500},
}


@dataclass
class Param:
    """One searched config key: a numeric range, or a list of choices."""
    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list | None = None

    def suggest(self, trial) -> Any:
        """The trial's value, as the config wants it (choices that are lists travel as strings)."""
        if self.choices is not None:
            picked = trial.suggest_categorical(self.name, [encode(c) for c in self.choices])
            return decode(picked)
        if isinstance(getattr(TrainConfig(), self.name), int):
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def extremes(self) -> list:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def encode(choice: Any) -> Any:
    return str(choice) if isinstance(choice, list) else choice


def decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("["):
        return tomllib.loads(f"v = {value}")["v"]
    return value


@dataclass
class SweepConfig:
    study: str = "wine-sweep"
    """Optuna study name; also the MLflow parent run's name"""
    trials: int = 20
    """trials to add each time the sweep runs"""
    sampler: str = "tpe"
    """tpe or random"""
    sampler_seed: int = 0
    """the sampler's own seed (not the model seed)"""
    objective: str | list[str] = "val_loss"
    """final val_loss (minimize), val_accuracy (maximize), iterations_to_target or
    iterations_to_target_held (minimize), or a list"""
    pruner: str = "none"
    """none, median, successive_halving or hyperband"""
    workers: int = 1
    """parallel worker processes on this machine"""
    batch_size: int = 1
    """trials each worker asks for at once and trains as one batched computation (1: one by one)"""
    heartbeat_interval: int = 5
    """seconds between a running trial's heartbeats"""
    grace_period: int = 20
    """seconds without a heartbeat after which a trial counts as dead, is failed and retried"""
    max_retry: int = 3
    """how many times a dead trial is retried"""
    space: dict[str, Param] = field(default_factory=dict)
    """searched config keys"""

    @property
    def objectives(self) -> list[str]:
        return [self.objective] if isinstance(self.objective, str) else list(self.objective)

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]


@dataclass
class Sweep:
    """An experiment file read for sweeping: the fixed overrides and the [sweep] table."""
    fixed: dict[str, Any]
    settings: SweepConfig
    base: TrainConfig

    def trial_config(self, values: dict[str, Any]) -> TrainConfig:
        return config.build({**self.fixed, **values})

    def corners(self) -> list[TrainConfig]:
        """The base config with each searched key at each of its extremes (a trainer's check)."""
        return [self.base] + [self.trial_config({p.name: v}) for p in self.settings.space.values() for v in p.extremes()]

    @property
    def max_iterations(self) -> int:
        """The most iterations any trial can run."""
        spec = self.settings.space.get("iterations")
        return int(max(spec.extremes())) if spec else self.base.iterations


def parse_param(name: str, spec: Any) -> Param:
    if name not in {f.name for f in dataclasses.fields(TrainConfig)}:
        raise ConfigError(f"sweep.space.{name}: unknown config key; allowed: {', '.join(f.name for f in dataclasses.fields(TrainConfig))}")
    if name in MEASURE:
        raise ConfigError(f"sweep.space.{name}: is what every trial is measured by, so it cannot be searched; "
                          f"fix it at the top level of the file")
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep.space.{name}: expected a table {{ low = .., high = .. }} or {{ choices = [..] }}")
    unknown = set(spec) - {"low", "high", "log", "choices"}
    if unknown:
        raise ConfigError(f"sweep.space.{name}: unknown key {sorted(unknown)[0]!r}; allowed: low, high, log, choices")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise ConfigError(f"sweep.space.{name}: choices must be a non-empty list")
        return Param(name, choices=spec["choices"])
    low, high = spec.get("low"), spec.get("high")
    numeric = (int, float)
    if not (isinstance(low, numeric) and isinstance(high, numeric)) or isinstance(low, bool) or low >= high:
        raise ConfigError(f"sweep.space.{name}: needs numbers low < high, got low={low!r} high={high!r}")
    if not isinstance(getattr(TrainConfig(), name), (int, float)) or isinstance(getattr(TrainConfig(), name), bool):
        raise ConfigError(f"sweep.space.{name}: a range needs a numeric key; use choices = [..]")
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and low <= 0):
        raise ConfigError(f"sweep.space.{name}: log must be true or false, and a log range needs low > 0")
    return Param(name, low=low, high=high, log=log)


def build_settings(table: dict[str, Any], fixed: dict[str, Any]) -> SweepConfig:
    table = dict(table)
    space_table = table.pop("space", {})
    known = {f.name for f in dataclasses.fields(SweepConfig)} - {"space"}
    values = {}
    defaults = SweepConfig()
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"sweep.{key}: unknown key; allowed: {', '.join(sorted(known | {'space'}))}")
        expected = getattr(defaults, key)
        if key == "objective":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not names or any(n not in OBJECTIVES for n in names):
                raise ConfigError(f"sweep.objective: {value!r} is not one of {', '.join(OBJECTIVES)} (or a list of them)")
        elif type(value) is not type(expected):
            raise ConfigError(f"sweep.{key}: expected {'an integer' if isinstance(expected, int) else 'a string'}, got {value!r}")
        values[key] = value
    settings = dataclasses.replace(defaults, **values)
    for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if getattr(settings, key) not in allowed:
            raise ConfigError(f"sweep.{key}: {getattr(settings, key)!r} is not one of {', '.join(allowed)}")
    for key in ("trials", "max_retry"):
        if getattr(settings, key) < 0:
            raise ConfigError(f"sweep.{key}: must be >= 0, got {getattr(settings, key)}")
    for key in ("workers", "heartbeat_interval", "batch_size"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"sweep.{key}: must be >= 1, got {getattr(settings, key)}")
    if settings.grace_period < 2 * settings.heartbeat_interval:
        raise ConfigError(f"sweep.grace_period: must be >= 2 x heartbeat_interval "
                          f"({2 * settings.heartbeat_interval}), got {settings.grace_period}")
    if not 0 <= settings.sampler_seed < 2**32:
        raise ConfigError(f"sweep.sampler_seed: must be in [0, 2**32), got {settings.sampler_seed}")
    if not settings.study:
        raise ConfigError("sweep.study: must be a non-empty name")

    if not isinstance(space_table, dict):
        raise ConfigError("sweep.space: expected a table of config keys")
    both = sorted(set(space_table) & set(fixed))
    if both:
        raise ConfigError(f"sweep.space.{both[0]}: is also fixed at the top level; keep one of the two")
    specs = {k: v for k, v in DEFAULT_SPACE.items() if k not in fixed}
    specs.update(space_table)
    settings.space = {name: parse_param(name, spec) for name, spec in specs.items()}
    return settings


def load(path: str | Path | None, overrides: list[str] = ()) -> Sweep:
    """Read an experiment file for sweeping; every bad key or value fails here, before any trial."""
    values = config.read_toml(path) if path else {}
    values.update(config.parse_override(o) for o in overrides)
    return from_values(values)


def from_values(values: dict[str, Any]) -> Sweep:
    """A sweep from an experiment file's values (its `[sweep]` table included), checked as `load` checks a file."""
    values = dict(values)
    table = values.pop("sweep", {})
    if not isinstance(table, dict):
        raise ConfigError("sweep: expected a table [sweep]")
    base = config.build(values)
    settings = build_settings(table, values)
    # every corner of the space must make a valid config
    for param in settings.space.values():
        for extreme in param.extremes():
            try:
                config.build({**values, param.name: extreme})
            except ConfigError as e:
                raise ConfigError(f"sweep.space.{param.name}: {extreme!r} is not a valid value ({e})") from None
    sweep = Sweep(fixed=values, settings=settings, base=base)
    shortest = min(cfg.iterations for cfg in sweep.corners())
    if "iterations_to_target_held" in settings.objectives and base.hold_steps > shortest + 1:
        raise ConfigError(f"hold_steps: {base.hold_steps} is longer than the shortest trial ({shortest} iterations, "
                          f"{shortest + 1} steps): its iterations_to_target_held could never be met")
    return sweep
