"""`make ui`: the MLflow UI over the project's store, on the loopback interface only.

The server is `mlflow server`, run by `harness/ops/web_server.py` as a child in its own process
group (it starts a uvicorn process of its own), stopped as a whole on Ctrl-C.
"""

import os
import sys
from pathlib import Path

from harness.core.config import ConfigError
from harness.ops import web_server
from harness.ops.ui_app import APP, app_problem
from harness.tracking.store_check import read_only_url
from harness.tracking.reader import experiment_page
from harness.tracking.tracker import Tracker, tracking_uri


def local_store(uri: str) -> Path:
    """The SQLite file behind a sqlite:/// URI; other stores are not ours to serve."""
    if uri.startswith(("http://", "https://")):
        raise ConfigError(f"MLFLOW_TRACKING_URI: {uri} is a tracking server already; open it in a browser")
    if not uri.startswith("sqlite:///"):
        raise ConfigError(f"MLFLOW_TRACKING_URI: the UI serves a sqlite:/// store, got {uri}")
    return Path(uri.removeprefix("sqlite:///"))


DROPPED = ("[MLflow] Security middleware enabled with default settings",)
"""what `mlflow server` prints on every start, with no switch to turn it off: not shown"""


def server_command(uri: str, host: str, port: int, app: bool = True) -> list[str]:
    db = local_store(uri)
    # artifacts created through the UI land beside the runs' own, under the store's folder
    artifacts = (db.parent / "artifacts").resolve()
    # a store this process cannot write to is served read-only (store_check.read_only_url)
    store = read_only_url(uri)
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
            "--registry-store-uri", store,  # the same, said outright: else a notice says MLflow chose it
            "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
            "--workers", "1",  # one user, one process
            "--uvicorn-opts", "--log-level warning",  # no line per request; errors still show
            *(["--app-name", APP] if app else [])]


def server_env() -> dict[str, str]:
    return {**os.environ,
            # the job runner serves GenAI features we do not use, and would start a dozen processes
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # a new store's "Creating initial MLflow database tables" and such
            "MLFLOW_LOGGING_LEVEL": "WARNING",
            # Starlette's deprecation of the WSGI bridge MLflow's server uses, a notice for MLflow
            "PYTHONWARNINGS": ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                     "ignore:starlette.middleware.wsgi is deprecated"]))}


def experiment_links(uri: str, experiment: str, base_url: str, known: bool = True) -> list[str]:
    """A line per experiment in the store, with its run count and page, `experiment` (the
    study's) first; or the hint to make it. Nothing is created (`known`: whether the store
    existed before the server started, which creates it)."""
    hint = f"experiment '{experiment}' is not in the store yet: run `make sweep` first, then open {base_url}"
    if not (known and local_store(uri).exists()):
        return [hint]
    tracker = Tracker(uri)
    found = []
    for e in tracker.client.search_experiments():
        runs = len(tracker.all_runs(e.experiment_id))
        if runs or e.experiment_id != "0":  # MLflow's own empty "Default" is left out
            found.append((e.name != experiment, e.name, runs, experiment_page(base_url, e.experiment_id)))
    lines = [f"experiment '{name}' ({runs} run{'s' * (runs != 1)}): {page}" for _, name, runs, page in sorted(found)]
    return lines if any(name == experiment for _, name, _, _ in found) else [hint, *lines]


def serve(experiment: str, host: str = "127.0.0.1", port: int = 5000, uri: str | None = None) -> int:
    """Run the UI until Ctrl-C (or SIGTERM); print where to look. Returns the exit code."""
    uri = uri or tracking_uri()
    problem = app_problem()
    if problem:
        print(f"warning: {problem}; the UI is MLflow's plain one, where a click may open the GenAI view "
              "(the printed links still open the model-training view)", file=sys.stderr)
    command = server_command(uri, host, port, app=problem is None)
    known = local_store(uri).exists()  # looked at before the server creates the file

    return web_server.serve(web_server.WebServer(
        "MLflow UI", "the MLflow server", "ui", command, server_env(), over=uri, health="/health",
        links=lambda base_url, lines: lines, look_up=lambda base_url: experiment_links(uri, experiment, base_url, known),
        dropped=DROPPED), host, port)
