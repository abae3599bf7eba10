import pytest
from sklearn.datasets import load_wine

from harness.core import config
from harness.core.config import ConfigError, WINE_FEATURES
from conftest import run_cli


def test_feature_names_match_sklearn():
    assert tuple(load_wine().feature_names) == WINE_FEATURES


def test_defaults_are_valid_and_overrides_apply(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('lr = 0.5\nhidden = [16, 8]\nfeatures = "all"\n')
    cfg = config.load(path, ["iterations=7", "init=xavier_uniform", "momentum=0.9"])
    assert (cfg.lr, cfg.hidden, cfg.features) == (0.5, [16, 8], "all")
    assert (cfg.iterations, cfg.init, cfg.momentum) == (7, "xavier_uniform", 0.9)


def test_int_is_accepted_where_a_float_is_expected():
    assert config.build({"lr": 1}).lr == 1.0


@pytest.mark.parametrize("values, key, allowed", [
    ({"lrr": 0.1}, "lrr", "allowed: device, experiment"),
    ({"lr": "fast"}, "lr", "expected a number"),
    ({"iterations": 1.5}, "iterations", "expected an integer"),
    ({"iterations": True}, "iterations", "expected an integer"),
    ({"hidden": 32}, "hidden", "list of integers"),
    ({"lr": 0}, "lr", "must be a finite number > 0"),
    ({"lr": -1.0}, "lr", "must be a finite number > 0"),
    ({"lr": float("inf")}, "lr", "must be a finite number > 0"),
    ({"init_std": float("nan")}, "init_std", "must be a finite number > 0"),
    ({"val_fraction": 0.99}, "val_fraction", "at least 3 of the 178 samples on each side"),
    ({"val_fraction": 0.005}, "val_fraction", "at least 3 of the 178 samples on each side"),
    ({"image_size": 100000}, "image_size", "[256, 2048]"),
    ({"iterations": 0}, "iterations", "must be >= 1"),
    ({"features": ["alcohol", "sweetness"]}, "features", "allowed: \"all\" or names from alcohol"),
    ({"features": "some"}, "features", "\"all\" or a list"),
    ({"init": "ones"}, "init", "one of default, xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal, normal, uniform, orthogonal, constant, zeros"),
    ({"init_value": float("nan")}, "init_value", "must be a finite number"),
    ({"init_low": 0.5}, "init_low, init_high", "must be finite numbers with init_low < init_high, got 0.5 and 0.1"),
    ({"device": "tpu"}, "device", "one of auto, cpu, cuda, mps"),
    ({"momentum": 1.0}, "momentum", "[0, 1)"),
    ({"image_size": 64}, "image_size", "[256, 2048]"),
    ({"split_seed": -1}, "split_seed", "[0, 4294967295]"),
    ({"seed": 2**32}, "seed", "[0, 4294967295]"),
])
def test_bad_values_name_the_key_and_what_is_allowed(values, key, allowed):
    with pytest.raises(ConfigError) as err:
        config.build(values)
    message = str(err.value)
    assert message.startswith(f"{key}:") and allowed in message and "\n" not in message


def test_override_syntax():
    assert config.parse_override("hidden=[64, 64]") == ("hidden", [64, 64])
    assert config.parse_override("init=normal") == ("init", "normal")
    assert config.parse_override("lr=1e-2") == ("lr", 0.01)
    with pytest.raises(ConfigError, match="--set: expected key=value"):
        config.parse_override("lr")


def test_missing_experiment_file():
    with pytest.raises(ConfigError, match="experiment file: nope.toml does not exist"):
        config.load("nope.toml")


def missing_device() -> str:
    import torch
    return "cuda" if not torch.cuda.is_available() else "mps"


def test_cli_config_error_is_one_line_exit_2_and_logs_nothing(cli_env, tmp_path):
    env = {**cli_env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/untouched.db"}
    for bad in (["--set", "lr=-1"], ["--set", "init=ones"], ["--set", "colour=red"], ["--set", f"device={missing_device()}"]):
        proc = run_cli("train", *bad, env=env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not (tmp_path / "untouched.db").exists()  # nothing was logged, not even a store


def test_a_sweep_whose_values_cannot_work_is_refused_before_anything_is_created(tmp_path):
    """A fixed value, or any corner of a searched range, that a trial would fail on: one line,
    exit 2, neither store made."""
    import os
    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "OPTUNA_STORAGE": f"sqlite:///{tmp_path}/optuna.db"}
    space = tmp_path / "space.toml"
    space.write_text("[sweep]\ntrials = 2\n[sweep.space]\nsplit_seed = { low = -5, high = -1 }\n")
    for args, key in ((["sweep", "--trials", "2", "--set", "split_seed=-1"], "split_seed:"),
                      (["sweep", str(space)], "sweep.space.split_seed:")):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["space.toml"]
