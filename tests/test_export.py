"""`make export`: a real sweep exported, each row checked against Optuna's trial and the MLflow
run it names; refusals in one line with no file made; a stopped write leaves no half file."""

import csv
import os
import re
import shutil

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from harness.core.config import ConfigError
from harness.core.train import CONVERGENCE, METRICS
from harness.study import export
from conftest import ROOT, run_cli
import test_make_variables
from test_make_variables import NASTY

make = test_make_variables.make  # the fixture: `make <target> NAME=value` records what the command got

STUDY = "export-study"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, session_store):
    """A 3-trial sweep (some trials reach the target, whose runs log iterations_to_target), plus a
    trial failed by hand that has no run: (environment, study file, the study as Optuna reads it)."""
    tmp = tmp_path_factory.mktemp("export")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": session_store,
           "OPTUNA_STORAGE": f"sqlite:///{tmp}/optuna.db"}
    study_file = tmp / "study.toml"
    study_file.write_text(f"""
experiment = "export-{tmp.name}"
iterations = 20
device = "cpu"
image_size = 256
plot_every = 20
target_accuracy = 0.6
hold_steps = 5
[sweep]
study = "{STUDY}"
trials = 3
[sweep.space]
lr = {{ low = 0.3, high = 1.0, log = true }}
seed = {{ low = 0, high = 9999 }}
""")
    proc = run_cli("sweep", str(study_file), env=env)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name=STUDY, storage=env["OPTUNA_STORAGE"])
    failed = study.ask({"lr": FloatDistribution(0.3, 1.0, log=True)})
    study.tell(failed, state=TrialState.FAIL)
    return env, study_file, study


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_trial_is_a_row_with_optunas_params_and_its_runs_final_metrics(swept, tmp_path):
    env, study_file, study = swept
    out = tmp_path / "new folder" / "trials.csv"
    proc = run_cli("export", str(study_file), str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote 4 trials of study '{STUDY}' to {out}"
    assert os.listdir(out.parent) == ["trials.csv"]  # nothing partial left beside it

    with open(out, newline="") as handle:
        header = next(csv.reader(handle))
    frame = study.trials_dataframe()
    params = [c for c in frame.columns if c.startswith("params_")]
    assert header == ["number", "state", *params, *METRICS, *CONVERGENCE, "mlflow_run_id"]
    assert params == ["params_lr", "params_seed"]

    rows = read_csv(out)
    trials = study.get_trials()
    assert [int(r["number"]) for r in rows] == [t.number for t in trials] == list(frame["number"])
    assert [r["state"] for r in rows] == [t.state.name for t in trials] == list(frame["state"])
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3 + ["FAIL"]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    for row, trial in zip(rows, trials):
        assert float(row["params_lr"]) == trial.params["lr"]
        assert row["params_seed"] == str(trial.params.get("seed", ""))
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id is None:  # the trial failed by hand: no run, no metrics
            assert row["mlflow_run_id"] == "" and all(row[name] == "" for name in (*METRICS, *CONVERGENCE))
            continue
        assert row["mlflow_run_id"] == run_id
        logged = client.get_run(run_id).data.metrics
        for name in METRICS:
            assert float(row[name]) == logged[name]
        for name in CONVERGENCE:  # a whole number of iterations, or nothing when the run never got there
            assert row[name] == (str(int(logged[name])) if name in logged else "")
    assert any(row["iterations_to_target"] for row in rows)  # the check above saw some values


def test_a_missing_study_is_named_with_those_there_and_nothing_is_created(swept, tmp_path):
    env, study_file, _ = swept
    out = tmp_path / "missing" / "trials.csv"
    proc = run_cli("export", "--study", "no-such-study", str(study_file), str(out), env=env)  # --study wins
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: study: no study named 'no-such-study' in {env['OPTUNA_STORAGE']}; "
                                   f"existing: {STUDY}")
    assert not out.parent.exists()


def test_a_missing_store_is_not_created_and_sweep_is_named(tmp_path, cli_env):
    env = {**cli_env, "OPTUNA_STORAGE": f"sqlite:///{tmp_path}/optuna.db"}
    proc = run_cli("export", "--study", STUDY, str(tmp_path / "out" / "trials.csv"), env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: study: no study named '{STUDY}': ") and "run make sweep first" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_a_tracking_store_that_does_not_exist_is_not_created(tmp_path):
    with pytest.raises(ConfigError, match="^MLFLOW_TRACKING_URI: .* does not exist"):
        export.tracker_for(f"sqlite:///{tmp_path}/mlflow.db")
    assert not list(tmp_path.iterdir())


def test_out_must_name_a_csv_file(tmp_path):
    for out, reason in ((tmp_path / "study.toml", "is not a .csv file's name"),  # OUT forgotten: the file given
                        (tmp_path, "is not a .csv file's name")):
        with pytest.raises(ConfigError, match=re.escape(f"OUT: '{out}' {reason}")):
            export.check_out(out)
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        export.check_out(tmp_path / "folder.csv")


def test_a_stopped_write_leaves_the_old_file_whole_and_nothing_beside_it(tmp_path):
    out = tmp_path / "trials.csv"
    out.write_text("the previous export\n")

    def rows():
        yield [0, "COMPLETE"]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export.write_csv(export.Table(["number", "state"], rows(), runs_missing=0), out)
    assert out.read_text() == "the previous export\n"
    assert os.listdir(tmp_path) == ["trials.csv"]


def test_mlflow_filters_quote_any_study_name_or_fall_back_to_the_tag():
    assert export.tag_filter("wine-sweep") == "tags.`optuna.study_name` = 'wine-sweep'"
    assert export.tag_filter("it's") == "tags.`optuna.study_name` = \"it's\""
    assert export.tag_filter(NASTY) == ""  # both quotes: the runs are matched by their tag instead


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_export_passes_each_value_as_typed_and_requires_out(make):
    assert make("export", CONFIG=NASTY, STUDY=NASTY, OUT=NASTY)["argv"] == [
        "-m", "harness", "export", "--study", NASTY, "--", NASTY, NASTY]
    assert make("export", OUT="-trials.csv")["argv"] == [
        "-m", "harness", "export", "--", "experiments/sweep.toml", "-trials.csv"]
    result = make("export", STUDY="wine-sweep")
    assert result.returncode and "OUT=file.csv is needed" in result.stderr
