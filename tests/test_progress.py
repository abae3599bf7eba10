"""What a user sees while a command works and when it ends: progress on a terminal only, and a
link to the run that opens in MLflow's model-training view."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from mlflow import MlflowClient

from conftest import ROOT
from harness.progress import Status
from harness.tracking.tracker import EXPERIMENT_KIND

TRAIN = ["train", "--set", "iterations=40", "--set", "device=cpu", "--set", "image_size=256",
         "--set", "experiment=progress-test", "--set", "target_accuracy=0.7", "--set", "hold_steps=5"]
LINK = re.compile(r"the run: http://127\.0\.0\.1:5000/#/experiments/(\d+)/runs/([0-9a-f]{32})"
                  r"\?workflowType=machine_learning")


def run_on_terminal(args: list[str], env: dict, timeout: float = 300) -> tuple[int, str]:
    """Run `python -m harness` with stdout and stderr on a pseudo-terminal, as in a shell."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    process = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 1)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    return process.wait(timeout=60), out.decode(errors="replace")


def test_train_shows_a_step_bar_on_a_terminal_and_links_its_run(cli_env, session_store):
    client = MlflowClient(session_store)
    artifacts = (Path(session_store.removeprefix("sqlite:///")).parent / "artifacts").as_uri()  # not ./mlruns
    experiment_id = client.create_experiment("progress-test", artifacts)  # as an older version made it: no view tag
    code, shown = run_on_terminal(TRAIN, cli_env)
    assert code == 0, shown
    assert re.search(r"training lr 0\.7 seed 0: +\d+%.*\d+/41", shown), shown  # tqdm's bar, 41 steps
    # the printed link opens the run in the model-training view
    linked_experiment, run_id = LINK.search(shown).groups()
    run = client.get_run(run_id)
    assert linked_experiment == experiment_id == run.info.experiment_id
    assert run.data.metrics["iterations_to_target_held"] >= run.data.metrics["iterations_to_target"]
    # the tag MLflow's UI reads where the view is not in the URL, set on the experiment made before
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]


def test_a_status_line_redraws_with_the_time_and_clears_itself(capsys):
    with Status("training 3 seeds", enabled=True) as status:
        time.sleep(0.7)
        print("a note meanwhile")
        status.set("drawing")
        time.sleep(0.6)
    out, err = capsys.readouterr()
    assert err.startswith("\rtraining 3 seeds ... 0 s") and "\rdrawing ... 1 s" in err
    assert err.endswith("\r")  # blanked: what the command prints next starts on a clean line
    assert out == "a note meanwhile\n"  # on a line of its own: the status line was blanked before it
    assert "\r" + " " * len("training 3 seeds ... 0 s") + "\r" in err.split("drawing")[0]
    with Status("quiet", enabled=False):
        time.sleep(0.6)
    assert capsys.readouterr().err == ""
