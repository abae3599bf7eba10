"""The sweep at its edges: commands run at once, signals, stores that are not what they should be."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import ROOT, UiProcess, free_port, run_cli, wait_until
from harness.study import config as study_config
from harness.core.config import ConfigError
from harness.study.sweep import run_sweep
from harness.study.storage import PARENT_RUN_ATTR, RUN_ID_ATTR
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
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_ends_the_sweep_as_ctrl_c_does(tmp_path, stores, workers):
    """`kill <pid>` (a scheduler, `docker stop`): trial FAILED, its run and the parent KILLED,
    the continue line, exit 143; the sweep's process passes it on to its workers."""
    proc = sweep_process(stores, str(write(tmp_path, LONG)), "--trials", "2", "--workers", workers)
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
    from harness.study.trial import ReportToTrial

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


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A study of 2 trials in its own mlruns/-like folder, to be copied and spoiled."""
    folder = tmp_path_factory.mktemp("pristine")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
           "OPTUNA_STORAGE": f"sqlite:///{folder}/optuna.db"}
    proc = run_cli("sweep", str(write(folder, TINY)), "--trials", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    return folder


def spoiled_copy(pristine, tmp_path, name: str, how: str) -> dict:
    """The pristine stores copied into tmp_path/mlruns, with `name` emptied, halved, overwritten
    at its header or removed; the environment that points a command at them."""
    store = tmp_path / "mlruns"
    shutil.copytree(pristine, store, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    path = store / name
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "half":
        path.write_bytes(data[:len(data) // 2])
    elif how == "header":
        path.write_bytes(b"\0" * 100 + data[100:])
    elif how == "migration":  # what two first sweeps at once used to leave
        connection = sqlite3.connect(path)
        with connection:  # commits
            connection.execute("CREATE TABLE _alembic_tmp_experiments (id INTEGER)")
        connection.close()  # and checkpoints the WAL into the file, before the test's snapshot
    else:
        path.unlink()
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
            "OPTUNA_STORAGE": f"sqlite:///{store}/optuna.db"}


def snapshot(folder):
    """The stores' files (SQLite may add its WAL index files beside a store it reads: not content)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


@pytest.mark.parametrize("name, how, says", [
    ("mlflow.db", "empty", "mlflow.db: is empty, the parent run of study 'tiny' in"),
    ("mlflow.db", "missing", "mlflow.db: is missing, the parent run of study 'tiny' in"),
    ("optuna.db", "empty", "optuna.db: is empty, but"),
    ("optuna.db", "missing", "optuna.db: is missing, but"),
    ("mlflow.db", "half", "mlflow.db: truncated"),
    ("optuna.db", "half", "optuna.db: truncated"),
    ("mlflow.db", "header", "mlflow.db: not an SQLite database"),
    ("mlflow.db", "migration", "mlflow.db: half made: a migration was cut short (_alembic_tmp_experiments is left)"),
])
def test_a_store_missing_empty_or_damaged_on_one_side_is_refused_before_anything_is_written(
        pristine, tmp_path, monkeypatch, name, how, says):
    """An emptied mlflow.db used to give a new store and a second parent, an emptied optuna.db a
    new study, a half file `database disk image is malformed` tracebacks."""
    env = spoiled_copy(pristine, tmp_path, name, how)
    for key in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        monkeypatch.setenv(key, env[key])
    before = snapshot(tmp_path / "mlruns")
    with pytest.raises(ConfigError) as refused:
        run_sweep(study_config.load(write(tmp_path, TINY)), trials=1, progress=False)
    assert says in str(refused.value) and "\n" not in str(refused.value)
    assert "to start afresh, choose another study (STUDY=name) or move" in str(refused.value)
    assert snapshot(tmp_path / "mlruns") == before  # nothing written, nothing made


def test_the_command_line_says_so_in_one_line_and_exits_2(pristine, tmp_path):
    env = spoiled_copy(pristine, tmp_path, "mlflow.db", "empty")
    proc = run_cli("sweep", str(write(tmp_path, TINY)), "--trials", "1", env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path}/mlruns/mlflow.db: is empty"), proc.stderr


@pytest.mark.parametrize("how", ["half", "header"])
def test_every_command_refuses_a_damaged_store_before_mlflow_opens_it(pristine, tmp_path, how):
    """`make compare`, `make train`, `make ui`: all open the store through a Tracker."""
    from harness.tracking.tracker import Tracker

    env = spoiled_copy(pristine, tmp_path, "mlflow.db", how)
    with pytest.raises(ConfigError, match=f"^{tmp_path}/mlruns/mlflow.db: (truncated|not an SQLite)"):
        Tracker(env["MLFLOW_TRACKING_URI"])


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs at tmp_path/disk, as a user's nearly full disk or a store made read-only."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def disk_env(disk) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{disk}/mlflow.db",
            "OPTUNA_STORAGE": f"sqlite:///{disk}/optuna.db"}


@pytest.mark.slow
def test_a_full_disk_stops_the_sweep_in_one_line_and_the_next_sweep_recovers(small_disk, tmp_path):
    """It used to print ~600 traceback lines, leave the parent RUNNING, and a later sweep relabelled
    a finished trial's run FAILED."""
    env = disk_env(small_disk)
    path = str(write(tmp_path, TINY.replace("iterations = 30", "iterations = 200").replace("image_size = 256", "image_size = 512")))
    proc = run_cli("sweep", path, "--trials", "200", env=env)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "%|" not in line and line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"error: {small_disk}/: the disk is full"), proc.stderr
    study = load_study(env)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    ended = {t.number: client.get_run(t.user_attrs[RUN_ID_ATTR]).info.status
             for t in study.get_trials() if RUN_ID_ATTR in t.user_attrs}
    assert 0 < len(study.trials) < 200

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space again
    time.sleep(4)  # past the grace period: a trial the full disk left RUNNING is failed and retried
    proc = run_cli("sweep", path, "--trials", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    for number, status in ended.items():  # a run that had ended keeps its status
        if status != "RUNNING":
            assert client.get_run(study.trials[number].user_attrs[RUN_ID_ATTR]).info.status == status
    assert_consistent(env)


@pytest.mark.slow
def test_a_read_only_store_is_refused_for_writing_and_read_for_reports(small_disk, tmp_path):
    env = disk_env(small_disk)
    path = str(write(tmp_path, TINY))
    assert run_cli("sweep", path, "--trials", "2", env=env).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for command in (["sweep", path, "--trials", "1"], ["train", "--set", "iterations=5"]):
        proc = run_cli(*command, env=env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {small_disk}/mlflow.db: cannot be written here"), lines
    proc = run_cli("compare", path, env=env)  # SQLite's WAL cannot make its -shm file there
    assert proc.returncode == 0, proc.stderr
    assert "the tracking store is read-only: nothing was logged to it" in proc.stdout
    assert "Traceback" not in proc.stderr

    port = free_port()  # the UI lists the study's runs from the read-only store
    server = UiProcess([path, "--port", str(port)], env, tmp_path / "ui.log")
    try:
        line = server.wait_for_line("experiment 'tiny-sweep' (3 runs): ")
        experiment_id = line.split("/#/experiments/")[1].split("?")[0]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search",
                                         data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            names = sorted(r["info"]["run_name"] for r in json.load(answer)["runs"])
        assert names == ["tiny", "trial-0", "trial-1"]
    finally:
        server.close()


def test_a_stop_raised_inside_a_finalizer_is_delivered_again(monkeypatch):
    """A SIGTERM or Ctrl-C that lands while a `__del__` or weakref callback runs (SQLAlchemy's,
    as a sweep opens its stores) raised there, where Python drops it; with the signals ignored
    from then on, the sweep used to run to its end and exit 0."""
    from harness.signals import Stopped, interrupt_once, stop_on_first_interrupt

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    try:
        stop_on_first_interrupt()

        class Finalizer:
            def __del__(self):
                interrupt_once(signal.SIGTERM, None)  # what the handler does when the signal lands here

        with pytest.raises(Stopped) as stopped:
            Finalizer()  # dropped at once: Python ignores what its __del__ raises
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
        assert stopped.value.signum == signal.SIGTERM
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
