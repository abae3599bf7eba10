"""Shared fixtures: a tiny CPU config and throwaway tracking stores."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.core import config
from harness.ops.services import group_alive

ROOT = Path(__file__).resolve().parents[1]

PARITY = dict(rtol=1e-5, atol=1e-5)
"""How close a fast path's curve must stay to the torch loop's, at every step: within 1e-5.
The paths sum in different orders, in float32, and where a ReLU input sits at 0 that order can
flip a unit on or off for a step. On an AMD EPYC (AVX2) the torch ops moved one val_loss of 0.38
by 6.7e-6 that way (1.7e-5 relative); on an Intel Xeon (AVX-512) the largest move was 20 times
smaller. The absolute bound is what catches a wrong step: those are off by 1e-3 and more."""


@pytest.fixture
def tiny_cfg():
    """The lecture's network on the CPU with a short budget."""
    return config.build({"iterations": 30, "device": "cpu", "experiment": "tests", "image_size": 256})


@pytest.fixture(scope="session")
def session_store(tmp_path_factory):
    """One SQLite store for the whole session: creating MLflow's tables takes seconds."""
    root = tmp_path_factory.mktemp("store")
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="session")
def tracker(session_store):
    from harness.tracking.tracker import Tracker  # MLflow only where a test tracks: the rest run without it
    return Tracker(session_store)


@pytest.fixture
def cli_env(session_store):
    """Environment for running `python -m harness` against the session's store."""
    return {**os.environ, "MLFLOW_TRACKING_URI": session_store, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def fresh_fast_paths(monkeypatch):
    """A test starts with the fenced fast paths checked afresh, none turned off, and leaves them so."""
    from harness.study import optuna_fast
    from harness.tracking import mlflow_fast

    monkeypatch.delenv("WINE_INIT_PUBLIC_API", raising=False)
    for fence in (mlflow_fast, optuna_fast):
        fence.reset()
    yield
    for fence in (mlflow_fast, optuna_fast):
        fence.reset()


@pytest.fixture
def cpu():
    return torch.device("cpu")


def run_cli(*args, env, timeout=300):
    import subprocess
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def wait_until(condition, timeout: float, interval: float = 0.05) -> bool:
    """Check `condition` every `interval` seconds until it holds or `timeout` seconds pass; whether it holds."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(interval)
    return bool(condition())


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; the tiny race is fine for a test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UiProcess:
    """`python -m harness ui` as a user runs it. Its output goes to a file, not a pipe, so a
    chatty server can never block on a full pipe while the test looks elsewhere."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "harness", "ui", *args], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.server_group: int | None = None

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_for_line(self, start: str, timeout: float = 180) -> str:
        """The first output line that starts with `start`; fails if the command exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.find_server()
            for line in self.output().splitlines():
                if line.startswith(start):
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"ui exited with {self.proc.returncode} before printing {start!r}:\n{self.output()}")
            time.sleep(0.3)
        raise AssertionError(f"ui printed no line starting with {start!r} in {timeout} s:\n{self.output()}")

    def find_server(self) -> None:
        """Remember the server's process group (its pid: it leads its own group), to check and clean up."""
        if self.server_group is None:
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                return
            if children:
                self.server_group = int(children[0])

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C, as the terminal sends it; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Whatever happened in the test, leave no process behind."""
        try:
            if self.proc.poll() is None:
                try:
                    self.interrupt(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            if self.server_group is not None and group_alive(self.server_group):
                os.killpg(self.server_group, signal.SIGKILL)
            self.log.close()


class DashboardProcess(UiProcess):
    """`python -m harness dashboard`, run, read and stopped as `UiProcess` does `ui`."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path, self.log, self.server_group = log_path, open(log_path, "w"), None
        self.proc = subprocess.Popen([sys.executable, "-m", "harness", "dashboard", *args], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
