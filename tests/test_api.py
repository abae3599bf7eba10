"""The Python API (harness/api.py): every example of docs/api.md runs, tracking=False writes
nothing, a tracked call leaves the run its command would, bad keys are the command line's line,
and the same config gives the same numbers."""

import re
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import PARITY, ROOT
from harness import api, compare, seed_scan, sweep, train
from harness.core import config
from harness.core.config import ConfigError
from harness.study import config as study_config

TINY = {"device": "cpu", "iterations": 30, "image_size": 256}


def python_blocks(path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)


@pytest.fixture
def stores(tmp_path, monkeypatch, session_store):
    """The tracking store of the session and an Optuna storage of the test's own, through the
    variables a user sets; the working folder a temporary one with the experiment files."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", session_store)
    monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{tmp_path}/optuna.db")
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_every_example_of_the_api_page_runs(stores):
    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) >= 8
    namespace = {}
    for block in blocks:  # in order, in one namespace, as a reader pastes them
        exec(compile(block, "docs/api.md", "exec"), namespace)
    assert (stores / "boundary-60.png").is_file() and (stores / "report-seeds" / "report.html").is_file()
    assert not (stores / "mlruns").exists()  # the tracked examples went to the stores set above


def test_without_tracking_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    work, temporary = tmp_path / "work", tmp_path / "temporary"
    work.mkdir(), temporary.mkdir()
    monkeypatch.chdir(work)  # where mlruns/ would be made
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))  # where a temporary file would be left
    run = train(TINY, tracking=False)
    scan = seed_scan(TINY, count=4, tracking=False)
    space = {"lr": {"low": 0.1, "high": 1.0}}
    study = sweep({**TINY, "sweep": {"space": space, "sampler": "random"}}, trials=2, tracking=False)
    assert run.run_id is None and run.link is None and scan.run_id is None and study.run_id is None
    assert list(work.iterdir()) == []
    # torch's optimizer step makes its compiler's cache folder in the temporary folder, empty
    assert [p for p in temporary.iterdir() if not (p.name.startswith("torchinductor_") and not any(p.iterdir()))] == []


def test_a_tracked_train_is_a_finished_run_with_its_metrics_and_images(tmp_path, monkeypatch, session_store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", session_store)
    monkeypatch.chdir(tmp_path)
    run = train(TINY, experiment="api-train", plot_every=10)
    client = MlflowClient(session_store)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.data.params["iterations"] == "30"
    assert [m.value for m in sorted(client.get_metric_history(run.run_id, "train_loss"), key=lambda m: m.step)] \
        == run.history["train_loss"]
    assert (logged.data.metrics.get("iterations_to_target") is None) == (run.iterations_to_target is None)
    assert sorted(run.boundaries) == [0, 10, 20, 30] and run.boundaries[30].size == (256, 256)
    assert run.run_id in run.link and run.trainer == "torch"
    # the untracked run of the same config gives the same numbers
    assert train(TINY, tracking=False, boundaries=False).history == run.history


def test_a_tracked_seed_scan_is_the_run_make_seeds_logs(tmp_path, monkeypatch, session_store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", session_store)
    monkeypatch.chdir(tmp_path)
    scan = seed_scan(TINY, count=5, first=2, experiment="api-scan")
    run = MlflowClient(session_store).get_run(scan.run_id)
    assert run.info.status == "FINISHED" and run.data.params["seed"] == "2..6" and run.data.tags["scan"] == "seeds"
    assert run.data.metrics["diverged"] == scan.summary["diverged"] == 0


@pytest.mark.parametrize("call, message", [
    (lambda: train(momentum=1, tracking=False), "momentum: must be in [0, 1), got 1.0"),
    (lambda: train({"lr": "fast"}, tracking=False), "lr: expected a number, got 'fast'"),
    (lambda: seed_scan(count=0, tracking=False), "seeds.count: must be an integer >= 1, got 0"),
    (lambda: seed_scan({"seeds": {"cont": 3}}, tracking=False), "seeds.cont: unknown key; allowed: count, first"),
    (lambda: sweep({"sweep": {"sampler": "grid"}}, tracking=False), "sweep.sampler: 'grid' is not one of tpe, random"),
    (lambda: compare(run="a", study="b"), "--study, --run: give one, a study or a seed scan's run"),
])
def test_a_bad_key_is_the_command_lines_one_line(call, message):
    with pytest.raises(ConfigError) as raised:
        call()
    assert str(raised.value) == message


def test_an_unknown_key_is_the_line_the_command_line_prints():
    with pytest.raises(ConfigError) as from_api:
        train(lrr=0.5, tracking=False)
    with pytest.raises(ConfigError) as from_cli:
        config.load(None, ["lrr=0.5"])  # what `python -m harness train --set lrr=0.5` reads with
    assert str(from_api.value) == str(from_cli.value) and "\n" not in str(from_api.value)


def test_a_seed_scan_table_has_a_row_per_seed_measured_as_the_loop_measures_it():
    scan = seed_scan(TINY, count=6, first=3, iterations=120, tracking=False)
    table = scan.table
    assert len(table) == 6 and table["seed"].tolist() == [3, 4, 5, 6, 7, 8] == scan.seeds
    assert list(table.columns) == ["seed", "iterations_to_target", "iterations_to_target_held", "diverged",
                                   "final_train_loss", "final_train_accuracy", "final_val_loss", "final_val_accuracy"]
    assert scan.history["train_loss"].shape == (121, 6)
    for k in (0, 5):
        alone = train(TINY, seed=3 + k, iterations=120, tracking=False, boundaries=False)
        for name in ("iterations_to_target", "iterations_to_target_held"):
            cell, expected = table[name].iloc[k], getattr(alone, name)
            assert pd.isna(cell) if expected is None else cell == expected
        np.testing.assert_allclose(scan.history["val_loss"][:, k], alone.history["val_loss"], rtol=1e-5, atol=1e-5)


def test_a_named_kernel_trains_without_tracking_as_the_loop_does():
    try:
        kernel = train(TINY, trainer="fused_cpu", tracking=False)
    except ConfigError as e:  # no C compiler on this machine
        pytest.skip(f"the CPU kernel cannot run here: {e}")
    loop = train(TINY, tracking=False)
    assert kernel.trainer == "fused_cpu" and kernel.boundaries == {} and loop.trainer == "torch"
    for name in loop.history:
        np.testing.assert_allclose(kernel.history[name], loop.history[name], **PARITY)


def test_the_same_config_gives_the_same_numbers():
    a, b = train(TINY, seed=4, tracking=False), train(TINY, seed=4, tracking=False)
    assert a.history == b.history
    assert [np.asarray(i).tobytes() for i in a.boundaries.values()] == [np.asarray(i).tobytes() for i in b.boundaries.values()]
    assert train(TINY, seed=5, tracking=False).history != a.history
    first, second = seed_scan(TINY, count=4, tracking=False), seed_scan(TINY, count=4, tracking=False)
    assert first.table.equals(second.table)
    assert all(np.array_equal(first.history[m], second.history[m], equal_nan=True) for m in first.history)


def test_configs_from_a_file_a_dict_a_train_config_and_overrides_agree(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('hidden = [8]\nlr = 0.4\ninit = "normal"\n')
    from_file = api.train_config(path, seed=2)
    assert from_file == api.train_config({"hidden": [8], "lr": 0.4, "init": "normal"}, seed=2)
    assert from_file == api.train_config(config.build({"hidden": [8], "init": "normal", "lr": 0.4, "seed": 2}))
    assert from_file == api.train_config(config.load(path, ["seed=2"]))
    keys = {"hidden": [8]}
    api.train_config(keys, lr=0.1)
    assert keys == {"hidden": [8]}  # the caller's dict is left as it was


def test_a_sweep_from_a_dict_reads_as_the_same_file_does(tmp_path):
    text = ('iterations = 80\n[sweep]\nstudy = "s"\nobjective = ["val_loss", "iterations_to_target"]\n'
            '[sweep.space]\nlr = { low = 0.01, high = 1.0, log = true }\ninit = { choices = ["default", "zeros"] }\n')
    path = tmp_path / "s.toml"
    path.write_text(text)
    values = study_config.config.read_toml(path)
    from_file, from_dict = study_config.load(path, ["seed=3"]), api.sweep_of(values, {"seed": 3})
    assert from_dict.settings == from_file.settings and from_dict.base == from_file.base
    assert api.sweep_of(path, {"seed": 3}).settings == from_file.settings
    with pytest.raises(ConfigError, match=r"^sweep\.space\.iterations: is also fixed"):
        api.sweep_of({"iterations": 80, "sweep": {"space": {"iterations": {"low": 20, "high": 40}}}})


def test_a_sweep_without_tracking_keeps_each_trials_curves_and_its_objective():
    space = {"lr": {"low": 0.05, "high": 1.5, "log": True}, "seed": {"low": 0, "high": 50}}
    result = sweep({**TINY, "iterations": 60, "sweep": {"space": space}}, trials=4, tracking=False)
    assert result.counts["COMPLETE"] == 4 and sorted(result.curves) == [0, 1, 2, 3]
    assert result.summary is None and result.study.study_name == "wine-sweep"
    for trial in result.study.trials:  # the objective is the final val_loss of the trial's curve
        assert trial.value == result.curves[trial.number]["val_loss"][-1]
        assert len(result.curves[trial.number]["val_loss"]) == 61
    assert result.best_values == [min(t.value for t in result.study.trials)]
    with pytest.raises(ConfigError, match="^workers, total"):
        sweep(TINY, workers=2, tracking=False)


@pytest.mark.slow
def test_a_sweep_without_tracking_makes_the_trials_a_tracked_sweep_makes(stores):
    cfg = {**TINY, "iterations": 80, "sweep": {"objective": "iterations_to_target", "sampler_seed": 3,
                                               "space": {"lr": {"low": 0.05, "high": 1.5, "log": True},
                                                         "seed": {"low": 0, "high": 999}}}}
    tracked, untracked = sweep(cfg, trials=5, study="api-same"), sweep(cfg, trials=5, tracking=False)
    assert [(t.params, t.values) for t in tracked.study.trials] == [(t.params, t.values) for t in untracked.study.trials]
    assert tracked.best_params == untracked.best_params and tracked.run_id and tracked.summary.parent_run_id == tracked.run_id
