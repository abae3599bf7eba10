"""The trainers' declarations (harness/trainers/registry.py) and the dispatch that asks them."""

import dataclasses

import pytest
import torch
from mlflow import MlflowClient

from harness.core import config
from harness.core.config import INITS, TRAINER_NAMES, ConfigError, TrainConfig
from harness.trainers.registry import FOLLOWED, OUTSIDE, SHARED, TRAINERS, UNREAD, Only, choose
from conftest import run_cli
from harness.core.config import ACTIVATIONS, OPTIMIZERS
from harness.core.datasets import NAMES
from test_batched import KERNEL_DATASETS, TORCH_ONLY, configs, needs_compiler, torch_only


def test_every_config_field_is_declared_for_every_trainer():
    """A field added to TrainConfig without deciding what each trainer does with it fails here:
    a kernel must never train a config it silently ignores part of."""
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    for trainer in TRAINERS.values():
        undeclared = [f for f in fields if f not in trainer.fields]
        assert not undeclared, f"trainer {trainer.name}: declare what it does with {undeclared} (harness/trainers/registry.py)"
        assert set(trainer.fields) == set(fields), f"trainer {trainer.name} declares fields TrainConfig does not have"
        for key, rule in trainer.fields.items():
            assert rule in (FOLLOWED, SHARED, OUTSIDE, UNREAD) or isinstance(rule, Only), f"{trainer.name}.{key}: {rule!r}"
    assert set(TRAINERS) | {"auto"} == set(TRAINER_NAMES)


def test_the_parity_configs_train_every_declared_value():
    """tests/test_batched.py checks each trainer against the loop: the kernels on `configs()`
    (with one and two hidden layers, two features and all, and every dataset of 3 classes), the
    torch ops also on TORCH_ONLY. Together they use every value a trainer follows, every
    optimizer, activation and dataset, and each kernel's configs vary every key it follows."""
    cfgs = configs()
    assert {c.init for c in cfgs} == set(INITS)
    assert {c.momentum == 0 for c in cfgs} == {True, False}
    assert len({c.iterations for c in cfgs}) > 1 and len({c.lr for c in cfgs}) == len(cfgs)
    for trainer in TRAINERS.values():
        followed = {key for key, rule in trainer.fields.items() if rule == FOLLOWED}
        trained = cfgs + ([c for name in TORCH_ONLY for c in torch_only(name)] if trainer.name == "torch" else [])
        varied = {key for key in followed if len({getattr(c, key) for c in trained}) > 1}
        assert varied == followed, f"{trainer.name}: the parity configs never vary {followed - varied}"
    everything = cfgs + [c for name in TORCH_ONLY for c in torch_only(name)]
    assert {c.optimizer for c in everything} == set(OPTIMIZERS)
    assert {c.activation for c in everything} == set(ACTIVATIONS)
    assert {c.dataset for c in everything} | set(KERNEL_DATASETS) | {"csv:PATH"} == set(NAMES)


def test_auto_takes_the_fastest_trainer_that_covers_the_configs(cpu):
    one, two = config.build({"hidden": [32]}), config.build({"hidden": [16, 8]})
    kernel_here = TRAINERS["fused_cpu"].missing() is None
    assert choose([one], cpu, drawing=True).name == ("fused_cpu" if kernel_here else "torch")
    assert choose([two], cpu, drawing=True).name == "torch"
    assert choose([one], torch.device("cuda"), drawing=True).name == "torch"  # Triton draws no boundaries
    assert choose([dataclasses.replace(one, trainer="torch")], cpu, drawing=True).name == "torch"


def test_a_named_trainer_that_does_not_cover_the_config_is_a_config_error(cpu):
    with pytest.raises(ConfigError, match=r"^trainer: fused_cpu does not train this config: it trains one hidden layer "
                                          r"\(hidden=\[16, 8\]\); allowed here: auto, torch$"):
        choose([config.build({"hidden": [16, 8], "trainer": "fused_cpu"})], cpu, drawing=True)
    why = r"it trains on cuda only \(device='auto' on cpu\)"  # the device first: no kernel is looked for
    with pytest.raises(ConfigError, match=f"^trainer: triton does not train this config: {why}"):
        choose([config.build({"trainer": "triton"})], cpu, drawing=False)
    with pytest.raises(ConfigError, match="^trainer: 'c' is not one of auto, triton, fused_cpu, torch$"):
        config.build({"trainer": "c"})


@pytest.mark.parametrize("command", [
    ["train", "--set", "trainer=fused_cpu", "--set", "hidden=[16, 8]"],
    ["seeds", "--count", "3", "--set", "trainer=triton"],
    ["sweep", "experiments/sweep.toml", "--trials", "1", "--set", "trainer=fused_cpu", "--set", "hidden=[4, 4]"],
    ["train", "--set", "trainer=gpu"],
])
def test_the_cli_refuses_a_trainer_that_does_not_cover_the_config_before_anything_is_made(tmp_path, command):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "OPTUNA_STORAGE": f"sqlite:///{tmp_path}/optuna.db"}
    import os
    result = run_cli(*command, env={**os.environ, **env, "PYTHONPATH": "."})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: trainer: "), result.stderr
    assert list(tmp_path.iterdir()) == []  # no store was made


@pytest.mark.slow  # an end-to-end command: CI runs it in make test-slow, keeping make test under 4 minutes
@needs_compiler
@pytest.mark.parametrize("trainer", ["auto", "fused_cpu"])
def test_a_run_records_the_trainer_that_ran(tmp_path, trainer):
    import os
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_cli("train", "--set", f"trainer={trainer}", "--set", "iterations=12", "--set", "image_size=256",
                     "--set", "device=cpu", env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": "."})
    assert result.returncode == 0, result.stderr
    client = MlflowClient(uri)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    assert run.data.tags["trainer"] == ("torch" if trainer == "auto" else trainer)  # make train: the loop unless named
    assert run.data.params["trainer"] == trainer
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == list(range(13))
    assert run.info.status == "FINISHED"
