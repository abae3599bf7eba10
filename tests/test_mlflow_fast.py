"""The fenced MLflow fast paths (harness/tracking/mlflow_fast.py): taken with the versions we
install, checked at start-up, and leaving the store as MLflow's own calls leave it."""

import math

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from harness.errors import FallbackWarning
from harness.tracking import mlflow_fast
from harness.tracking.mlflow_fast import log_batch

KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


@pytest.fixture
def client(session_store):
    client = MlflowClient(session_store)
    client.experiment_id = client.get_experiment_by_name("metric-rows") or client.create_experiment("metric-rows")
    if not isinstance(client.experiment_id, str):
        client.experiment_id = client.experiment_id.experiment_id
    return client


pytestmark = pytest.mark.usefixtures("fresh_fast_paths")


@pytest.fixture
def log_batch_calls(monkeypatch):
    """The metric values the store's own write was given: none when one INSERT did the work."""
    calls = []
    original = SqlAlchemyStore._log_metrics

    def counted(self, run_id, metrics):
        if metrics:
            calls.append(metrics)
        return original(self, run_id, metrics)

    monkeypatch.setattr(SqlAlchemyStore, "_log_metrics", counted)
    return calls


def stored(client, run_id):
    run = client.get_run(run_id)
    history = {key: sorted((m.step, m.timestamp, str(m.value)) for m in client.get_metric_history(run_id, key))
               for key in run.data.metrics}
    return history, {k: str(v) for k, v in run.data.metrics.items()}, run.data.params, \
        {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}


def batches():
    """Two batches as a run's logger hands them over, the later one with smaller steps (latest
    must keep the larger step), values that are not finite, and the params and tags."""
    def values(steps, t):
        return [(key, 0.25 * step + i, t, step) for step in steps for i, key in enumerate(KEYS)]
    first = values(range(100, 201), 1_700_000_000_000)
    first[4] = ("train_loss", math.nan, first[4][2], first[4][3])
    first[9] = ("train_accuracy", math.inf, first[9][2], first[9][3])
    first[-4] = ("train_loss", -math.inf, first[-4][2], first[-4][3])  # the newest train_loss
    second = values(range(0, 100), 1_700_000_000_500)
    return [(first, [("lr", "0.1"), ("seed", "7")], [("phase", "one")]), (second, [], [("phase", "two")])]


def test_the_fast_paths_are_taken_with_the_installed_versions():
    """With the versions `make` installs (requirements.lock) and the floor (make test-floor),
    every check passes: a release that moves an internal fails this before it slows anyone."""
    assert mlflow_fast.fast_paths() == set(mlflow_fast.PATHS.checks)


def test_one_insert_stores_what_log_batch_stores(client, log_batch_calls, monkeypatch):
    runs = []
    for one_insert in (True, False):
        monkeypatch.setattr(mlflow_fast.PATHS, "off", set() if one_insert else {"metric_rows"})
        run_id = client.create_run(client.experiment_id).info.run_id
        for metrics, params, tags in batches():
            log_batch(client, run_id, metrics, params, tags)
        runs.append(run_id)
        if one_insert:
            assert log_batch_calls == []  # the INSERT did it, not a fallback
    ours, mlflows = (stored(client, run_id) for run_id in runs)
    assert ours == mlflows
    assert len(ours[0]["val_loss"]) == 201 and ours[1]["train_loss"] == str(-1.7976931348623157e308)  # how MLflow stores -inf


def test_values_already_stored_are_skipped_as_log_batch_skips_them(client, log_batch_calls):
    (metrics, params, tags), _ = batches()
    run_id = client.create_run(client.experiment_id).info.run_id
    log_batch(client, run_id, metrics, params, tags)
    log_batch(client, run_id, metrics[:8] + [("val_loss", 9.0, 1, 500)], params, tags)
    assert len(log_batch_calls) == 1  # the second batch went to log_batch
    history, latest, _, _ = stored(client, run_id)
    assert len(history["train_loss"]) == 101 and len(history["val_loss"]) == 102
    assert latest["val_loss"] == "9.0"


def test_a_deleted_run_or_a_bad_value_is_refused_before_anything_is_written(client):
    run_id = client.create_run(client.experiment_id).info.run_id
    with pytest.raises(MlflowException, match="metrics\\[1\\].value"):
        log_batch(client, run_id, [("train_loss", 1.0, 1, 0), ("train_loss", "x", 1, 1)])
    assert client.get_metric_history(run_id, "train_loss") == []
    client.delete_run(run_id)
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        log_batch(client, run_id, [("train_loss", 1.0, 1, 0)])
    client.restore_run(run_id)
    assert client.get_metric_history(run_id, "train_loss") == []


def test_a_changed_param_is_refused_and_nothing_of_its_batch_is_written(client):
    run_id = client.create_run(client.experiment_id).info.run_id
    log_batch(client, run_id, [("train_loss", 1.0, 1, 0)], [("lr", "0.1")])
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        log_batch(client, run_id, [("train_loss", 0.5, 1, 1)], [("lr", "0.2")], [("phase", "two")])
    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.1"} and "phase" not in run.data.tags
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0]


def test_values_are_converted_as_the_client_converts_them(client):
    """A tensor or an array of one value is taken as the float it holds, as by MlflowClient."""
    import numpy as np
    import torch

    run_id = client.create_run(client.experiment_id).info.run_id
    log_batch(client, run_id, [("train_loss", torch.tensor(0.5), 1, 0), ("train_accuracy", np.array(0.25), 1, 0)])
    assert client.get_run(run_id).data.metrics == {"train_loss": 0.5, "train_accuracy": 0.25}


def fails_once(monkeypatch, owner, name: str, error: Exception) -> None:
    """`owner.name` raises `error` at its first call, then works: an internal whose signature
    the fast path no longer fits, which MLflow's or Optuna's own code calls the right way."""
    original = getattr(owner, name)
    calls = []

    def moved(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, moved)


@pytest.mark.parametrize("internal, error", [
    # MLflow 3.9-3.12's session maker takes no `read_only`: raised before the transaction
    ("ManagedSessionMaker", "make_managed_session() got an unexpected keyword argument 'read_only'"),
    # inside the transaction, where MLflow's session maker makes any error an MlflowException
    ("_update_latest_metrics_if_necessary", "_update_latest_metrics_if_necessary() takes 3 positional arguments"),
])
def test_a_store_whose_internals_moved_gets_log_batch_with_one_warning(client, log_batch_calls, monkeypatch,
                                                                       internal, error):
    """The batch is written all the same, by log_batch, and the one-transaction path is not
    tried again."""
    (metrics, params, tags), (more, _, more_tags) = batches()
    run_id = client.create_run(client.experiment_id).info.run_id
    fails_once(monkeypatch, client._tracking_client.store, internal, TypeError(error))
    with pytest.warns(FallbackWarning) as warned:
        log_batch(client, run_id, metrics, params, tags)
        assert not mlflow_fast.enabled("metric_rows")
        log_batch(client, run_id, more, [], more_tags)  # by log_batch too: the path is off now
    assert len(log_batch_calls) == 2
    history, _, stored_params, stored_tags = stored(client, run_id)
    assert len(history["val_loss"]) == 201 and stored_params == {"lr": "0.1", "seed": "7"}
    assert stored_tags == {"phase": "two"}
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "the metric_rows fast path does not fit this version" in message and "using MlflowClient.log_batch" in message
    assert error in message


@pytest.mark.parametrize("moved", ["signature", "column"])
def test_a_check_that_fails_at_start_up_leaves_the_path_off_with_one_line(client, log_batch_calls, monkeypatch, moved):
    """An MLflow whose internals moved: a signature changed, or a table grew a column the rows
    would leave out. The check sees it before the first write, and log_batch writes."""
    with monkeypatch.context() as m:
        if moved == "signature":
            m.setattr(SqlAlchemyStore, "_update_latest_metrics_if_necessary", lambda self, session, metrics, run: None)
        else:  # the table has a column the rows would leave out (as if MLflow added is_nan now)
            m.setattr(mlflow_fast, "METRIC_COLUMNS", mlflow_fast.METRIC_COLUMNS - {"is_nan"})
        with pytest.warns(FallbackWarning) as warned:
            assert mlflow_fast.fast_paths() == {"image_files"}
    err = str(warned[0].message)
    assert len(warned) == 1 and "the metric_rows fast path does not fit" in err
    assert ("_update_latest_metrics_if_necessary" if moved == "signature" else "'is_nan'") in err
    run_id = client.create_run(client.experiment_id).info.run_id
    log_batch(client, run_id, [("train_loss", 1.0, 1, 0)])
    assert len(log_batch_calls) == 1 and client.get_metric_history(run_id, "train_loss")[0].value == 1.0


def test_wine_init_public_api_turns_the_paths_off(monkeypatch, recwarn):
    monkeypatch.setenv("WINE_INIT_PUBLIC_API", "metric_rows")
    assert mlflow_fast.fast_paths() == {"image_files"}
    mlflow_fast.reset()
    monkeypatch.setenv("WINE_INIT_PUBLIC_API", "all")
    assert mlflow_fast.fast_paths() == set()
    assert len(recwarn) == 0  # asked for: nothing to warn about


def test_step_images_go_through_log_image_where_its_layout_moved(session_store, monkeypatch):
    """An MLflow whose log_image names its files otherwise: each image goes through log_image."""
    from PIL import Image

    from harness.tracking.tracker import Tracker

    original, calls = MlflowClient.log_image, []

    def log_image(self, run_id, image, **kwargs):  # another layout, as far as the check can tell
        calls.append(kwargs["step"])
        return original(self, run_id, image, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_image", log_image)
    with pytest.warns(FallbackWarning, match="the image_files fast path does not fit"):
        assert mlflow_fast.fast_paths() == {"metric_rows"}
    tracker = Tracker(session_store)
    with tracker.run("tests", "images-by-log-image") as logger:
        for step in (0, 10):
            logger.log_image(Image.new("RGB", (64, 64), "red"), key="boundary", step=step)
    assert calls == [0, 10]
    assert tracker.image_steps(logger.run_id, "boundary").keys() == {0, 10}
    assert tracker.get_run(logger.run_id).data.tags[mlflow_fast.LOGGED_IMAGES_TAG] == "True"
