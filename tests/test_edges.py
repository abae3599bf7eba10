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
from harness.study_storage import PARENT_RUN_ATTR, RUN_ID_ATTR
from test_sweep import LONG, TINY, children, load_study, stores, write  # noqa: F401  (a fixture)



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


def wait_for_a_running_trial(env, proc, timeout=120):
    """The trial `proc`'s sweep is training, with metrics in the store."""
    def running():
        try:
            trials = load_study(env).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # the study is not created yet
            return None
        if trials and RUN_ID_ATTR in trials[0].user_attrs:
            client = MlflowClient(env["MLFLOW_TRACKING_URI"])
            if client.get_metric_history(trials[0].user_attrs[RUN_ID_ATTR], "train_loss"):
                return trials[0]
        return None

    if not wait_until(lambda: running() is not None or proc.poll() is not None, timeout, interval=0.3):
        proc.kill()
        raise AssertionError("no trial started")
    assert proc.poll() is None, proc.communicate()
    return running()


def assert_killed(env, trial) -> None:
    """The trial FAILED, its run and the parent KILLED: nothing left for a grace period."""
    study = load_study(env)
    assert study.get_trials()[trial.number].state == TrialState.FAIL
    assert all(t.state != TrialState.RUNNING for t in study.get_trials())
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(trial.user_attrs[RUN_ID_ATTR])
    assert run.info.status == "KILLED" and run.data.tags["optuna.trial_state"] == "FAILED"
    assert client.get_run(study.user_attrs[PARENT_RUN_ATTR]).info.status == "KILLED"


@pytest.mark.slow
def test_sigterm_ends_the_sweep_as_ctrl_c_does(tmp_path, stores):
    """`kill <pid>` (a scheduler, `docker stop`): trial FAILED, its run and the parent KILLED,
    the continue line, exit 143."""
    proc = sweep_process(stores, str(write(tmp_path, LONG)), "--trials", "2")
    trial = wait_for_a_running_trial(stores, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "continue the study with: make sweep STUDY=tiny CONFIG=" in err and "Traceback" not in err
    assert_killed(stores, trial)


@pytest.mark.slow
def test_ctrl_c_with_the_output_in_a_pipe_ends_the_sweep_as_on_a_terminal(tmp_path, stores):
    """`make sweep 2>&1 | tee log`, then Ctrl-C: the whole foreground group gets SIGINT, tee
    exits, and the sweep's output goes to a closed pipe while it ends its runs."""
    status = tmp_path / "status"
    command = (f"{sys.executable} -m harness sweep {write(tmp_path, LONG)} --trials 2 2>&1 | tee {tmp_path / 'log'}"
               f" > /dev/null; echo ${{PIPESTATUS[0]}} > {status}")
    shell = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=stores, start_new_session=True)
    trial = wait_for_a_running_trial(stores, shell)
    os.killpg(shell.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
    shell.wait(timeout=120)
    assert status.read_text().strip() == "130"
    assert_killed(stores, trial)


@pytest.mark.slow
def test_a_sweep_in_which_no_trial_completes_exits_1_naming_the_first_error(tmp_path, stores, monkeypatch, capsys):
    """It used to exit 0, with a FINISHED parent, after printing `0 complete, 3 fail`."""
    from harness.__main__ import main
    from harness.sweep import ReportToTrial

    def broken(self, step, metrics):
        raise RuntimeError(f"broken trial {self.trial.number}")

    monkeypatch.setattr(ReportToTrial, "on_step", broken)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(["sweep", str(write(tmp_path, TINY)), "--trials", "2"])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("error: not one of this sweep's 2 trials completed; the first, trial 0: "
                    "RuntimeError: broken trial 0")
    study = load_study(stores)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    assert client.get_run(study.user_attrs[PARENT_RUN_ATTR]).info.status == "FAILED"

    monkeypatch.undo()  # a later sweep whose trials work exits 0 and finishes the parent
    assert run_cli("sweep", str(write(tmp_path, TINY)), "--trials", "1", env=stores).returncode == 0
    assert client.get_run(study.user_attrs[PARENT_RUN_ATTR]).info.status == "FINISHED"
