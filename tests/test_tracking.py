import os
from dataclasses import replace
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from harness.tracking import images as images_module
from harness.tracking import mlflow_fast
from harness.tracking import writer_process as writer_module

from harness.experiment import RunSpec, Workspace, run_training
from harness.tracking.tracker import Tracker
from harness.core.train import METRICS, Callbacks
from harness.tracking.writer import WriteError
from conftest import run_cli, wait_until


def image_steps(client, run_id, key="boundary"):
    names = [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "images")]
    pngs = [n for n in names if n.startswith(f"{key}+step+") and n.endswith(".png") and "compressed" not in n]
    return sorted(int(n.split("+")[2]) for n in pngs)


def test_a_run_logs_every_metric_every_image_and_the_params(tiny_cfg, tracker):
    outcome = run_training(tiny_cfg, tracker)
    client = MlflowClient(tracker.uri)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    for name in METRICS:
        history = client.get_metric_history(outcome.run_id, name)
        assert sorted(m.step for m in history) == list(range(31))
        by_step = {m.step: m.value for m in history}
        assert np.allclose([by_step[k] for k in range(31)], outcome.result.history[name])
    assert image_steps(client, outcome.run_id) == [0, 10, 20, 30]
    params = run.data.params
    assert params["lr"] == str(tiny_cfg.lr) and params["iterations"] == "30"
    assert params["hidden"] == "[32]" and params["device_resolved"] == "cpu"
    assert "torch_version" in params and params["seed"] == "0"
    assert run.data.tags["diverged"] == "false"
    assert run.data.tags["reached_target"] == "false"
    assert "iterations_to_target" not in run.data.metrics


def test_reaching_the_target_is_a_run_metric(tiny_cfg, tracker):
    cfg = type(tiny_cfg)(**{**vars(tiny_cfg), "iterations": 200, "plot_every": 100})
    outcome = run_training(cfg, tracker)
    run = MlflowClient(tracker.uri).get_run(outcome.run_id)
    assert run.data.tags["reached_target"] == "true"
    assert run.data.metrics["iterations_to_target"] == outcome.result.iterations_to_target


def test_divergence_is_tagged_and_the_run_finishes(tiny_cfg, tracker):
    cfg = type(tiny_cfg)(**{**vars(tiny_cfg), "lr": 1e6})
    outcome = run_training(cfg, tracker)
    run = MlflowClient(tracker.uri).get_run(outcome.run_id)
    assert outcome.result.diverged and run.data.tags["diverged"] == "true"
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(tracker.uri).get_metric_history(outcome.run_id, "train_loss")]
    assert max(steps) == outcome.result.last_step < cfg.iterations


class RaiseAt(Callbacks):
    def __init__(self, step, exc):
        self.step, self.exc = step, exc

    def on_step(self, step, metrics):
        if step == self.step:
            raise self.exc


@pytest.mark.parametrize("trainer", ["auto", "fused_cpu"])
@pytest.mark.parametrize("exc, status", [(KeyboardInterrupt(), "KILLED"), (RuntimeError("boom"), "FAILED")])
def test_interrupted_or_failing_runs_are_closed_with_what_they_logged(tiny_cfg, tracker, exc, status, trainer):
    """The loop's run (auto), and a kernel's run logged afterwards (fused_cpu)."""
    from harness.trainers import fused_cpu

    if trainer == "fused_cpu" and fused_cpu.library() is None:
        pytest.skip("no C compiler here")
    started = []
    with pytest.raises(type(exc)):
        run_training(replace(tiny_cfg, trainer=trainer), tracker, spec=RunSpec(on_start=started.append),
                     callbacks=RaiseAt(7, exc))
    client = MlflowClient(tracker.uri)
    assert client.get_run(started[0]).info.status == status
    steps = sorted(m.step for m in client.get_metric_history(started[0], "val_loss"))
    assert steps == list(range(8))  # the buffered metrics were flushed, steps 0..7


def test_workspace_is_reused_for_the_same_data_settings(tiny_cfg):
    first = Workspace.for_config(tiny_cfg)
    same = Workspace.for_config(type(tiny_cfg)(**{**vars(tiny_cfg), "lr": 0.1, "seed": 5}), reuse=first)
    assert same is first
    other = Workspace.for_config(type(tiny_cfg)(**{**vars(tiny_cfg), "features": "all"}), reuse=first)
    assert other is not first


def test_cli_train_prints_the_run_and_the_ui_command(cli_env):
    proc = run_cli("train", "experiments/lecture.toml", "--set", "iterations=20", "--set", "device=cpu", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.split()[1]
    run = MlflowClient(cli_env["MLFLOW_TRACKING_URI"]).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["experiment"] == "lecture"
    assert "train_loss" in proc.stdout
    assert f"(start the UI first: MLFLOW_TRACKING_URI={cli_env['MLFLOW_TRACKING_URI']} make ui)" in proc.stdout
    assert proc.stderr == ""  # in a pipe: no progress bar (tests/test_progress.py has the terminal's)


def test_a_failed_write_fails_the_run_instead_of_finishing_it(tracker, monkeypatch):
    logger = tracker.open_run("tests", "write-fails")

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tracker.writer.writes, "client", type("Broken", (), {"log_batch": staticmethod(refuse)})())
    logger.log_metrics({"train_loss": 1.0}, step=0)
    with pytest.raises(OSError, match="disk full"):
        tracker.close_run(logger, "FINISHED")
    assert MlflowClient(tracker.uri).get_run(logger.run_id).info.status == "FAILED"


def test_a_writer_process_writes_the_run_and_fails_it_on_a_failed_write(session_store):
    """A sweep's writes go through a child process: the same records, the same failure path,
    and a failure stays with its run."""
    process_tracker = Tracker(session_store, writer_process=True)
    client = MlflowClient(session_store)
    try:
        logger = process_tracker.open_run("tests", "written-by-a-process")
        for step in range(3):
            logger.log_metrics({"train_loss": 1.0 / (step + 1)}, step=step)
        logger.log_image(Image.new("P", (384, 384), color=3), key="boundary", step=0)
        process_tracker.close_run(logger, "FINISHED")
        run = client.get_run(logger.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.loggedImages"] == "True"
        assert [m.value for m in client.get_metric_history(logger.run_id, "train_loss")] == pytest.approx([1.0, 0.5, 1 / 3])
        assert image_steps(client, logger.run_id) == [0]

        broken = process_tracker.open_run("tests", "refused-by-mlflow")
        broken.log_metrics({"not a valid key!": 1.0}, step=0)  # MLflow refuses the name
        with pytest.raises(WriteError, match="MlflowException"):
            process_tracker.close_run(broken, "FINISHED")
        assert client.get_run(broken.run_id).info.status == "FAILED"

        after = process_tracker.open_run("tests", "after-a-failure")
        after.log_metrics({"train_loss": 0.5}, step=0)
        process_tracker.close_run(after, "FINISHED")
        assert client.get_run(after.run_id).info.status == "FINISHED"
        child = process_tracker.writer.process
    finally:
        process_tracker.close()
    assert child.poll() == 0


@pytest.mark.parametrize("writer_process", [False, True], ids=["thread", "process"])
def test_a_failed_write_fails_its_own_run_not_the_one_closed_before_it(session_store, writer_process):
    """A batched sweep closes a run after the next one is handed over: the next one's failure
    must stay with it."""
    both = Tracker(session_store, writer_process=writer_process)
    client = MlflowClient(session_store)
    try:
        first, second = both.open_run("tests", "first"), both.open_run("tests", "second")
        first.log_metrics({"train_loss": 1.0}, step=0)
        first.hand_over()
        second.log_metrics({"not a valid key!": 1.0}, step=0)
        second.hand_over()
        both.close_run(first, "FINISHED")
        with pytest.raises(Exception, match="not a valid key|Invalid"):
            both.close_run(second, "FINISHED")
        assert client.get_run(first.run_id).info.status == "FINISHED"
        assert client.get_run(second.run_id).info.status == "FAILED"
    finally:
        both.close()


def test_a_writer_process_closed_with_questions_out_still_does_what_it_was_given(session_store):
    process_tracker = Tracker(session_store, writer_process=True)
    logger = process_tracker.open_run("tests", "closed-early")
    for step in range(500):
        logger.log_metrics({"train_loss": 1.0, "val_loss": 2.0}, step=step)
    logger.hand_over()  # a "done?" the parent will not wait for
    child = process_tracker.writer.process
    process_tracker.close()
    assert child.returncode == 0
    assert len(MlflowClient(session_store).get_metric_history(logger.run_id, "val_loss")) == 500
    process_tracker.end_run(logger.run_id, "FINISHED")


def test_a_writer_process_that_dies_fails_the_run(session_store):
    process_tracker = Tracker(session_store, writer_process=True)
    try:
        logger = process_tracker.open_run("tests", "writer-killed")
        logger.log_metrics({"train_loss": 1.0}, step=0)
        logger.flush()
        process_tracker.writer.process.kill()
        process_tracker.writer.process.wait()
        with pytest.raises(WriteError, match="writer process stopped"):
            process_tracker.close_run(logger, "FINISHED")
        assert MlflowClient(session_store).get_run(logger.run_id).info.status == "FAILED"
        after = process_tracker.open_run("tests", "after-the-writer-died")  # a new writer process
        after.log_metrics({"train_loss": 0.5}, step=0)
        process_tracker.close_run(after, "FINISHED")
        assert MlflowClient(session_store).get_run(after.run_id).info.status == "FINISHED"
    finally:
        process_tracker.close()


def artifact_layout(client, run_id):
    """A run's image artifacts with the per-call parts (timestamp, uuid) blanked, and its tags."""
    names = sorted(re.sub(r"\+timestamp\+\d+\+[0-9a-f-]{36}", "+timestamp+T+U", a.path)
                   for a in client.list_artifacts(run_id, "images"))
    return names, client.get_run(run_id).data.tags.get("mlflow.loggedImages")


def test_step_images_are_laid_out_as_mlflow_log_image_lays_them_out(tracker):
    """The UI's image grid and slider read MLflow's names and tag: the batched writer must match them."""
    images = [(step, Image.new("P", (384, 384), color=step)) for step in (0, 10, 20)]
    client = MlflowClient(tracker.uri)
    with tracker.run("tests", "mlflow-log-image") as logger:
        for step, image in images:
            client.log_image(logger.run_id, image, key="boundary", step=step)
    ours = tracker.open_run("tests", "harness-log-image")
    for step, image in images:
        ours.log_image(image, key="boundary", step=step)
    tracker.close_run(ours, "FINISHED")
    assert artifact_layout(client, ours.run_id) == artifact_layout(client, logger.run_id)

    for path in [a.path for a in client.list_artifacts(ours.run_id, "images")]:
        with Image.open(client.download_artifacts(ours.run_id, path)) as written:
            assert written.size == (384, 384)  # the WebP too: the UI's enlarged view shows it at its size
            step = int(path.split("+")[2])
            assert written.convert("RGB").getpixel((5, 5)) == images[[s for s, _ in images].index(step)][1].convert("RGB").getpixel((5, 5))


def test_a_long_run_writes_its_images_before_it_ends(tracker, monkeypatch):
    """Artifacts elsewhere than on this disk (a server's): images go in batches of BATCH."""
    monkeypatch.setattr(images_module, "BATCH", 2)
    monkeypatch.setattr(mlflow_fast, "local_artifact_dir", lambda artifact_uri, tracking_uri=None: None)
    logger = tracker.open_run("tests", "images-in-batches")
    for step in range(3):
        logger.log_image(Image.new("RGB", (64, 64)), key="boundary", step=step)
    logger.writer.drain()  # the writes so far, without closing the run
    assert image_steps(MlflowClient(tracker.uri), logger.run_id) == [0, 1]
    tracker.close_run(logger, "FINISHED")
    assert image_steps(MlflowClient(tracker.uri), logger.run_id) == [0, 1, 2]


def test_images_go_straight_into_a_local_artifact_folder(tracker, monkeypatch):
    """Artifacts on this disk: each image is in the run once written, whole, with no copy left
    behind; the run's listing is what `log_image` would give."""
    def no_copy(*args, **kwargs):
        raise AssertionError("log_artifacts copies what is already in place")

    monkeypatch.setattr(MlflowClient, "log_artifacts", no_copy)
    logger = tracker.open_run("tests", "images-in-place")
    for step in range(3):
        logger.log_image(Image.new("RGB", (64, 64)), key="boundary", step=step)
    logger.writer.drain()
    client = MlflowClient(tracker.uri)
    assert image_steps(client, logger.run_id) == [0, 1, 2]
    tracker.close_run(logger, "FINISHED")
    folder = mlflow_fast.local_artifact_dir(client.get_run(logger.run_id).info.artifact_uri)
    assert sorted(p.relative_to(folder.parent).parts[0] for p in folder.parent.rglob("*") if p.is_file()) == ["artifacts"] * 6
    assert client.get_run(logger.run_id).data.tags[mlflow_fast.LOGGED_IMAGES_TAG] == "True"


def test_images_that_cannot_be_written_in_place_go_by_log_artifacts(tracker, monkeypatch):
    """A local artifact folder this process cannot write in (a full disk, another user's
    folder): the image and those after it go MLflow's own way, none lost, nothing partial left."""
    import os
    import types

    calls = []

    def fails_once(source, target):
        calls.append(target)
        if len(calls) == 3:  # the second image's thumbnail, once written aside
            raise OSError(28, "No space left on device")
        os.replace(source, target)

    monkeypatch.setattr(images_module, "os", types.SimpleNamespace(replace=fails_once))
    logger = tracker.open_run("tests", "images-fall-back")
    for step in range(3):
        logger.log_image(Image.new("RGB", (64, 64)), key="boundary", step=step)
    tracker.close_run(logger, "FINISHED")
    client = MlflowClient(tracker.uri)
    assert image_steps(client, logger.run_id) == [0, 1, 2] and len(calls) == 3
    folder = mlflow_fast.local_artifact_dir(client.get_run(logger.run_id).info.artifact_uri)
    assert not list(folder.parent.glob(".*.partial"))
    assert client.get_run(logger.run_id).info.status == "FINISHED"


def test_a_writer_process_started_early_is_the_one_used(session_store, tmp_path):
    def write_a_run(process_tracker):
        logger = process_tracker.open_run("tests", "written-by-a-writer-process")
        logger.log_metrics({"train_loss": 1.0}, step=0)
        process_tracker.close_run(logger, "FINISHED")
        assert MlflowClient(session_store).get_metric_history(logger.run_id, "train_loss")[0].value == 1.0

    writer_module.start_early(f"sqlite:///{tmp_path}/another.db")
    unused = writer_module._early[1]
    process_tracker = Tracker(session_store, writer_process=True)
    try:
        write_a_run(process_tracker)  # another store's writer process is not used, but stopped
        assert process_tracker.writer.process is not unused and writer_module._early is None
        assert unused.wait(timeout=60) == 0
        assert not (tmp_path / "another.db").exists()  # it opens its store at its first command only
    finally:
        process_tracker.close()

    writer_module.start_early(session_store)
    early = writer_module._early[1]
    process_tracker = Tracker(session_store, writer_process=True)
    try:
        write_a_run(process_tracker)
        assert process_tracker.writer.process is early and writer_module._early is None
    finally:
        process_tracker.close()
    assert early.poll() == 0


def open_files(pid: int) -> set[Path]:
    files = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            files.add(Path(os.readlink(fd)))
        except OSError:  # closed meanwhile
            pass
    return files


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads the writer process's open files in /proc")
def test_a_writer_process_opens_the_store_before_it_is_given_a_write(session_store):
    """Opening the store takes the child half a second or more: it does it as the tracker is
    made, not when the first run's writes come and the run's close would wait for it."""
    process_tracker = Tracker(session_store, writer_process=True)
    try:
        store = Path(session_store.removeprefix("sqlite:///")).resolve()
        pid = process_tracker.writer.process.pid
        assert wait_until(lambda: store in open_files(pid), timeout=120)  # it imports MLflow first
    finally:
        process_tracker.close()


def test_a_writer_process_takes_a_run_before_its_images_are_encoded(session_store, monkeypatch):
    """The sweep trains the next trial while a run's images are encoded, sent and written."""
    release, encodes = threading.Event(), []

    def held_encoded(image):
        release.wait(30)
        encodes.append(image)
        return images_module.encoded(image)

    monkeypatch.setattr(writer_module, "encoded", held_encoded)
    process_tracker = Tracker(session_store, writer_process=True)
    try:
        logger = process_tracker.open_run("tests", "handed-over-before-encoded")
        logger.log_metrics({"train_loss": 1.0}, step=0)
        logger.log_image(Image.new("RGB", (32, 32), "white"), key="boundary", step=0)
        logger.hand_over()
        assert encodes == []  # handed over with its image still waiting to be encoded
        release.set()
        process_tracker.close_run(logger, "FINISHED")
        client = MlflowClient(session_store)
        assert image_steps(client, logger.run_id) == [0] and client.get_run(logger.run_id).info.status == "FINISHED"
    finally:
        release.set()
        process_tracker.close()


def test_a_writer_process_holds_the_worker_back_when_its_writes_fall_behind(session_store, monkeypatch):
    """At most `max_pending` metric batches and images wait to be sent: memory stays bounded, and
    a worker far ahead of its writes stays in the run they belong to (Ctrl-C kills that run)."""
    release = threading.Event()
    monkeypatch.setattr(writer_module, "encoded", lambda image: (release.wait(30), images_module.encoded(image))[1])
    monkeypatch.setattr(writer_module.WriterProcess, "max_pending", 2)
    process_tracker = Tracker(session_store, writer_process=True)
    try:
        logger = process_tracker.open_run("tests", "held-back")
        handed, all_handed = [], threading.Event()

        def log_three_images():
            for step in range(3):
                logger.log_image(Image.new("RGB", (32, 32), "white"), key="boundary", step=step)
                handed.append(step)
            all_handed.set()

        thread = threading.Thread(target=log_three_images)
        thread.start()
        wait_until(lambda: len(handed) >= 2, timeout=30, interval=0.01)
        assert handed == [0, 1]  # the first is being encoded, the second waits to be...
        assert not all_handed.wait(1.0)  # ...so the third cannot be handed over
        release.set()
        thread.join(30)
        assert all_handed.is_set() and handed == [0, 1, 2]
        process_tracker.close_run(logger, "FINISHED")
        assert image_steps(MlflowClient(session_store), logger.run_id) == [0, 1, 2]
    finally:
        release.set()
        process_tracker.close()


@pytest.mark.parametrize("write", ["image", "metric"])
def test_a_write_a_writer_process_cannot_encode_or_send_fails_its_run_not_the_next(session_store, write):
    process_tracker = Tracker(session_store, writer_process=True)
    try:
        bad = process_tracker.open_run("tests", f"{write}-not-sent")
        if write == "image":
            bad.log_image("not an image", key="boundary", step=0)
        else:
            bad.log_metrics({"train_loss": 1.0}, step=threading.Lock())  # cannot be pickled
        with pytest.raises(WriteError, match="AttributeError" if write == "image" else "pickle"):
            process_tracker.close_run(bad, "FINISHED")
        good = process_tracker.open_run("tests", f"after-the-{write}-not-sent")
        good.log_image(Image.new("RGB", (32, 32), "white"), key="boundary", step=0)
        process_tracker.close_run(good, "FINISHED")
        client = MlflowClient(session_store)
        assert client.get_run(bad.run_id).info.status == "FAILED"
        assert client.get_run(good.run_id).info.status == "FINISHED" and image_steps(client, good.run_id) == [0]
    finally:
        process_tracker.close()


def test_a_run_handed_to_a_writer_process_that_died_fails_even_if_another_run_noticed(session_store):
    process_tracker = Tracker(session_store, writer_process=True)
    try:
        first = process_tracker.open_run("tests", "handed-over-then-lost")
        first.log_metrics({"train_loss": 1.0}, step=0)
        first.hand_over()
        process_tracker.writer.process.kill()
        process_tracker.writer.process.wait()
        second = process_tracker.open_run("tests", "notices-the-dead-writer")
        with pytest.raises(WriteError, match="writer process stopped"):
            second.log_metrics({"train_loss": 1.0}, step=0)
            process_tracker.close_run(second, "FINISHED")
        with pytest.raises(WriteError, match="writer process stopped"):
            process_tracker.close_run(first, "FINISHED")
        assert MlflowClient(session_store).get_run(first.run_id).info.status == "FAILED"
    finally:
        process_tracker.close()


def test_checking_a_store_keeps_this_process_locks_on_it(tmp_path):
    """The store check reads through SQLite, not with a file of its own: closing one would drop
    every POSIX lock this process holds on the store, and another process closing its last
    connection would then take the WAL away from under our open ones (writes lost)."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(uri)
    run = first.open_run("tests", "kept")
    Tracker(uri)  # checks the store again, while `first` has connections open
    subprocess.run([sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({uri!r}).search_experiments()"],
                   check=True, capture_output=True)
    assert (tmp_path / "mlflow.db-wal").exists()  # our connections still hold it
    first.client.set_tag(run.run_id, "after", "yes")
    seen = subprocess.run([sys.executable, "-c", f"from mlflow import MlflowClient; "
                           f"print(MlflowClient({uri!r}).get_run({run.run_id!r}).data.tags['after'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    assert seen == "yes"
    first.close_run(run, "FINISHED")
