"""Shared fixtures: a tiny CPU config and throwaway tracking stores."""

import os
import sys
from pathlib import Path

import pytest
import torch

from harness import config
from harness.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]


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
    return Tracker(session_store)


@pytest.fixture
def cli_env(session_store):
    """Environment for running `python -m harness` against the session's store."""
    return {**os.environ, "MLFLOW_TRACKING_URI": session_store, "PYTHONPATH": str(ROOT)}


@pytest.fixture
def cpu():
    return torch.device("cpu")


def run_cli(*args, env, timeout=300):
    import subprocess
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
