"""A batch written with one INSERT leaves the store as MLflow's own log_batch leaves it."""

import math

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from harness.tracking.metric_rows import log_batch

KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


@pytest.fixture
def client(session_store):
    client = MlflowClient(session_store)
    client.experiment_id = client.get_experiment_by_name("metric-rows") or client.create_experiment("metric-rows")
    if not isinstance(client.experiment_id, str):
        client.experiment_id = client.experiment_id.experiment_id
    return client


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


def test_one_insert_stores_what_log_batch_stores(client, log_batch_calls):
    runs = []
    for one_insert in (True, False):
        run_id = client.create_run(client.experiment_id).info.run_id
        for metrics, params, tags in batches():
            log_batch(client, run_id, metrics, params, tags, one_insert=one_insert)
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
def test_a_store_whose_internals_moved_gets_log_batch_with_one_warning(client, log_batch_calls, monkeypatch, capfd,
                                                                       internal, error):
    """The batch is written all the same, by log_batch, and the one-transaction path is not
    tried again."""
    (metrics, params, tags), (more, _, more_tags) = batches()
    run_id = client.create_run(client.experiment_id).info.run_id
    fails_once(monkeypatch, client._tracking_client.store, internal, TypeError(error))
    assert log_batch(client, run_id, metrics, params, tags) is False
    assert log_batch(client, run_id, more, [], more_tags, one_insert=False) is False
    monkeypatch.undo()
    assert len(log_batch_calls) == 2
    history, _, stored_params, stored_tags = stored(client, run_id)
    assert len(history["val_loss"]) == 201 and stored_params == {"lr": "0.1", "seed": "7"}
    assert stored_tags == {"phase": "two"}
    err = capfd.readouterr().err
    assert "writing with log_batch instead" in err and error in err
    assert len(err.strip().splitlines()) == 1
