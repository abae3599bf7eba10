"""One typed config for a training run, loaded from an experiment file plus overrides.

Experiment files (`experiments/*.toml`) list only what differs from the defaults below.
Every error names the key and what is allowed, in one line, before anything runs.
"""

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import datasets

INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "normal", "uniform",
         "orthogonal", "constant", "zeros")  # drawn as harness/core/model.py says
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}  # torch.optim's names
ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "gelu": "GELU", "sigmoid": "Sigmoid", "leaky_relu": "LeakyReLU"}  # torch.nn's
DEVICES = ("auto", "cpu", "cuda", "mps")
TRAINER_NAMES = ("auto", "triton", "fused_cpu", "torch")  # declared in harness/trainers/registry.py


class ConfigError(ValueError):
    """A bad key or value; its message is the one line the user sees."""


@dataclass
class TrainConfig:
    experiment: str = "wine-init"
    """MLflow experiment the run is logged under"""
    run_name: str = ""
    """MLflow run name; empty builds one from the experiment, seed and time"""
    dataset: str = "wine"
    """wine (the lecture's), iris, breast_cancer, moons, circles, blobs (scikit-learn's 2-D
    generators: n_samples, noise, data_seed), or csv:PATH (a CSV file with a header; label names
    the target column); harness/core/datasets.py"""
    features: list[str] | str = field(default_factory=lambda: ["alcohol", "color_intensity"])
    """the columns the network sees, or "all" (boundary drawn on the first two principal components
    when there are more than two); the default is wine's pair, and "all" on any other dataset"""
    label: str = ""
    """csv: datasets: the target column"""
    n_samples: int = 300
    """moons, circles, blobs: how many points are generated"""
    noise: float = 0.2
    """moons, circles: the standard deviation of the noise added to the points; blobs: of each cluster"""
    data_seed: int = 0
    """moons, circles, blobs: the seed of the generated points, kept apart from the model seed"""
    split_seed: int = 0
    """seed of the stratified train/validation split; kept apart from the model seed"""
    val_fraction: float = 0.3
    """share of the samples held out for validation"""
    hidden: list[int] = field(default_factory=lambda: [32])
    """widths of the hidden layers (the activation after each)"""
    activation: str = "relu"
    """after each hidden layer: relu, tanh, gelu, sigmoid or leaky_relu (torch.nn's, slope 0.01)"""
    init: str = "default"
    """weight initialization: default (PyTorch's nn.Linear), xavier_uniform, xavier_normal,
    kaiming_uniform, kaiming_normal (both for ReLU), normal (init_std), uniform (init_low,
    init_high), orthogonal, constant (init_value) or zeros; the biases are nn.Linear's under
    default and zeros under the others"""
    init_std: float = 0.1
    """standard deviation of the weights when init = "normal\""""
    init_value: float = 0.0
    """every weight when init = "constant\""""
    init_low: float = -0.1
    """lower bound of the weights when init = "uniform\""""
    init_high: float = 0.1
    """upper bound of the weights when init = "uniform\""""
    seed: int = 0
    """model seed: initial weights (and anything else random in training)"""
    optimizer: str = "sgd"
    """sgd, adam, adamw or rmsprop: torch.optim's SGD, Adam, AdamW, RMSprop, with the keys below"""
    lr: float = 0.7
    """learning rate; with SGD at 0.7 the default network reaches 85% train accuracy in ~100-200 steps"""
    momentum: float = 0.0
    """sgd and rmsprop: momentum"""
    nesterov: bool = False
    """sgd with momentum > 0: Nesterov momentum (without momentum there is nothing to look ahead with: ignored)"""
    weight_decay: float = 0.0
    """sgd, adam, rmsprop: L2 penalty added to the gradient; adamw: decoupled decay (torch's default there is 0.01)"""
    beta1: float = 0.9
    """adam, adamw: decay of the running mean of the gradient"""
    beta2: float = 0.999
    """adam, adamw: decay of the running mean of its square"""
    alpha: float = 0.99
    """rmsprop: decay of the running mean of the squared gradient"""
    eps: float = 1e-8
    """adam, adamw, rmsprop: added to the denominator"""
    iterations: int = 200
    """number of full-batch optimizer steps"""
    target_accuracy: float = 0.85
    """train accuracy that defines iterations_to_target and iterations_to_target_held"""
    hold_steps: int = 20
    """iterations_to_target_held: consecutive steps the train accuracy must stay at or above the target"""
    plot_every: int = 10
    """log a decision-boundary image every this many steps (and at the last step)"""
    image_size: int = 384
    """side of the boundary image in pixels"""
    device: str = "auto"
    """auto (CUDA, then MPS, then CPU), cpu, cuda or mps"""
    trainer: str = "auto"
    """auto (one run: the loop, which logs as it trains; sweeps and scans: the fastest that covers
    the configs), torch (the loop, or batched torch ops), fused_cpu (compiled C, one hidden
    layer, CPU) or triton (one hidden layer, CUDA, no boundaries)"""


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, "a list")


def _check_type(key: str, value: Any, default: Any) -> Any:
    """Coerce `value` to the type of the field's default, or raise naming the key."""
    if key == "features":
        if value == "all":
            return value
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise ConfigError(f'features: expected "all" or a list of feature names, got {value!r}')
        return value
    if isinstance(default, list):
        if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{key}: expected a list of integers, got {value!r}")
        return value
    tp = type(default)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def dataset_facts(cfg: TrainConfig) -> datasets.Facts:
    """Samples, feature names and classes of the config's dataset (read once per process; wine's are known)."""
    try:
        return datasets.facts(cfg.dataset, cfg.label, cfg.n_samples, cfg.noise, cfg.data_seed)
    except datasets.DatasetError as e:
        raise ConfigError(str(e)) from None


def train_size(cfg: TrainConfig) -> int:
    """Training samples of the split: scikit-learn's train_test_split holds out ceil(fraction * n)."""
    samples = dataset_facts(cfg).samples
    return samples - math.ceil(cfg.val_fraction * samples)


def target_points(cfg: TrainConfig) -> int:
    """How many training points a network must classify right to be at target_accuracy."""
    return math.ceil(round(cfg.target_accuracy * train_size(cfg), 9))


def target_text(cfg: TrainConfig) -> str:
    """The target as every output words it: "85% train accuracy (106 of 124 training points)"."""
    return f"{cfg.target_accuracy:.0%} train accuracy ({target_points(cfg)} of {train_size(cfg)} training points)"


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check ranges and choices; raise ConfigError with the key and the allowed values."""
    def choose(key: str, allowed: tuple[str, ...]) -> None:
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is not one of {', '.join(allowed)}")

    def positive(key: str) -> None:
        if not (getattr(cfg, key) > 0 and math.isfinite(getattr(cfg, key))):
            raise ConfigError(f"{key}: must be a finite number > 0, got {getattr(cfg, key)!r}")

    if cfg.dataset not in datasets.BUNDLED + datasets.GENERATED and not cfg.dataset.startswith(datasets.CSV):
        raise ConfigError(f"dataset: {cfg.dataset!r} is not one of {', '.join(datasets.NAMES)}")
    if cfg.dataset.startswith(datasets.CSV) and not cfg.label:
        raise ConfigError("label: a csv: dataset needs label = the name of its target column")
    if cfg.dataset in datasets.GENERATED:
        if not 10 <= cfg.n_samples <= 1_000_000:
            raise ConfigError(f"n_samples: must be in [10, 1000000], got {cfg.n_samples}")
        if not (cfg.noise >= 0 and math.isfinite(cfg.noise)):
            raise ConfigError(f"noise: must be a finite number >= 0, got {cfg.noise}")
        if not 0 <= cfg.data_seed < 2**32:
            raise ConfigError(f"data_seed: must be an integer in [0, 4294967295], got {cfg.data_seed}")
    facts = dataset_facts(cfg)
    if cfg.features != "all":
        unknown = [f for f in cfg.features if f not in facts.feature_names]
        if unknown:
            raise ConfigError(f"features: unknown feature {unknown[0]!r} of {cfg.dataset}; allowed: \"all\" or names from "
                              f"{', '.join(facts.feature_names)}")
        if len(cfg.features) < 2 or len(set(cfg.features)) != len(cfg.features):
            raise ConfigError("features: need at least two distinct feature names, or \"all\"")
    if len(facts.feature_names) < 2:
        raise ConfigError(f"features: {cfg.dataset} has {len(facts.feature_names)} numeric column; the boundary needs two")
    if facts.classes < 2 or facts.smallest_class < 2:
        raise ConfigError(f"dataset: {cfg.dataset} needs at least two classes of at least two samples each "
                          f"(it has {facts.classes} classes, the smallest of {facts.smallest_class})")
    choose("optimizer", tuple(OPTIMIZERS))
    choose("activation", tuple(ACTIVATIONS))
    choose("init", INITS)
    choose("device", DEVICES)
    choose("trainer", TRAINER_NAMES)
    positive("lr")
    positive("init_std")
    if not math.isfinite(cfg.init_value):
        raise ConfigError(f"init_value: must be a finite number, got {cfg.init_value}")
    if not (math.isfinite(cfg.init_low) and math.isfinite(cfg.init_high) and cfg.init_low < cfg.init_high):
        raise ConfigError(f"init_low, init_high: must be finite numbers with init_low < init_high, "
                          f"got {cfg.init_low} and {cfg.init_high}")
    for key in ("seed", "split_seed"):  # what numpy and scikit-learn take as a seed
        if not 0 <= getattr(cfg, key) < 2**32:
            raise ConfigError(f"{key}: must be an integer in [0, 4294967295], got {getattr(cfg, key)}")
    if cfg.iterations < 1:
        raise ConfigError(f"iterations: must be >= 1, got {cfg.iterations}")
    if cfg.plot_every < 1:
        raise ConfigError(f"plot_every: must be >= 1, got {cfg.plot_every}")
    if not cfg.hidden or any(w < 1 for w in cfg.hidden):
        raise ConfigError(f"hidden: must be a non-empty list of widths >= 1, got {cfg.hidden}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum: must be in [0, 1), got {cfg.momentum}")
    for key in ("beta1", "beta2", "alpha"):  # as torch.optim checks them (alpha may be 1)
        if not (0 <= getattr(cfg, key) < 1 or (key == "alpha" and cfg.alpha == 1)):
            raise ConfigError(f"{key}: must be in [0, {'1]' if key == 'alpha' else '1)'}, got {getattr(cfg, key)}")
    if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        raise ConfigError(f"weight_decay: must be a finite number >= 0, got {cfg.weight_decay}")
    positive("eps")
    # a stratified split needs a sample of each class on each side
    samples, classes = facts.samples, facts.classes
    n_val = samples - train_size(cfg) if 0 < cfg.val_fraction < 1 else 0
    if not classes <= n_val <= samples - classes:
        raise ConfigError(f"val_fraction: must leave at least {classes} of the {samples} samples of {cfg.dataset} on each "
                          f"side of the split (one of each class), got {cfg.val_fraction}")
    if not 0 < cfg.target_accuracy <= 1:
        raise ConfigError(f"target_accuracy: must be in (0, 1], got {cfg.target_accuracy}")
    if cfg.hold_steps < 1:  # a hold longer than the run is allowed: it is never met (a sweep refuses it as its objective)
        raise ConfigError(f"hold_steps: must be >= 1, got {cfg.hold_steps}")
    if not 256 <= cfg.image_size <= 2048:
        raise ConfigError(f"image_size: must be in [256, 2048], got {cfg.image_size}")
    if not cfg.experiment:
        raise ConfigError("experiment: must be a non-empty name")
    return cfg


def build(values: dict[str, Any]) -> TrainConfig:
    """A validated TrainConfig from a flat dict of overrides."""
    defaults = TrainConfig()
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    checked = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{key}: unknown key; allowed: {', '.join(sorted(known))}")
        checked[key] = _check_type(key, value, getattr(defaults, key))
    if checked.get("dataset", defaults.dataset) != "wine" and "features" not in checked:
        checked["features"] = "all"  # the default pair is wine's
    return validate(dataclasses.replace(defaults, **checked))


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with a TOML value (`lr=0.5`, `hidden=[64, 64]`); bare words are strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set: expected key=value, got {text!r}")
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw.strip()


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file: {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"experiment file: {path} is not valid TOML ({e})") from None


def load(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the experiment file's values, then `--set` overrides."""
    values = read_toml(path) if path else {}
    values.update(parse_override(o) for o in overrides)
    return build(values)


def flatten(cfg: TrainConfig) -> dict[str, str]:
    """Every field as a string, for MLflow params."""
    return {k: str(v) for k, v in dataclasses.asdict(cfg).items()}


def from_params(params: dict[str, str]) -> TrainConfig:
    """The config a run was trained with, back from its MLflow params (see `flatten`)."""
    defaults = TrainConfig()
    values = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in params:
            continue
        raw, default = params[f.name], getattr(defaults, f.name)
        if isinstance(default, bool):
            values[f.name] = raw == "True"
        elif isinstance(default, str) or not raw.startswith("[") and isinstance(default, list):
            values[f.name] = raw  # a string as it was, whatever it starts with (features = "all")
        else:
            # numbers and lists: Python's str() of them is valid TOML ('a' is a literal string)
            values[f.name] = tomllib.loads(f"v = {raw}")["v"]
    return build(values)
