"""The Makefile passes each user's variable to the command as one argument, exactly as typed:
the real `make`, with PY replaced by a script that records its arguments."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

# were it run, it would only make files named pwned*, which the fixture looks for and removes
NASTY = "it's a \"study\" a,b \\ %; touch pwned $(touch pwned2) `touch pwned3` $(shell touch pwned4) #c"
VARIABLES = ("TRIALS", "STUDY", "WORKERS", "CONFIG", "EXPERIMENT", "SEEDS_CONFIG", "COUNT", "RUN", "STEP", "PORT",
             "BIND", "PG_PORT", "MLFLOW_PORT", "STORAGE", "TRACKING", "ARGS")
RECORDER = """import json, os, sys
from pathlib import Path
Path(__file__).with_name("argv.json").write_text(json.dumps(
    {"argv": sys.argv[1:], "storage": os.environ.get("OPTUNA_STORAGE"), "tracking": os.environ.get("MLFLOW_TRACKING_URI")}))
"""


@pytest.fixture
def make(tmp_path):
    """Run `make <target> NAME=value...` in the repository; returns what the command received."""
    before = set(ROOT.glob("pwned*"))
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    # none of the variables, nor a calling make's flags, come from the test's own environment
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES + ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def run(target, env_extra=None, **variables):
        (tmp_path / "argv.json").unlink(missing_ok=True)
        result = subprocess.run(
            ["make", "-s", "--no-print-directory", target, "STAMP=",
             f"PY={shlex.quote(sys.executable)} {shlex.quote(str(script))}",
             *(f"{name}={value}" for name, value in variables.items())],
            cwd=ROOT, env={**env, **(env_extra or {})}, capture_output=True, text=True, timeout=60)
        assert not set(ROOT.glob("pwned*")) - before and not list(tmp_path.glob("pwned*"))
        if result.returncode:
            return result
        return json.loads((tmp_path / "argv.json").read_text())

    yield run
    for made in set(ROOT.glob("pwned*")) - before:  # only after a failure above
        made.unlink()


def test_sweep_gets_the_study_name_as_one_argument(make):
    assert make("sweep", STUDY=NASTY, CONFIG=NASTY)["argv"] == ["-m", "harness", "sweep", NASTY, "--study", NASTY]


def test_compare_gets_each_option_as_one_argument(make):
    assert make("compare", STUDY=NASTY, RUN=NASTY, STEP=NASTY)["argv"] == [
        "-m", "harness", "compare", "experiments/sweep.toml", "--study", NASTY, "--run", NASTY, "--step", NASTY]


def test_train_splits_args_on_spaces_and_passes_each_word_as_typed(make):
    args = "--set  name=it's;touch$(touch\tpwned2)`touch pwned3` --set lr=0.5 \"a"
    assert make("train", ARGS=args, EXPERIMENT=NASTY)["argv"] == [
        "-m", "harness", "train", NASTY, "--set", "name=it's;touch$(touch", "pwned2)`touch", "pwned3`",
        "--set", "lr=0.5", '"a']


def test_seeds_and_sweep_take_args_as_train_does(make):
    args = "--set optimizer=adam --set name=it's;touch$(touch"
    words = ["--set", "optimizer=adam", "--set", "name=it's;touch$(touch"]
    assert make("seeds", ARGS=args, SEEDS_CONFIG=NASTY)["argv"] == ["-m", "harness", "seeds", NASTY, *words]
    assert make("sweep", ARGS=args, STUDY=NASTY)["argv"] == ["-m", "harness", "sweep", "experiments/sweep.toml",
                                                             "--study", NASTY, *words]


def test_worker_exports_storage_and_tracking_as_typed(make):
    got = make("worker", STORAGE=NASTY, TRACKING=NASTY + "'", TRIALS=NASTY, STUDY=NASTY, WORKERS=NASTY)
    assert got["argv"] == ["-m", "harness", "sweep", "experiments/sweep.toml", "--total", NASTY,
                           "--study", NASTY, "--workers", NASTY]
    assert got["storage"] == NASTY and got["tracking"] == NASTY + "'"


def test_services_ui_and_seeds_get_their_values_as_typed(make):
    assert make("services", BIND=NASTY, PG_PORT=NASTY, MLFLOW_PORT=NASTY)["argv"] == [
        "-m", "harness", "services", "start", "--host", NASTY, "--pg-port", NASTY, "--mlflow-port", NASTY]
    assert make("ui", CONFIG=NASTY, PORT=NASTY)["argv"] == ["-m", "harness", "ui", NASTY, "--port", NASTY]
    assert make("seeds", SEEDS_CONFIG=NASTY, COUNT=NASTY)["argv"] == ["-m", "harness", "seeds", NASTY, "--count", NASTY]


def test_plain_values_pass_as_before_and_unset_ones_not_at_all(make):
    assert make("sweep", STUDY="tiny", TRIALS=3, WORKERS=2)["argv"][4:] == ["--trials", "3", "--study", "tiny",
                                                                             "--workers", "2"]
    assert make("sweep")["argv"] == ["-m", "harness", "sweep", "experiments/sweep.toml"]
    assert make("compare")["argv"] == ["-m", "harness", "compare", "experiments/sweep.toml"]
    assert make("train")["argv"] == ["-m", "harness", "train", "experiments/lecture.toml"]
    assert make("seeds")["argv"] == ["-m", "harness", "seeds", "experiments/seeds.toml"]
    assert make("services")["argv"][4:] == ["--host", "127.0.0.1", "--pg-port", "5433", "--mlflow-port", "5001"]
    got = make("worker", STORAGE="postgresql://u@h:5433/optuna", TRACKING="http://h:5001", TRIALS=20)
    assert got == {"argv": ["-m", "harness", "sweep", "experiments/sweep.toml", "--total", "20"],
                   "storage": "postgresql://u@h:5433/optuna", "tracking": "http://h:5001"}


def test_a_value_from_the_environment_is_not_expanded_either(make):
    got = make("sweep", env_extra={"STUDY": NASTY})
    assert got["argv"][4:] == ["--study", NASTY]


def test_a_newline_is_refused_before_anything_runs(make, tmp_path):
    # make would run the text after a newline as a command of its own, quoted or not
    result = make("sweep", STUDY="x\ntouch pwned")
    assert result.returncode and "STUDY holds a newline" in result.stderr
    assert not (tmp_path / "argv.json").exists()
    result = make("worker", STORAGE="x\ntouch pwned", TRACKING="t", TRIALS=1)
    assert result.returncode and "STORAGE holds a newline" in result.stderr


def test_worker_still_requires_its_variables(make):
    result = make("worker", TRACKING="t", TRIALS=1)
    assert result.returncode and "STORAGE=postgresql://" in result.stderr
