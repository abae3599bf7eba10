"""End-to-end sweeps into temporary stores, checked through Optuna and MlflowClient."""

import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import optuna
import pytest
from PIL import Image
from mlflow import MlflowClient
from optuna.trial import TrialState

from harness.study import config as study_config, pool as workers
from harness.errors import NothingCompleted
from harness.study.summary import draw_figures
from harness.study.storage import PARENT_RUN_ATTR, RUN_ID_ATTR, Budget
from harness.study.sweep import check_measure, run_sweep
from harness.core.config import ConfigError
from harness.experiment import Workspace
from harness.study.trial import ReportToTrial, intermediate_metric, objective_values
from harness.core.train import TrainResult
from harness.study.worker import prepare_workspace
from conftest import PARITY, ROOT, run_cli, wait_until
from test_tracking import image_steps

TINY = """
experiment = "tiny-sweep"
iterations = 30
device = "cpu"
image_size = 256
[sweep]
study = "tiny"
trials = 4
heartbeat_interval = 1
grace_period = 3
[sweep.space]
lr = { low = 0.05, high = 1.0, log = true }
"""


@pytest.fixture
def stores(tmp_path, monkeypatch):
    """Fresh MLflow and Optuna stores, through the same variables a user would set."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "OPTUNA_STORAGE": f"sqlite:///{tmp_path}/optuna.db"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **env, "PYTHONPATH": str(ROOT)}


def write(tmp_path, text, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load_study(env, name="tiny"):
    return optuna.load_study(study_name=name, storage=env["OPTUNA_STORAGE"])


def children(client, parent_id):
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000)
    return {int(r.data.tags["optuna.trial_number"]): r for r in runs}


def test_sweep_logs_one_parent_and_a_child_run_per_trial(tmp_path, stores):
    sweep = study_config.load(write(tmp_path, TINY))
    summary = run_sweep(sweep, progress=False)
    study = load_study(stores)
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])

    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    parent_id = study.user_attrs[PARENT_RUN_ATTR]
    assert summary.parent_run_id == parent_id
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tiny"
    assert parent.data.tags["optuna.study_name"] == "tiny" and "mlflow.parentRunId" not in parent.data.tags
    best = study.best_trial
    assert parent.data.tags["best_trial_number"] == str(best.number)
    assert float(parent.data.tags["best_val_loss"]) == pytest.approx(best.value)
    assert parent.data.tags["best_params.lr"] == str(best.params["lr"])
    figures = {a.path for a in client.list_artifacts(parent_id, "optuna")}
    assert figures == {"optuna/optimization_history.png", "optuna/param_importances.png", "optuna/slice.png"}

    runs = children(client, parent_id)
    assert sorted(runs) == [0, 1, 2, 3]
    for trial in trials:
        run = runs[trial.number]
        assert trial.user_attrs[RUN_ID_ATTR] == run.info.run_id
        assert run.info.run_name == f"trial-{trial.number}" and run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial_state"] == "COMPLETE"
        assert run.data.tags["optuna.study_name"] == "tiny"
        for key, value in trial.params.items():
            assert run.data.params[key] == str(value)
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(31))
        assert history[-1].value == pytest.approx(trial.value) or max(history, key=lambda m: m.step).value == pytest.approx(trial.value)
        assert image_steps(client, run.info.run_id) == [0, 10, 20, 30]
        # intermediate values reported every plot_every steps
        assert sorted(trial.intermediate_values) == [10, 20, 30]


@pytest.mark.slow  # an end-to-end command: CI runs it in make test-slow, keeping make test under 4 minutes
def test_continuing_adds_trials_under_the_same_parent(tmp_path, stores):
    sweep = study_config.load(write(tmp_path, TINY))
    first = run_sweep(sweep, trials=2, progress=False)
    second = run_sweep(sweep, trials=3, progress=False)
    assert first.parent_run_id == second.parent_run_id
    study = load_study(stores)
    assert [t.number for t in study.get_trials()] == [0, 1, 2, 3, 4]
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    assert sorted(children(client, first.parent_run_id)) == [0, 1, 2, 3, 4]
    parents = client.search_runs([client.get_run(first.parent_run_id).info.experiment_id],
                                 "tags.`optuna.study_name` = 'tiny'")
    assert len([r for r in parents if "mlflow.parentRunId" not in r.data.tags]) == 1
    # different sampler seeds per continuation: no repeated learning rates
    assert len({t.params["lr"] for t in study.get_trials()}) == 5


def test_a_trial_another_worker_failed_meanwhile_keeps_its_retry(tmp_path, stores):
    """Its heartbeats stalled and another worker failed it: this worker's result is dropped."""
    from harness.study.trial import Job, tell
    from harness.core.train import TrainResult

    sweep = study_config.load(write(tmp_path, TINY))
    study = optuna.create_study(study_name="tiny", storage=stores["OPTUNA_STORAGE"])
    trial = study.ask()
    study.tell(trial.number, state=TrialState.FAIL)  # as the heartbeat check does, from elsewhere
    job = Job(sweep, "tiny", stores["OPTUNA_STORAGE"], "", parent_run_id="", budget=Budget(total=1), sampler_seed=0)
    tell(trial, job, TrainResult(history={m: [0.5] for m in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}),
         {10: 0.5})
    stored = load_study(stores).get_trials()[0]
    assert stored.state == TrialState.FAIL and stored.intermediate_values == {} and stored.user_attrs == {}


def test_a_diverging_trial_is_pruned_and_its_run_closed(tmp_path, stores):
    text = TINY.replace("lr = { low = 0.05, high = 1.0, log = true }", "lr = { low = 1e5, high = 1e6, log = true }")
    run_sweep(study_config.load(write(tmp_path, text)), trials=1, progress=False)
    trial = load_study(stores).get_trials()[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["diverged"] is True
    run = MlflowClient(stores["MLFLOW_TRACKING_URI"]).get_run(trial.user_attrs[RUN_ID_ATTR])
    assert run.info.status == "FINISHED"
    assert run.data.tags["optuna.trial_state"] == "PRUNED" and run.data.tags["diverged"] == "true"


def test_a_trial_that_raises_is_failed_on_both_sides_and_the_sweep_goes_on(tmp_path, stores, monkeypatch):
    real = ReportToTrial.on_step

    def broken_on_trial_1(self, step, metrics):
        if self.trial.number == 1 and step == 15:
            raise RuntimeError("broken trial")
        return real(self, step, metrics)

    monkeypatch.setattr(ReportToTrial, "on_step", broken_on_trial_1)
    summary = run_sweep(study_config.load(write(tmp_path, TINY)), trials=3, progress=False)
    trials = load_study(stores).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert sorted(trials[1].intermediate_values) == [10]  # what it reported before it raised is kept
    assert summary.counts["FAIL"] == 1 and summary.counts["COMPLETE"] == 2
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    failed = children(client, summary.parent_run_id)[1]
    assert failed.info.status == "FAILED" and failed.data.tags["optuna.trial_state"] == "FAILED"
    assert sorted(m.step for m in client.get_metric_history(failed.info.run_id, "train_loss")) == list(range(16))


@pytest.mark.slow
def test_two_worker_processes_add_exactly_the_requested_trials(tmp_path, stores):
    proc = run_cli("sweep", str(write(tmp_path, TINY)), "--trials", "5", "--workers", "2", env=stores)
    assert proc.returncode == 0, proc.stderr
    study = load_study(stores)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    runs = children(client, study.user_attrs[PARENT_RUN_ATTR])
    assert sorted(runs) == [0, 1, 2, 3, 4]
    assert {r.info.run_id for r in runs.values()} == {t.user_attrs[RUN_ID_ATTR] for t in trials}
    figures = {a.path for a in client.list_artifacts(study.user_attrs[PARENT_RUN_ATTR], "optuna")}
    assert figures == {"optuna/optimization_history.png", "optuna/param_importances.png", "optuna/slice.png"}
    assert "best trials:" in proc.stdout
    assert f"open the UI: MLFLOW_TRACKING_URI={stores['MLFLOW_TRACKING_URI']} make ui, then http://127.0.0.1:5000/#/experiments/" in proc.stdout


def pool_run_in_thread(pool, jobs, progress):
    """`WorkerPool.run` with a guard: a pool that misses its workers' exit fails instead of hanging."""
    outcome = []

    def target():
        try:
            pool.run(jobs, optuna.create_study(), progress)
            outcome.append(None)
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    assert outcome, "the pool did not notice its workers had ended"
    return outcome[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake work reaches forked workers only")
def test_the_pool_counts_its_workers_trials_and_names_one_that_died(monkeypatch):
    def fake_work(job, on_trial_done, workspace):  # forked workers run this instead of trials
        on_trial_done(0)
        if job == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        on_trial_done(1)

    monkeypatch.setattr(workers, "work", fake_work)
    progress = SimpleNamespace(n=0, update=lambda k: setattr(progress, "n", progress.n + k), refresh=lambda: None)
    counted = []
    monkeypatch.setattr(workers, "finished_count", lambda study: counted.append(progress.n) or 0)
    pool = workers.WorkerPool(2)
    try:
        assert pool_run_in_thread(pool, ["live", "live"], progress) is None
        assert counted == [0, 4]  # every trial the workers sent was read before the pool returned
        assert sorted(pool.idle) == [0, 1] and all(p.is_alive() for p in pool.processes)  # waiting for figures
    finally:
        pool.cancel()
    assert [p.exitcode for p in pool.processes] == [0, 0]

    pool = workers.WorkerPool(2)
    try:
        error = pool_run_in_thread(pool, ["die", "live"], progress)
        assert isinstance(error, RuntimeError) and "sweep-worker-0 (exit code -9)" in str(error)
        assert "sweep-worker-1" not in str(error) and pool.idle == [1]
    finally:
        pool.cancel()


ORPHANS = """
import os, signal, sys
import optuna
from types import SimpleNamespace
from harness.study import pool as workers
workers.work = lambda job, on_trial_done, workspace=None: None
pool = workers.WorkerPool(2)
if sys.argv[1] == "idle":  # their trials done, waiting for figures to draw
    pool.run(["a", "b"], optuna.create_study(), SimpleNamespace(n=0, update=lambda k: None, refresh=lambda: None))
print(" ".join(str(p.pid) for p in pool.processes), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow  # a killed sweep process, 12 s: make test-slow (and CI) runs it
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake work reaches forked workers only")
@pytest.mark.parametrize("when", ["waiting for the job", "idle"])
def test_workers_do_not_outlive_a_killed_sweep_process(tmp_path, when):
    script = write(tmp_path, ORPHANS, "orphans.py")
    proc = subprocess.run([sys.executable, str(script), when], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pids = [int(pid) for pid in proc.stdout.split()]
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), timeout=60, interval=0.2)
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "workers left behind"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake work reaches forked workers only")
@pytest.mark.parametrize("worker_draws", [True, False])
def test_idle_workers_draw_the_figures_this_process_would(tmp_path, monkeypatch, worker_draws):
    study = optuna.create_study(study_name="s", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 0.01, 1.0, log=True) + t.suggest_int("seed", 0, 9), n_trials=8)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))  # numbers stay as in the study
    monkeypatch.setattr(workers, "work", lambda job, on_trial_done, workspace: None)
    if not worker_draws:  # a worker that cannot draw: this process draws its share
        monkeypatch.setattr(workers, "draw_share", lambda *args: None)
    pool = workers.WorkerPool(2)
    try:
        progress = SimpleNamespace(n=0, update=lambda k: None, refresh=lambda: None)
        assert pool_run_in_thread(pool, ["a", "b"], progress) is None
        names = ["optimization_history", "param_importances", "slice"]
        (tmp_path / "pool").mkdir(), (tmp_path / "here").mkdir()
        drawn_here = []  # by this process: the workers, forked before, keep the real one
        monkeypatch.setattr(workers, "draw_figures",
                            lambda study, share, folder: drawn_here.extend(share) or draw_figures(study, share, folder))
        assert pool.draw(study, names, str(tmp_path / "pool")) == []
        # the slice plot (2 panels) here, the others in the workers unless they cannot draw
        assert drawn_here == (["slice"] if worker_draws else ["slice", "optimization_history", "param_importances"])
        assert draw_figures(study, names, str(tmp_path / "here")) == []
    finally:
        pool.cancel()
    for name in names:  # the same figure (the importances too: their forest is seeded)
        drawn, here = (Image.open(tmp_path / d / f"{name}.png") for d in ("pool", "here"))
        assert drawn.size == here.size and drawn.tobytes() == here.tobytes(), name


LONG = TINY.replace("iterations = 30", "iterations = 100000\nplot_every = 1000")


def start_and_wait_for_a_running_trial(tmp_path, env, timeout=120):
    proc = subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(write(tmp_path, LONG)), "--trials", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            running = load_study(env).get_trials(states=(TrialState.RUNNING,))
        except Exception:  # the study is not created yet
            running = []
        if running and RUN_ID_ATTR in running[0].user_attrs:
            logged = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_metric_history(running[0].user_attrs[RUN_ID_ATTR], "train_loss")
            if logged:  # it is mid-trial, with metrics in the store
                return proc, running[0]
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("no trial started")


@pytest.mark.slow
def test_ctrl_c_kills_the_run_fails_the_trial_and_the_study_continues(tmp_path, stores):
    proc, trial = start_and_wait_for_a_running_trial(tmp_path, stores)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue the study with: make sweep STUDY=tiny CONFIG=" in err

    study = load_study(stores)
    assert study.get_trials()[trial.number].state == TrialState.FAIL
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    run = client.get_run(trial.user_attrs[RUN_ID_ATTR])
    assert run.info.status == "KILLED" and run.data.tags["optuna.trial_state"] == "FAILED"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) > 0  # what was logged stays
    assert client.get_run(study.user_attrs[PARENT_RUN_ATTR]).info.status == "KILLED"

    run_sweep(study_config.load(write(tmp_path, TINY)), trials=1, progress=False)
    study = load_study(stores)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]
    assert client.get_run(study.user_attrs[PARENT_RUN_ATTR]).info.status == "FINISHED"


@pytest.mark.slow
def test_a_killed_worker_is_detected_failed_and_retried(tmp_path, stores):
    proc, trial = start_and_wait_for_a_running_trial(tmp_path, stores)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert load_study(stores).get_trials()[trial.number].state == TrialState.RUNNING
    time.sleep(4)  # past the grace period of 3 s without a heartbeat

    run_sweep(study_config.load(write(tmp_path, TINY)), trials=1, progress=False)
    trials = load_study(stores).get_trials()
    dead, retry, new = trials
    assert dead.number == trial.number and dead.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.system_attrs["failed_trial"] == dead.number
    assert new.state == TrialState.COMPLETE
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    dead_run = client.get_run(dead.user_attrs[RUN_ID_ATTR])
    assert dead_run.info.status == "FAILED" and dead_run.data.tags["optuna.trial_state"] == "FAILED"
    retry_run = client.get_run(retry.user_attrs[RUN_ID_ATTR])
    assert retry_run.info.run_id != dead_run.info.run_id and retry_run.info.status == "FINISHED"
    assert retry_run.data.tags["optuna.trial_state"] == "COMPLETE"


@pytest.mark.parametrize("text, message", [
    ("[sweep]\ntrails = 3\n", "sweep.trails: unknown key; allowed:"),
    ("[sweep]\nobjective = \"accuracy\"\n", "sweep.objective: 'accuracy' is not one of val_loss, val_accuracy"),
    ("[sweep]\npruner = \"early\"\n", "sweep.pruner: 'early' is not one of none, median"),
    ("[sweep.space]\nlr = { low = 1.0, high = 0.1 }\n", "sweep.space.lr: needs numbers low < high"),
    ("[sweep.space]\nwidth = { low = 1, high = 2 }\n", "sweep.space.width: unknown config key"),
    ("[sweep.space]\ninit = { choices = [\"default\", \"ones\"] }\n", "sweep.space.init: 'ones' is not a valid value"),
    ("lr = 0.1\n[sweep.space]\nlr = { low = 0.01, high = 1.0 }\n", "sweep.space.lr: is also fixed"),
    ("[sweep]\nsampler_seed = -1\n", "sweep.sampler_seed: must be in [0, 2**32)"),
    ("[sweep]\nheartbeat_interval = 5\ngrace_period = 6\n", "sweep.grace_period: must be >= 2 x heartbeat_interval"),
    ("[sweep.space]\nval_fraction = { choices = [0.99] }\n", "sweep.space.val_fraction: 0.99 is not a valid value"),
    ("[sweep.space]\nhold_steps = { low = 1, high = 5 }\n", "sweep.space.hold_steps: is what every trial is measured by"),
    ('[sweep]\nobjective = "iterations_to_target_held"\n[sweep.space]\niterations = { low = 10, high = 50 }\n',
     "hold_steps: 20 is longer than the shortest trial (10 iterations, 11 steps)"),
])
def test_sweep_config_errors_are_one_line_before_any_trial(tmp_path, stores, text, message):
    proc = run_cli("sweep", str(write(tmp_path, text)), env=stores)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {proc.stderr.strip()[7:]}" and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_iterations_to_target_held_is_an_objective_and_an_unreached_target_counts_past_the_longest_run(tmp_path):
    text = ('[sweep]\nobjective = ["iterations_to_target_held", "val_loss"]\n'
            '[sweep.space]\niterations = { low = 50, high = 80 }\n')
    sweep = study_config.load(write(tmp_path, text))
    assert sweep.settings.directions == ["minimize", "minimize"]
    assert intermediate_metric(sweep.settings) is None  # several objectives: nothing to prune on
    held = TrainResult(history={"val_loss": [0.5, 0.4]}, iterations_to_target=10, iterations_to_target_held=30)
    assert objective_values(sweep, held) == [30.0, 0.4]
    never = TrainResult(history={"val_loss": [0.5, 0.4]}, iterations_to_target=10)
    assert objective_values(sweep, never) == [81.0, 0.4]  # one step past the longest run the space allows
    alone = study_config.load(write(tmp_path, '[sweep]\nobjective = "iterations_to_target_held"\n'))
    assert intermediate_metric(alone.settings) == "val_loss"  # what a pruner watches for it


def test_a_study_keeps_what_its_trials_are_measured_by(tmp_path):
    study = optuna.create_study()
    first = study_config.load(write(tmp_path, '[sweep]\nobjective = "val_loss"\n'))
    check_measure(study, first)
    check_measure(study, first)  # the same file continues it
    for text, key in [('hold_steps = 5\n[sweep]\nobjective = "val_loss"\n', "hold_steps"),
                      ('[sweep]\nobjective = "iterations_to_target_held"\n', "sweep.objective")]:
        with pytest.raises(ConfigError, match=f"^{key}: study '{study.study_name}' measures its trials by"):
            check_measure(study, study_config.load(write(tmp_path, text)))


def test_a_worker_prepares_the_workspace_its_trials_use(tmp_path):
    sweep = study_config.load(write(tmp_path, TINY))
    prepared = prepare_workspace(sweep)  # in a worker, while the sweep's process opens the study
    assert Workspace.for_config(sweep.trial_config({"lr": 0.1}), reuse=prepared) is prepared
    other = study_config.load(write(tmp_path, TINY.replace("[sweep]", "val_fraction = 0.25\n[sweep]")))
    assert Workspace.for_config(other.trial_config({"lr": 0.1}), reuse=prepared) is not prepared


def test_searching_other_fields_and_a_fixed_default_key(tmp_path):
    text = 'lr = 0.3\n[sweep.space]\ninit = { choices = ["default", "normal"] }\nhidden = { choices = [[8], [16, 16]] }\n'
    sweep = study_config.load(write(tmp_path, text))
    assert set(sweep.settings.space) == {"seed", "iterations", "init", "hidden"}  # lr is fixed
    study = optuna.create_study()
    trial = study.ask()
    values = {n: p.suggest(trial) for n, p in sweep.settings.space.items()}
    cfg = sweep.trial_config(values)
    assert cfg.lr == 0.3 and cfg.hidden in ([8], [16, 16]) and cfg.init in ("default", "normal")
    assert trial.params["hidden"] in ("[8]", "[16, 16]")


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_sweep_in_the_kernel_logs_what_the_lecture_loop_gives(tmp_path, stores, cpu, monkeypatch, batch_size):
    """One trial at a time or in batches, the compiled kernel trains; the runs hold the curves of
    the single-model loop. Batches of 3: one of 3, then one of 2."""
    from harness.core import data as data_lib
    from harness.trainers import fused_cpu
    import harness.study.trial as sweep_module
    from harness.core.train import train

    if fused_cpu.library() is None:
        pytest.skip("no C compiler here: the sweep trains in the lecture's loop")
    monkeypatch.setattr(sweep_module, "run_training", None)  # the loop's path is not taken
    text = TINY.replace("heartbeat_interval = 1", f"batch_size = {batch_size}\nheartbeat_interval = 1")
    sweep = study_config.load(write(tmp_path, text))
    summary = run_sweep(sweep, trials=5, progress=False)
    study = load_study(stores)
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    runs = children(client, summary.parent_run_id)
    assert sorted(runs) == [0, 1, 2, 3, 4]
    wine = data_lib.load(sweep.base, cpu)
    for trial in trials:
        run = runs[trial.number]
        assert trial.user_attrs[RUN_ID_ATTR] == run.info.run_id and run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial_state"] == "COMPLETE"
        for key, value in trial.params.items():
            assert run.data.params[key] == str(value)
        assert image_steps(client, run.info.run_id) == [0, 10, 20, 30]
        assert sorted(trial.intermediate_values) == [10, 20, 30]
        # the batch gave this trial the curve it gets trained alone
        single = train(sweep.trial_config(trial.params), wine, cpu)
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
        assert sorted(logged) == list(range(31))
        assert [logged[s] for s in range(31)] == pytest.approx(single.history["val_loss"], rel=PARITY["rtol"], abs=PARITY["atol"])
        assert trial.value == pytest.approx(single.final["val_loss"], rel=PARITY["rtol"], abs=PARITY["atol"])


def test_ctrl_c_while_a_batch_is_written_keeps_the_trial_handed_over(tmp_path, stores, monkeypatch):
    """A run's writes go to the writer process, and the run is closed once the next one is
    handed over: Ctrl-C in between still closes it FINISHED and its trial COMPLETE (it trained
    to the end); the trials not yet logged are failed."""
    import harness.study.worker as sweep_module

    started = []

    def interrupted_on_the_second(*args, **kwargs):
        if started:
            raise KeyboardInterrupt
        started.append(sweep_module_start(*args, **kwargs))
        return started[-1]

    sweep_module_start = sweep_module.start_trained_run
    monkeypatch.setattr(sweep_module, "start_trained_run", interrupted_on_the_second)
    sweep = study_config.load(write(tmp_path, TINY.replace("heartbeat_interval = 1", "batch_size = 3\nheartbeat_interval = 1")))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, trials=3, progress=False)
    logger, _ = started[0]
    assert logger.writer.process is None  # the writer process was stopped
    study = load_study(stores)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    runs = children(client, study.user_attrs[PARENT_RUN_ATTR])
    assert list(runs) == [0]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["optuna.trial_state"] == "COMPLETE"
    assert len(client.get_metric_history(runs[0].info.run_id, "train_loss")) == 31


@pytest.mark.slow  # an end-to-end command: CI runs it in make test-slow, keeping make test under 4 minutes
def test_a_pruner_decides_in_the_kernel_as_in_the_loop(tmp_path, monkeypatch):
    """The median pruner compares a trial with the trials before it: those must be told before
    it is replayed, as the loop tells them before it trains."""
    from harness.trainers import fused_cpu

    if fused_cpu.library() is None:
        pytest.skip("no C compiler here: no kernel to compare with the loop")
    text = TINY.replace("[sweep]", "[sweep]\nsampler = \"random\"\npruner = \"median\"").replace(
        "iterations = 30", "iterations = 100").replace(
        "lr = { low = 0.05, high = 1.0, log = true }", "lr = { low = 0.01, high = 1.0, log = true }\nseed = { low = 0, high = 9999 }")
    states = {}
    for path in ("kernel", "loop"):
        store = tmp_path / path
        store.mkdir()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
        monkeypatch.setenv("OPTUNA_STORAGE", f"sqlite:///{store}/optuna.db")
        trainer = "fused_cpu" if path == "kernel" else "torch"
        run_sweep(study_config.load(write(store, f'trainer = "{trainer}"\n' + text)), trials=12, progress=False)
        trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{store}/optuna.db").get_trials()
        states[path] = [(t.state, sorted(t.intermediate_values)) for t in trials]
        runs = MlflowClient(f"sqlite:///{store}/mlflow.db").search_runs(
            [e.experiment_id for e in MlflowClient(f"sqlite:///{store}/mlflow.db").search_experiments()],
            "tags.optuna.trial_number != ''")
        assert {r.data.tags["trainer"] for r in runs} == {trainer}  # each run records the trainer that ran
    assert TrialState.PRUNED in [state for state, _ in states["loop"]]
    assert states["kernel"] == states["loop"]


def test_a_trial_that_fails_before_training_is_failed_not_left_running(tmp_path, stores):
    run_sweep(study_config.load(write(tmp_path, TINY)), trials=1, progress=False)
    # lr becomes a categorical: Optuna refuses to change a parameter's distribution in a study
    changed = TINY.replace("lr = { low = 0.05, high = 1.0, log = true }", "lr = { choices = [0.1, 0.2] }")
    with pytest.raises(NothingCompleted, match="trial 1: ValueError: Cannot set different distribution kind"):
        run_sweep(study_config.load(write(tmp_path, changed, "changed.toml")), trials=2, progress=False)
    states = [t.state for t in load_study(stores).get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]


@pytest.mark.parametrize("path", ["kernel", "loop"])
def test_a_pruned_trial_ends_where_the_loop_stops_it(tmp_path, stores, monkeypatch, path):
    """The kernel trains a trial to its end, then its steps are replayed: the pruner stops the
    replay where it stops the loop, and the run holds the same steps and images."""
    from harness.trainers import fused_cpu

    if path == "kernel" and fused_cpu.library() is None:
        pytest.skip("no C compiler here: no kernel to replay")
    real = ReportToTrial.on_step

    def prune_trial_1_at_step_20(self, step, metrics):
        return real(self, step, metrics) or (self.trial.number == 1 and step == 20)

    monkeypatch.setattr(ReportToTrial, "on_step", prune_trial_1_at_step_20)
    trainer = "fused_cpu" if path == "kernel" else "torch"
    summary = run_sweep(study_config.load(write(tmp_path, f'trainer = "{trainer}"\n' + TINY)), trials=3, progress=False)
    trials = load_study(stores).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert sorted(trials[1].intermediate_values) == [10, 20]
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    runs = children(client, summary.parent_run_id)
    pruned = runs[1]
    assert pruned.info.status == "FINISHED" and pruned.data.tags["optuna.trial_state"] == "PRUNED"
    assert sorted(m.step for m in client.get_metric_history(pruned.info.run_id, "val_loss")) == list(range(21))
    assert image_steps(client, pruned.info.run_id) == [0, 10]
    assert image_steps(client, runs[2].info.run_id) == [0, 10, 20, 30]


def test_a_run_whose_writes_fail_fails_its_own_trial_and_the_next_one_goes_on(tmp_path, stores, capsys):
    """Runs are closed one trial late (`OpenRuns`): the failure must stay with its own trial."""
    from harness.study.open_runs import OpenRuns
    from harness.study.trial import Job
    from harness.tracking.tracker import Tracker
    from harness.core.train import TrainResult

    sweep = study_config.load(write(tmp_path, TINY))
    study = optuna.create_study(study_name="tiny", storage=stores["OPTUNA_STORAGE"])
    tracker = Tracker(stores["MLFLOW_TRACKING_URI"], writer_process=True)
    job = Job(sweep, "tiny", stores["OPTUNA_STORAGE"], tracker.uri, parent_run_id="", budget=Budget(total=2), sampler_seed=0)
    result = TrainResult(history={m: [0.5] for m in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")})
    open_runs = OpenRuns(job, tracker)
    try:
        for number, key in enumerate(["not a valid key!", "val_loss"]):  # MLflow refuses the first name
            logger = tracker.open_run("tiny-sweep", f"trial-{number}")
            logger.log_metrics({key: 0.5}, step=0)
            logger.hand_over()
            open_runs.add(study.ask(), logger, result)  # the second closes the first
        open_runs.close_all()
    finally:
        tracker.close()
    assert [t.state for t in load_study(stores).get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]
    assert open_runs.told == {0, 1}
    client = MlflowClient(stores["MLFLOW_TRACKING_URI"])
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("tiny-sweep").experiment_id])}
    assert runs["trial-0"].info.status == "FAILED" and runs["trial-1"].info.status == "FINISHED"
    assert "trial 0 failed: WriteError" in capsys.readouterr().err
