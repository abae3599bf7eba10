"""The sweep at its edges: commands run at once, signals, stores that are not what they should be."""

import os
import signal
import subprocess
import sys

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import ROOT, run_cli, wait_until
from test_sweep import TINY, children, load_study, stores, write  # noqa: F401  (a fixture)



def sweep_process(env, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", "sweep", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(processes: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
    outcomes = []
    for p in processes:
        out, err = p.communicate(timeout=timeout)
        outcomes.append((p.returncode, out, err))
    return outcomes


def assert_consistent(env, study_name="tiny") -> None:
    """Every trial finished and its run ended with it; the parent ended; nothing left RUNNING."""
    study = load_study(env, study_name)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent = study.user_attrs["mlflow_parent_run_id"]
    runs = children(client, parent)
    assert all(t.state.is_finished() for t in study.get_trials()), [t.state for t in study.get_trials()]
    assert all(r.info.status != "RUNNING" for r in runs.values())
    assert client.get_run(parent).info.status != "RUNNING"


@pytest.mark.slow
def test_sweeps_started_together_add_exactly_the_sum_of_their_trials(tmp_path, stores):
    """Two first sweeps at once on an empty mlruns/ (they used to collide in MLflow's
    migrations and leave the store half made), then three at once on the study they made."""
    path = str(write(tmp_path, TINY))
    first = finish([sweep_process(stores, path, "--trials", "2") for _ in range(2)])
    assert [code for code, _, _ in first] == [0, 0], [err for _, _, err in first]
    assert len(load_study(stores).trials) == 4
    second = finish([sweep_process(stores, path, "--trials", str(n)) for n in (3, 2, 2)])
    assert [code for code, _, _ in second] == [0, 0, 0], [err for _, _, err in second]
    trials = load_study(stores).get_trials()
    assert len(trials) == 11 and all(t.state == TrialState.COMPLETE for t in trials)
    assert_consistent(stores)
    # the store works for what comes next
    assert run_cli("sweep", path, "--trials", "1", env=stores).returncode == 0
    assert len(load_study(stores).trials) == 12
