"""`make ui`: the MLflow UI over the project's store, on the loopback interface only.

The server is `mlflow server`, run as a child in its own process group: a Ctrl-C in the
terminal reaches only us, and we stop the whole group (the server starts a uvicorn process
of its own), so nothing is left listening after we exit.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.core.config import ConfigError
from harness.ops.services import answers, port_taken, stop_group
from harness.signals import interrupt_once
from harness.tracking.store_check import read_only_url
from harness.tracking.reader import experiment_page
from harness.tracking.tracker import Tracker, tracking_uri

LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT = 120.0  # seconds; a first start creates the database tables
STOP_TIMEOUT = 15.0


def check_host(host: str, allow_remote: bool) -> None:
    """The UI has no login: anyone who reaches the port can read and delete runs."""
    if host not in LOOPBACK and not allow_remote:
        raise ConfigError(f"host: '{host}' is not a loopback address; the UI has no login, so it listens on "
                          f"127.0.0.1 only (--allow-remote binds it anyway)")


def local_store(uri: str) -> Path:
    """The SQLite file behind a sqlite:/// URI; other stores are not ours to serve."""
    if uri.startswith(("http://", "https://")):
        raise ConfigError(f"MLFLOW_TRACKING_URI: {uri} is a tracking server already; open it in a browser")
    if not uri.startswith("sqlite:///"):
        raise ConfigError(f"MLFLOW_TRACKING_URI: the UI serves a sqlite:/// store, got {uri}")
    return Path(uri.removeprefix("sqlite:///"))


def server_command(uri: str, host: str, port: int) -> list[str]:
    db = local_store(uri)
    # artifacts created through the UI land beside the runs' own, under the store's folder
    artifacts = (db.parent / "artifacts").resolve()
    # a store this process cannot write to is served read-only (store_check.read_only_url)
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", read_only_url(uri),
            "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
            "--workers", "1"]  # one user, one process


def server_env() -> dict[str, str]:
    # the job runner serves GenAI features we do not use, and would start a dozen processes
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def find_experiment(uri: str, experiment: str, base_url: str) -> str | None:
    """The experiment's page, or None when the store does not have it yet (nothing is created)."""
    if not local_store(uri).exists():
        return None
    experiment_id = Tracker(uri).find_experiment_id(experiment)
    return experiment_page(base_url, experiment_id) if experiment_id else None


def wait_until_up(process: subprocess.Popen, base_url: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with code {process.returncode} before it answered "
                               f"(is the port taken? try another: make ui PORT=5001)")
        if answers(base_url):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the MLflow server did not answer on {base_url} within {timeout:.0f} s")


def stop(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the server's process group, SIGKILL what lingers. The whole group, not only its
    leader: the leader can exit before the uvicorn process it started has closed the port."""
    stop_group(process.pid, timeout)
    process.poll()


def serve(experiment: str, host: str = "127.0.0.1", port: int = 5000, uri: str | None = None) -> int:
    """Run the UI until Ctrl-C (or SIGTERM); print where to look. Returns the exit code."""
    uri = uri or tracking_uri()
    command = server_command(uri, host, port)
    shown_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown_host}:{port}"
    known = local_store(uri).exists()  # looked at before the server creates the file
    if port_taken(host, port):  # else another server would answer in its place, and we would say it is ours
        print(f"error: port {port} on {host} is taken by another process; try another: make ui PORT={port + 1}",
              file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, interrupt_once)  # `kill` stops it as cleanly as Ctrl-C
    process = subprocess.Popen(command, env=server_env(), process_group=0)
    try:
        page = find_experiment(uri, experiment, base_url) if known else None
        wait_until_up(process, base_url)
        print(f"MLflow UI on {base_url} over {uri}; Ctrl-C stops it", flush=True)
        if page:
            print(f"experiment '{experiment}': {page}", flush=True)
        else:
            print(f"experiment '{experiment}' is not in the store yet: run `make sweep` first, "
                  f"then open {base_url}", flush=True)
        process.wait()
        print(f"the MLflow server exited with code {process.returncode}", file=sys.stderr)
        return process.returncode or 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping the MLflow UI", flush=True)
        return 0
    finally:
        stop(process)
