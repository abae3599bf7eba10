"""`make services`: PostgreSQL and an MLflow tracking server on this machine, the engines a sweep
on several machines shares (see the README, "Running on several machines").

Everything lives under mlruns/services/ (git-ignored), so a restart keeps the data: the cluster
(postgres/), the artifacts the tracking server serves (artifacts/), its log and pid, the ports in
use (services.json) and, unless WINE_DB_PASSWORD is set, the generated database password
(db-password, readable by its owner only). The tests start the same servers in a temporary
directory with `Services(...).start()`.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ServiceError
from harness.ops.postgres import Cluster
from harness.ops.ui_app import APP, app_problem

DEFAULT_ROOT = Path("mlruns/services")
PASSWORD_ENV = "WINE_DB_PASSWORD"


def db_password(root: Path) -> str:
    """WINE_DB_PASSWORD, else the one generated on the first start (kept out of the repository)."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    path = root / "db-password"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip()


def port_taken(host: str, port: int) -> bool:
    """Whether some process already listens on host:port (so a server started there would die,
    while another one answered in its place)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def group_alive(pid: int) -> bool:
    """Whether any process of the group `pid` leads is alive: uvicorn and MLflow's workers can
    outlive the `mlflow server` process that started them."""
    try:
        os.killpg(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(pid: int, timeout: float, first: int = signal.SIGTERM) -> None:
    """Send `first` to the process group `pid` leads and wait up to `timeout` for all of it to
    exit (reaping the leader when it is our child); then the same with SIGKILL."""
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not group_alive(pid):
                return
            time.sleep(0.1)


def answers(url: str, timeout: float = 2.0, path: str = "/health") -> bool:
    """Whether a server answers 200 at `url` + `path` (by default an MLflow server's health check)."""
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class MlflowServer:
    """`mlflow server` over the cluster's `mlflow` database, serving the artifacts itself, so a
    worker on another machine needs only its URL (no shared disk)."""
    root: Path
    cluster: Cluster
    port: int = 5001
    host: str = "127.0.0.1"
    workers: int = 2  # the server mostly waits on PostgreSQL; more processes only cost memory

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "mlflow.pid"

    def pid(self) -> int | None:
        """The server's process group, while any process of it lives."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if group_alive(pid) else None

    def start(self, password: str, timeout: float = 180) -> None:
        if self.pid() and answers(self.url):
            return
        self.stop()  # what is left of a server that crashed
        if port_taken(self.host, self.port):
            raise ServiceError(f"port {self.port} on {self.host} is taken by another process; "
                               f"choose another: make services MLFLOW_PORT=...")
        mlflow = Path(sys.executable).parent / "mlflow"
        command = [str(mlflow), "server", "--backend-store-uri", self.cluster.url("mlflow"),
                   "--serve-artifacts", "--artifacts-destination", str((self.root / "artifacts").resolve()),
                   "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
                   # its UI opens in the model-training view, as make ui's (harness/ops/ui_app.py)
                   *(["--app-name", APP] if app_problem() is None else [])]
        # the password reaches the server through the environment, never its command line; the
        # job runner serves GenAI features we do not use, and would start a dozen processes
        env = {**os.environ, "PGPASSWORD": password, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "mlflow.log", "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(f"{process.pid}\n")
        deadline = time.time() + timeout  # the first start creates MLflow's tables
        while process.poll() is not None or not answers(self.url):
            if process.poll() is not None or time.time() > deadline:
                self.stop()
                tail = "\n".join((self.root / "mlflow.log").read_text(errors="replace").splitlines()[-5:])
                raise ServiceError(f"the MLflow server did not start on {self.url}; the end of "
                                   f"{self.root / 'mlflow.log'}:\n{tail}")
            time.sleep(0.5)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL, to simulate a crash) to the server and its worker processes."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        stop_group(pid, 30, signal.SIGKILL if kill else signal.SIGTERM)
        self.pid_file.unlink(missing_ok=True)


@dataclass
class Services:
    root: Path = DEFAULT_ROOT
    host: str = "127.0.0.1"
    pg_port: int = 5433
    mlflow_port: int = 5001
    mlflow_workers: int = 2

    @property
    def cluster(self) -> Cluster:
        return Cluster(self.root / "postgres", self.pg_port, self.host)

    @property
    def mlflow(self) -> MlflowServer:
        return MlflowServer(self.root, self.cluster, self.mlflow_port, self.host, self.mlflow_workers)

    def start(self) -> None:
        running = Services.saved(self.root)
        if (running.pg_port, running.mlflow_port) != (self.pg_port, self.mlflow_port) and running.cluster.running():
            raise ServiceError(f"the services of {self.root} already run on PG_PORT={running.pg_port} "
                               f"MLFLOW_PORT={running.mlflow_port}; start them with those ports, or stop "
                               "them first (make services-stop)")
        password = db_password(self.root)
        self.cluster.ensure(password)
        self.mlflow.start(password)
        (self.root / "services.json").write_text(json.dumps(
            {"host": self.host, "pg_port": self.pg_port, "mlflow_port": self.mlflow_port,
             "mlflow_workers": self.mlflow_workers}) + "\n")

    def stop(self) -> None:
        self.mlflow.stop()
        self.cluster.stop()

    @classmethod
    def saved(cls, root: Path = DEFAULT_ROOT) -> "Services":
        """The services as the last start left them (their ports), to stop or describe them."""
        path = root / "services.json"
        return cls(root, **json.loads(path.read_text())) if path.exists() else cls(root)

    def describe(self) -> str:
        from_env = bool(os.environ.get(PASSWORD_ENV))
        password_from = f"${PASSWORD_ENV}" if from_env else f"{self.root / 'db-password'}"
        give = f'"${PASSWORD_ENV}"' if from_env else f'"$(cat {self.root / "db-password"})"'
        storage = self.cluster.url("optuna")
        return "\n".join([
            f"PostgreSQL  {storage.replace('@', ':***@')}  (data in {self.cluster.root}, log {self.cluster.log})",
            f"MLflow      {self.mlflow.url}  (UI and API; artifacts in {self.root / 'artifacts'}, log {self.root / 'mlflow.log'})",
            f"password    in {password_from}; give it to workers as PGPASSWORD or in ~/.pgpass, not in the URL",
            "",
            "join the study from this or another machine (replace 127.0.0.1 by this machine's address):",
            f"  PGPASSWORD={give} make worker STORAGE={storage} TRACKING={self.mlflow.url} STUDY=wine-sweep TRIALS=20",
        ])
