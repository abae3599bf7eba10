import pytest
import torch
from sklearn.datasets import load_wine

from harness.core import config
from harness.core.config import ConfigError
from harness.core.datasets import WINE_FEATURES
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
    ({"lrr": 0.1}, "lrr", "allowed: activation, alpha, beta1"),
    ({"lr": "fast"}, "lr", "expected a number"),
    ({"iterations": 1.5}, "iterations", "expected an integer"),
    ({"iterations": True}, "iterations", "expected an integer"),
    ({"hidden": 32}, "hidden", "list of integers"),
    ({"lr": 0}, "lr", "must be a finite number > 0"),
    ({"lr": -1.0}, "lr", "must be a finite number > 0"),
    ({"lr": float("inf")}, "lr", "must be a finite number > 0"),
    ({"init_std": float("nan")}, "init_std", "must be a finite number > 0"),
    ({"val_fraction": 0.99}, "val_fraction", "at least 3 of the 178 samples of wine on each side"),
    ({"val_fraction": 0.005}, "val_fraction", "at least 3 of the 178 samples of wine on each side"),
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
    # the keys of other datasets, optimizers and activations
    ({"dataset": "mnist"}, "dataset", "one of wine, iris, breast_cancer, moons, circles, blobs, csv:PATH"),
    ({"dataset": "csv:no-such-file.csv", "label": "y"}, "dataset", "'no-such-file.csv' is not a readable file"),
    ({"dataset": "csv:no-such-file.csv"}, "label", "needs label = the name of its target column"),
    ({"dataset": "moons", "n_samples": 5}, "n_samples", "[10, 1000000]"),
    ({"dataset": "circles", "noise": -0.1}, "noise", "finite number >= 0"),
    ({"dataset": "blobs", "data_seed": -1}, "data_seed", "[0, 4294967295]"),
    ({"dataset": "iris", "features": ["alcohol", "hue"]}, "features", "names from sepal length (cm), sepal width (cm)"),
    ({"dataset": "iris", "val_fraction": 0.99}, "val_fraction", "at least 3 of the 150 samples of iris"),
    ({"optimizer": "lbfgs"}, "optimizer", "one of sgd, adam, adamw, rmsprop"),
    ({"activation": "swish"}, "activation", "one of relu, tanh, gelu, sigmoid, leaky_relu"),
    ({"nesterov": "yes"}, "nesterov", "expected true or false"),
    ({"weight_decay": -0.1}, "weight_decay", "finite number >= 0"),
    ({"beta1": 1.0}, "beta1", "[0, 1)"),
    ({"beta2": -0.5}, "beta2", "[0, 1)"),
    ({"alpha": 1.5}, "alpha", "[0, 1]"),
    ({"eps": 0}, "eps", "finite number > 0"),
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
    for bad in (["--set", "lr=-1"], ["--set", "init=ones"], ["--set", "colour=red"], ["--set", f"device={missing_device()}"],
                ["--set", "dataset=mnist"], ["--set", "optimizer=lbfgs", "--set", "activation=relu"],
                ["--set", "dataset=csv:missing.csv", "--set", "label=y"]):
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


CSV_TEXT = "width,height,colour,kind\n" + "".join(
    f"{w},{h},{c},{k}\n" for w, h, c, k in [(1.0, 2.0, "red", "a"), (1.5, 2.5, "red", "a"), (1.2, 1.8, "blue", "a"),
                                            (3.0, 0.5, "blue", "b"), (3.5, 0.2, "red", "b"), (3.2, 0.4, "blue", "b"),
                                            (0.9, 2.2, "red", "a"), (3.1, 0.6, "red", "b"), (1.1, 2.1, "blue", "a"),
                                            (3.3, 0.3, "blue", "b")])


def test_a_csv_dataset_takes_its_numeric_columns_and_its_label(tmp_path, cpu):
    from harness.core import data as data_lib

    path = tmp_path / "shapes.csv"
    path.write_text(CSV_TEXT)
    cfg = config.build({"dataset": f"csv:{path}", "label": "kind"})
    assert cfg.features == "all" and config.train_size(cfg) == 7
    data = data_lib.load(cfg, cpu)
    assert data.class_names == ("a", "b") and data.n_features == 2  # the text column is not an input
    with pytest.raises(ConfigError, match=r"^label: 'type' is not a column of .*shapes.csv; its columns: width, height, colour, kind$"):
        config.build({"dataset": f"csv:{path}", "label": "type"})
    with pytest.raises(ConfigError, match=r"^features: unknown feature 'colour' of csv:"):
        config.build({"dataset": f"csv:{path}", "label": "kind", "features": ["width", "colour"]})
    path.write_text(CSV_TEXT + "2.0,,red,a\n")
    with pytest.raises(ConfigError, match=r"^dataset: .* has 1 row\(s\) with a missing value"):
        config.build({"dataset": f"csv:{path}", "label": "kind"})
    path.write_text(CSV_TEXT + "2.0,inf,red,a\n")
    with pytest.raises(ConfigError, match=r"^dataset: .* has 1 row\(s\) with an infinite value"):
        config.build({"dataset": f"csv:{path}", "label": "kind"})


def test_every_dataset_loads_with_its_classes_and_plane(cpu):
    from harness.core import data as data_lib

    for name, classes, features in (("iris", 3, 4), ("breast_cancer", 2, 30), ("moons", 2, 2), ("circles", 2, 2),
                                    ("blobs", 3, 2)):
        data = data_lib.load(config.build({"dataset": name}), cpu)
        assert (data.n_classes, data.n_features) == (classes, features), name
        assert data.plane.points.shape == (len(data.y_train), 2)
    moons = config.build({"dataset": "moons", "n_samples": 100, "noise": 0.3, "data_seed": 4})
    again = data_lib.load(moons, cpu)
    assert torch.equal(data_lib.load(moons, cpu).x_train, again.x_train)
    other = data_lib.load(config.build({"dataset": "moons", "n_samples": 100, "noise": 0.3, "data_seed": 5}), cpu)
    assert not torch.equal(other.x_train, again.x_train)  # data_seed draws other points


def test_a_run_config_comes_back_from_its_params():
    cfg = config.build({"dataset": "moons", "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "activation": "gelu",
                        "eps": 1e-6, "noise": 0.05, "run_name": "[a"})
    assert config.from_params(config.flatten(cfg)) == cfg
    for features in ("all", ["alcohol", "hue"]):
        cfg = config.build({"features": features, "hidden": [8, 4]})
        assert config.from_params(config.flatten(cfg)) == cfg


def test_a_run_on_a_csv_dataset_records_its_file_s_hash(tmp_path, cpu):
    import hashlib

    from harness.experiment import run_params

    path = tmp_path / "shapes.csv"
    path.write_text(CSV_TEXT)
    params = run_params(config.build({"dataset": f"csv:{path}", "label": "kind"}), cpu)
    assert params["dataset_sha256"] == hashlib.sha256(CSV_TEXT.encode()).hexdigest()
    assert "dataset_sha256" not in run_params(config.build({}), cpu)
