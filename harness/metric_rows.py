"""A run's metric values written into MLflow's SQL store as one multi-row INSERT.

`MlflowClient.log_batch` builds an ORM object per value and SQLAlchemy flushes them one at a
time: about 100 ms for a trial's 804 values, 80% of the writer process's work in a batched
sweep. For a store in a database (MLflow's `SqlAlchemyStore`: SQLite, PostgreSQL) `log_metrics`
inserts the values with one statement into the store's own `metrics` table, in one transaction
with the store's own checks (each value as `log_batch` checks it; the run exists and is active)
and its own update of `latest_metrics`: 12-20 ms. The rows are the ones `log_batch` writes
(tests/test_tracking.py compares them). A store of another kind (a tracking server), an MLflow
whose store internals differ, or a value already in the store (which `log_batch` skips) get
`log_batch` instead.
"""

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag


def log_batch(client: MlflowClient, run_id: str, metrics: list[tuple], params: list[tuple] = (),
              tags: list[tuple] = (), one_insert: bool = True) -> None:
    """What `client.log_batch` does with `metrics` as (key, value, timestamp, step) tuples and
    params and tags as (key, value) pairs: params and tags first, then the metrics. Not
    `one_insert`: MLflow's log_batch itself (the benchmark and the tests compare the two)."""
    if one_insert and metrics and inserted(client, run_id, metrics, params, tags):
        return
    client.log_batch(run_id, metrics=[Metric(*m) for m in metrics], params=[Param(*p) for p in params],
                     tags=[RunTag(*t) for t in tags])


def inserted(client: MlflowClient, run_id: str, metrics: list[tuple], params, tags) -> bool:
    """Write the batch with one INSERT for the metrics; False, with nothing written, where
    `log_batch` has to do it (see the module's docstring)."""
    try:
        from sqlalchemy import insert
        from sqlalchemy.exc import IntegrityError
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.utils.validation import _validate_metric
        store = client._tracking_client.store
        if not isinstance(store, SqlAlchemyStore):
            return False
        sessions, sanitized = store.ManagedSessionMaker, store.sanitize_metric_value
        get_run, check_active = store._get_run, store._check_run_is_active
        update_latest = store._update_latest_metrics_if_necessary
    except (ImportError, AttributeError):
        return False

    rows, latest = [], {}
    for i, (key, value, timestamp, step) in enumerate(metrics):
        _validate_metric(key, value, timestamp, step, path=f"metrics[{i}]")
        is_nan, value = sanitized(value)
        row = dict(run_uuid=run_id, key=key, value=value, timestamp=timestamp, step=step, is_nan=is_nan)
        rows.append(row)
        last = latest.get(key)  # the newest value of each key is all latest_metrics needs
        if last is None or (step, timestamp, value) > (last["step"], last["timestamp"], last["value"]):
            latest[key] = row
    if params or tags:
        client.log_batch(run_id, params=[Param(*p) for p in params], tags=[RunTag(*t) for t in tags])

    with sessions(read_only=False) as session:
        check_active(get_run(run_uuid=run_id, session=session))
        try:
            session.execute(insert(SqlMetric.__table__), rows)
        except IntegrityError:  # a value already stored: log_batch skips those
            session.rollback()
            duplicate = True
        else:
            update_latest([SqlMetric(**row) for row in latest.values()], session)
            duplicate = False
    if duplicate:
        client.log_batch(run_id, metrics=[Metric(*m) for m in metrics])
    return True
