"""`make ui`: loopback only, the experiment's page found without creating anything, a clean Ctrl-C."""

import os
import urllib.request

import pytest

from harness.ops import ui
from conftest import ROOT, UiProcess, free_port, group_alive, run_cli


@pytest.mark.parametrize("args, uri, message", [
    (["--host", "0.0.0.0"], None, "error: host: '0.0.0.0' is not a loopback address"),
    (["--host", "192.168.1.5"], None, "error: host: '192.168.1.5' is not a loopback address"),
    ([], "http://127.0.0.1:5000", "error: MLFLOW_TRACKING_URI: http://127.0.0.1:5000 is a tracking server already"),
    ([], "postgresql://db/mlflow", "error: MLFLOW_TRACKING_URI: the UI serves a sqlite:/// store"),
])
def test_the_ui_refuses_other_hosts_and_stores_before_starting_anything(tmp_path, args, uri, message):
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": uri or f"sqlite:///{tmp_path}/mlflow.db"}
    proc = run_cli("ui", *args, "--port", str(free_port()), env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_every_experiment_is_linked_with_its_run_count_and_none_is_created(tracker):
    base = "http://127.0.0.1:5999"
    before = [line for line in ui.experiment_links(tracker.uri, "ui-lookup", base)]
    assert before[0] == f"experiment 'ui-lookup' is not in the store yet: run `make sweep` first, then open {base}"
    assert tracker.find_experiment_id("ui-lookup") is None  # still not there
    experiment_id = tracker.experiment_id("ui-lookup")
    other_id = tracker.experiment_id("ui-lookup-other")
    for name in ("a", "b"):
        with tracker.run("ui-lookup", name):
            pass
    lines = ui.experiment_links(tracker.uri, "ui-lookup", base)
    # the study's experiment first, then every other one of the store (the session's, here)
    assert lines[0] == f"experiment 'ui-lookup' (2 runs): {base}/#/experiments/{experiment_id}?workflowType=machine_learning"
    assert f"experiment 'ui-lookup-other' (0 runs): {base}/#/experiments/{other_id}?workflowType=machine_learning" in lines
    assert not any(line.startswith("experiment 'Default'") for line in lines)  # MLflow's own, empty


def test_a_store_that_does_not_exist_yet_is_not_created_by_the_lookup(tmp_path):
    hint = ui.experiment_links(f"sqlite:///{tmp_path}/mlflow.db", "sweep", "http://127.0.0.1:5000")
    assert hint == ["experiment 'sweep' is not in the store yet: run `make sweep` first, then open http://127.0.0.1:5000"]
    assert not (tmp_path / "mlflow.db").exists()


def test_the_server_command_serves_the_store_on_the_given_loopback_port(tmp_path):
    command = ui.server_command(f"sqlite:///{tmp_path}/mlflow.db", "127.0.0.1", 5123)
    assert command[1:4] == ["-m", "mlflow", "server"]
    options = dict(zip(command[4::2], command[5::2]))
    assert options["--backend-store-uri"] == options["--registry-store-uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert options["--app-name"] == "wine-init" and ui.app_problem() is None  # the UI opening in model training
    assert options["--artifacts-destination"] == str((tmp_path / "artifacts").resolve())
    assert options["--host"] == "127.0.0.1" and options["--port"] == "5123"


@pytest.mark.slow
def test_the_ui_serves_on_loopback_prints_where_to_look_and_stops_on_ctrl_c(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    port = free_port()
    server = UiProcess(["--port", str(port)], env, tmp_path / "ui.log")
    try:
        line = server.wait_for_line("MLflow UI on ")
        assert line.startswith(f"MLflow UI on http://127.0.0.1:{port} over sqlite:///{tmp_path}/mlflow.db")
        # a fresh store has no study yet: say so rather than print a link that leads nowhere
        hint = server.wait_for_line("experiment 'sweep'")
        assert hint == f"experiment 'sweep' is not in the store yet: run `make sweep` first, then open http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert "mlflow.workflowType_v1" in response.read().decode()  # ui_app's default view
        # nothing but our own lines: no notices of MLflow, uvicorn or Starlette the user did not ask for
        for notice in ("Registry store URI", "Security middleware", "Deprecation", "Uvicorn running",
                       "Creating initial MLflow database tables", '"GET /'):
            assert notice not in server.output(), server.output()
        assert server.server_group is not None and group_alive(server.server_group)

        assert server.interrupt() == 0
        assert "Traceback" not in server.output()
        assert not group_alive(server.server_group)  # the server and its uvicorn are gone
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        server.close()
