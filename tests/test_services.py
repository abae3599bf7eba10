"""Worker processes against a real PostgreSQL and a real MLflow tracking server, as on several
machines: started here in a throwaway directory on free ports (`make test-services`)."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState
from PIL import Image

from harness.ops.services import Services
from harness.study.storage import PARENT_RUN_ATTR, RUN_ID_ATTR
from harness.tracking.tracker import Tracker
from harness.tracking.server import TrackingUnavailable
from conftest import ROOT, free_port
from test_tracking import METRICS, image_steps

pytestmark = pytest.mark.services

STUDY = """
experiment = "{experiment}"
iterations = {iterations}
plot_every = {plot_every}
device = "cpu"
image_size = 256
[sweep]
heartbeat_interval = 1
grace_period = 3
[sweep.space]
lr = {{ low = 0.05, high = 1.0, log = true }}
"""


@pytest.fixture(scope="module")
def services():
    # not under pytest's tmp_path: as root the cluster runs as `postgres`, who must reach it
    root = Path(tempfile.mkdtemp(prefix="wine-services-"))
    root.chmod(0o755)
    # one server process: it starts in half the time, and three workers do not need more
    running = Services(root, "127.0.0.1", free_port(), free_port(), mlflow_workers=1)
    before = os.environ.get("PGPASSWORD")
    try:
        running.start()
        # the storage URLs carry no password, here as on a worker: libpq reads it from PGPASSWORD
        os.environ["PGPASSWORD"] = password(running)
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)
        if before is None:
            os.environ.pop("PGPASSWORD", None)
        else:
            os.environ["PGPASSWORD"] = before


# iterations of a trial that must still run when the test acts on it: its first metrics reach the
# server after 250 steps (harness/tracking/writer.py's batch), and 600 steps were over before a poll saw them
LONG = 5000


def password(services) -> str:
    return (services.root / "db-password").read_text().strip()


def worker_env(services, tracking: str | None = None, **extra) -> dict:
    return {**os.environ, "OPTUNA_STORAGE": services.cluster.url("optuna"), "PGPASSWORD": password(services),
            "MLFLOW_TRACKING_URI": tracking or services.mlflow.url, "PYTHONPATH": str(ROOT), **extra}


def start_workers(tmp_path, env, study, total, count, iterations=30, plot_every=10):
    config = tmp_path / "study.toml"
    config.write_text(STUDY.format(experiment=study, iterations=iterations, plot_every=plot_every))
    return [subprocess.Popen([sys.executable, "-m", "harness", "sweep", str(config), "--study", study,
                              "--total", str(total)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for _ in range(count)]


def finish(workers, timeout=240):
    outcomes = [w.communicate(timeout=timeout) for w in workers]
    return [(w.returncode, err) for w, (out, err) in zip(workers, outcomes)]


def load(env, study):
    return optuna.load_study(study_name=study, storage=env["OPTUNA_STORAGE"])


def wait_for_a_trial_with_metrics(env, study, timeout=120):
    """A running trial whose run already has metrics in the store: it is mid-trial."""
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            running = load(env, study).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            running = []
        for trial in running:
            if RUN_ID_ATTR in trial.user_attrs and client.get_metric_history(trial.user_attrs[RUN_ID_ATTR], "train_loss"):
                return trial
        time.sleep(0.1)
    raise AssertionError("no trial got as far as logging metrics")


def check_study(env, study, total, iterations, plot_every, lost_answers: bool = False):
    """Exactly `total` complete trials, one parent, a finished child run with every metric and
    image per complete trial, and no run left RUNNING. With `lost_answers` (the server crashed),
    a run the server made but could not answer for, made again on the client's retry, may be
    there too: ended FAILED, and said why, by the sweep (`study.close_stray_runs`)."""
    study_ = load(env, study)
    trials = study_.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == total
    assert len({t.number for t in trials}) == len(trials)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent_id = study_.user_attrs[PARENT_RUN_ATTR]
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment_id], max_results=1000)
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [parent_id]
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    if lost_answers:
        linked = {t.user_attrs.get(RUN_ID_ATTR) for t in trials}
        stray = [r for r in children if r.info.run_id not in linked]
        assert all(r.info.status == "FAILED" and r.data.tags["failure"].startswith("left running") for r in stray)
        children = [r for r in children if r.info.run_id in linked]
    assert len(children) == len(trials)
    by_id = {r.info.run_id: r for r in children}
    for trial in complete:
        run = by_id[trial.user_attrs[RUN_ID_ATTR]]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # served by the server, no shared disk
        for name in METRICS:
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, name)) == list(range(iterations + 1))
        assert image_steps(client, run.info.run_id) == list(range(0, iterations + 1, plot_every))
    assert client.get_run(parent_id).info.status == "FINISHED"
    return trials, by_id


def test_three_workers_share_one_study_and_stop_at_exactly_the_total(tmp_path, services):
    env = worker_env(services)
    workers = start_workers(tmp_path, env, "three", total=6, count=3, iterations=100, plot_every=20)
    for code, err in finish(workers):
        assert code == 0, err
    trials, _ = check_study(env, "three", total=6, iterations=100, plot_every=20)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4, 5]
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the workers did share it


def test_a_worker_killed_mid_trial_is_detected_failed_and_retried(tmp_path, services):
    env = worker_env(services)
    # trials long enough to be still running when the test has seen one's metrics and kills it
    workers = start_workers(tmp_path, env, "killed", total=5, count=3, iterations=LONG, plot_every=LONG // 5)
    victim = wait_for_a_trial_with_metrics(env, "killed")
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    killed = next(w for w in workers if w.pid == pid)
    killed.send_signal(signal.SIGKILL)
    outcomes = finish([w for w in workers if w is not killed])
    killed.communicate()
    for code, err in outcomes:
        assert code == 0, err

    trials, runs = check_study(env, "killed", total=5, iterations=LONG, plot_every=LONG // 5)
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == dead.number)
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert len(trials) == 6  # the retry took the dead trial's place in the budget
    dead_run = runs[dead.user_attrs[RUN_ID_ATTR]]
    assert dead_run.info.status == "FAILED" and dead_run.data.tags["optuna.trial_state"] == "FAILED"


def test_workers_ride_out_a_tracking_server_restart(tmp_path, services):
    env = worker_env(services)
    workers = start_workers(tmp_path, env, "restart", total=5, count=3, iterations=600, plot_every=200)
    wait_for_a_trial_with_metrics(env, "restart")
    services.mlflow.stop(kill=True)  # a crash, in the middle of the workers' writes
    time.sleep(2)
    services.mlflow.start(password(services))
    for code, err in finish(workers):
        assert code == 0, err
    trials, _ = check_study(env, "restart", total=5, iterations=600, plot_every=200, lost_answers=True)
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_the_study_lock_is_held_in_postgresql_for_every_machine(services):
    from harness.study.config import SweepConfig
    from harness.study.storage import lock_key, open_storage, study_lock

    storage = open_storage(services.cluster.url("optuna"), SweepConfig(), services.mlflow.url)
    other = sqlalchemy.create_engine(services.cluster.url("optuna"))  # as another machine would connect

    def try_lock(name):
        with other.connect() as connection, connection.begin():
            return connection.execute(sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:k)"),
                                      {"k": lock_key(name)}).scalar()

    with study_lock(storage, "locked"):
        assert try_lock("locked") is False
        assert try_lock("another study") is True
    assert try_lock("locked") is True
    other.dispose()


def test_workers_opening_a_new_database_together_create_the_tables_once(services):
    import psycopg
    from concurrent.futures import ThreadPoolExecutor
    from harness.study.config import SweepConfig
    from harness.study.storage import open_storage

    with psycopg.connect(host="127.0.0.1", port=services.pg_port, user="wine", dbname="postgres",
                         password=password(services), autocommit=True) as connection:
        connection.execute("CREATE DATABASE fresh OWNER wine")
    url = services.cluster.url("fresh")
    with ThreadPoolExecutor(6) as pool:
        storages = list(pool.map(lambda _: open_storage(url, SweepConfig(), services.mlflow.url), range(6)))
    assert len(storages) == 6


def test_a_write_sent_again_after_a_lost_answer_is_stored_once(services):
    from mlflow.entities import Metric

    tracker = Tracker(services.mlflow.url)
    with tracker.run("resent", "resent") as logger:
        batch = [Metric("train_loss", 0.5, 1700000000000, step) for step in range(3)]
        tracker.client.log_batch(logger.run_id, metrics=batch)
        tracker.client.log_batch(logger.run_id, metrics=batch)  # what a retry after a lost answer sends
    history = MlflowClient(services.mlflow.url).get_metric_history(logger.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1, 2]


class BreakAnswers(BaseHTTPRequestHandler):
    """A real HTTP hop in front of the MLflow server: passes every request on, and breaks off the
    answers to the first `server.times` whose path holds `server.breaks`, once the server has
    carried them out, as a server that dies in the middle of its answer does."""
    protocol_version = "HTTP/1.1"

    def forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        upstream = HTTPConnection(*self.server.target, timeout=30)
        upstream.request(self.command, self.path, body,
                         {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")})
        answer = upstream.getresponse()
        payload = answer.read()
        upstream.close()
        breaks = self.server.breaks in self.path and len(self.server.broken) < self.server.times
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload) + breaks))
        self.end_headers()
        if breaks:
            self.server.broken.append(f"{self.command} {self.path}")
            self.wfile.write(payload[:len(payload) // 2])
            self.close_connection = True
            return
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

    def log_message(self, *args):
        pass


@contextmanager
def breaking_answers(services, breaks: str, times: int):
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), BreakAnswers)
    proxy.target, proxy.breaks, proxy.times, proxy.broken = ("127.0.0.1", services.mlflow_port), breaks, times, []
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def log_a_step(tracker: Tracker, experiment: str) -> str:
    with tracker.run(experiment, "broken") as logger:
        logger.log_metrics({"train_loss": 0.5}, step=0)
        logger.log_image(Image.new("RGB", (8, 8)), "boundary", step=0)
    return logger.run_id


@pytest.mark.parametrize("breaks", ["/mlflow/runs/log-batch", "/mlflow-artifacts/artifacts/"])
def test_a_write_whose_answer_broke_off_is_made_again(services, breaks):
    # MLflow's retries end where the server has begun to answer (a crash in the middle of an answer)
    with breaking_answers(services, breaks, times=1) as proxy:
        tracker = Tracker(f"http://127.0.0.1:{proxy.server_port}")
        run_id = log_a_step(tracker, "broken-answer")
        tracker.close()
    assert len(proxy.broken) == 1 and breaks in proxy.broken[0]
    client = MlflowClient(services.mlflow.url)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0]
    assert image_steps(client, run_id) == [0]


def test_answers_that_keep_breaking_off_stop_the_run_in_one_line(services):
    with breaking_answers(services, "/mlflow/runs/log-batch", times=100) as proxy:
        tracker = Tracker(f"http://127.0.0.1:{proxy.server_port}")
        with pytest.raises(TrackingUnavailable) as raised:
            log_a_step(tracker, "broken-answers")
        tracker.close()
    assert len(proxy.broken) == 4  # the call, and 3 more
    assert str(raised.value) == (f"MLFLOW_TRACKING_URI: the MLflow server at http://127.0.0.1:{proxy.server_port} "
                                 "stopped answering (log_batch: ChunkedEncodingError; its answer broke off 4 times)")


@pytest.mark.parametrize("case", ["password", "postgres port", "tracking url"])
def test_a_wrong_url_or_password_is_one_line_before_anything_is_created(tmp_path, services, case):
    env = worker_env(services)
    storage, tracking = env["OPTUNA_STORAGE"], env["MLFLOW_TRACKING_URI"]
    if case == "password":
        env["OPTUNA_STORAGE"] = storage.replace("wine@", "wine:not-the-password@")
        expected = f"error: OPTUNA_STORAGE: cannot connect to {storage.replace('wine@', 'wine:***@')}: password authentication failed"
    elif case == "postgres port":
        wrong = free_port()
        env["OPTUNA_STORAGE"] = storage.replace(f":{services.pg_port}/", f":{wrong}/")
        expected = f"error: OPTUNA_STORAGE: cannot connect to {env['OPTUNA_STORAGE']}: Connection refused"
    else:
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
        expected = f"error: MLFLOW_TRACKING_URI: no MLflow server answers at {env['MLFLOW_TRACKING_URI']}: Connection refused"
    [(code, err)] = finish(start_workers(tmp_path, env, f"wrong-{case.replace(' ', '-')}", total=2, count=1))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(expected), err
    assert "not-the-password" not in err
    assert f"wrong-{case.replace(' ', '-')}" not in optuna.get_all_study_names(storage)
    assert MlflowClient(tracking).get_experiment_by_name(f"wrong-{case.replace(' ', '-')}") is None


def test_a_tracking_server_that_stays_down_stops_the_worker_in_one_line(tmp_path, services):
    # last in the file: it stops the module's server, and starts it again before it ends
    server = services.mlflow
    env = worker_env(services, MLFLOW_HTTP_REQUEST_MAX_RETRIES="2", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    [worker] = start_workers(tmp_path, env, "gone", total=2, count=1, iterations=LONG, plot_every=LONG // 5)
    trial = wait_for_a_trial_with_metrics(env, "gone")
    server.stop(kill=True)
    [(code, err)] = finish([worker], timeout=120)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [err.strip().splitlines()[-1]]
    assert errors[0].startswith(f"error: MLFLOW_TRACKING_URI: the MLflow server at {server.url} stopped answering")

    # its trial is left as a dead worker's: once the server is back, the next worker fails it,
    # closes its run FAILED and retries it
    assert load(env, "gone").trials[trial.number].state == TrialState.RUNNING
    server.start(password(services))
    time.sleep(3)  # past the grace period
    [(code, err)] = finish(start_workers(tmp_path, env, "gone", total=1, count=1))
    assert code == 0, err
    trials = load(env, "gone").get_trials()
    dead = trials[trial.number]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == dead.number)
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    client = MlflowClient(server.url)
    assert client.get_run(dead.user_attrs[RUN_ID_ATTR]).info.status == "FAILED"
    assert client.get_run(retry.user_attrs[RUN_ID_ATTR]).info.status == "FINISHED"
