"""A run's batch of metric values, params and tags written into MLflow's SQL store in one transaction.

`MlflowClient.log_batch` opens a transaction for the params, one for the metrics and one for
the tags, and builds an ORM object per metric value that SQLAlchemy flushes one at a time:
about 100 ms for a trial's 804 values, 80% of the writer process's work in a batched sweep. For
a store in a database (MLflow's `SqlAlchemyStore`: SQLite, PostgreSQL) `log_batch` here writes
the same rows in one transaction: the metric values with one multi-row INSERT into the store's
own `metrics` table, `latest_metrics` brought up to date by the store's own method, the params
and tags as the store writes them, after the store's own checks (each value, param and tag as
`log_batch` checks it; the run exists and is active; a param is never changed): 12-20 ms. The
rows are the ones `log_batch` writes (tests/test_metric_rows.py compares them). A store of
another kind (a tracking server), an MLflow whose store internals differ, a run-name tag (which
MLflow also writes into the run's row), an active model (whose metrics MLflow also writes), a
batch over MLflow's limits, or a metric value already stored (which `log_batch` skips) get
MLflow's `log_batch` instead. So does every batch after the one-transaction path failed in a way
`log_batch` did not (an MLflow whose internals take other arguments), with one warning line:
an optimisation that does not fit the installed MLflow never fails a run's write. (MLflow's
session maker turns any error inside the transaction into an MlflowException: only log_batch can
tell the store's own refusal from a path that does not fit.)
"""

import sys

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

BATCH_LIMIT = 1000  # MLflow's limit of metric values, params and tags in one log_batch


def log_batch(client: MlflowClient, run_id: str, metrics: list[tuple], params: list[tuple] = (),
              tags: list[tuple] = (), one_insert: bool = True) -> bool:
    """What `client.log_batch` does with `metrics` as (key, value, timestamp, step) tuples and
    params and tags as (key, value) pairs. Not `one_insert`: MLflow's log_batch itself (the
    benchmark and the tests compare the two).

    Returns whether the one-transaction path may be used for the next batch: False once it
    raised where MLflow's log_batch then wrote the same batch (the store's own checks, a full
    disk and the like raise from both, and log_batch's error is the one raised)."""
    fast_path_error = None
    if one_insert and metrics:
        try:
            if in_one_transaction(client, run_id, metrics, params, tags):
                return True
        except Exception as e:  # nothing of it was written: its transaction was rolled back
            fast_path_error = e  # log_batch raises it again if it is the store's (an ended run, a full disk)
    client.log_batch(run_id, metrics=[Metric(*m) for m in metrics], params=[Param(*p) for p in params],
                     tags=[RunTag(*t) for t in tags])
    if fast_path_error is not None:  # log_batch wrote what the one transaction could not: it does not fit
        from mlflow.version import VERSION
        print(f"warning: MLflow {VERSION}: one-transaction metric writes do not fit this version "
              f"({type(fast_path_error).__name__}: {fast_path_error}); writing with log_batch instead",
              file=sys.stderr)
        return False
    return one_insert


def in_one_transaction(client: MlflowClient, run_id: str, metrics: list[tuple], params, tags) -> bool:
    """Write the batch in one transaction; False, with nothing written, where `log_batch` has
    to do it (see the module's docstring)."""
    try:
        from sqlalchemy import insert
        from sqlalchemy.exc import IntegrityError
        from mlflow.store.tracking.dbmodels.models import SqlMetric, SqlParam, SqlTag
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking.fluent import get_active_model_id
        from mlflow.tracking.metric_value_conversion_utils import convert_metric_value_to_float_if_possible
        from mlflow.utils.validation import (_validate_batch_log_data, _validate_metric, _validate_param_keys_unique,
                                             _validate_run_id)
        store = client._tracking_client.store
        if (not isinstance(store, SqlAlchemyStore) or any(key == MLFLOW_RUN_NAME for key, _ in tags)
                or get_active_model_id() is not None  # its metrics go to the model too
                or len(metrics) + len(params) + len(tags) > BATCH_LIMIT):  # log_batch says what is wrong
            return False
        sessions, sanitized = store.ManagedSessionMaker, store.sanitize_metric_value
        get_run, check_active = store._get_run, store._check_run_is_active
        update_latest = store._update_latest_metrics_if_necessary
    except (ImportError, AttributeError):
        return False

    _validate_run_id(run_id)
    rows, latest = [], {}
    for i, (key, value, timestamp, step) in enumerate(metrics):
        value = convert_metric_value_to_float_if_possible(value)  # as the client does (a tensor, an array)
        _validate_metric(key, value, timestamp, step, path=f"metrics[{i}]")
        is_nan, value = sanitized(value)
        row = dict(run_uuid=run_id, key=key, value=value, timestamp=timestamp, step=step, is_nan=is_nan)
        rows.append(row)
        last = latest.get(key)  # the newest value of each key is all latest_metrics needs
        if last is None or (step, timestamp, value) > (last["step"], last["timestamp"], last["value"]):
            latest[key] = row
    _, params, tags = _validate_batch_log_data([], [Param(*p) for p in params], [RunTag(*t) for t in tags])
    _validate_param_keys_unique(params)

    with sessions(read_only=False) as session:
        check_active(get_run(run_uuid=run_id, session=session))
        if params:  # as the store's _log_params: a param already there must keep its value
            stored = dict(session.query(SqlParam.key, SqlParam.value).filter(
                SqlParam.run_uuid == run_id, SqlParam.key.in_([p.key for p in params])))
            changed = [{"key": p.key, "old_value": stored[p.key], "new_value": p.value}
                       for p in params if p.key in stored and stored[p.key] != p.value]
            if changed:
                raise MlflowException(f"Changing param values is not allowed. Params were already logged='{changed}' "
                                      f"for run ID='{run_id}'.", INVALID_PARAMETER_VALUE)
            session.add_all([SqlParam(run_uuid=run_id, key=p.key, value=p.value) for p in params if p.key not in stored])
        if tags:  # as the store's _set_tags: the last value of a key stands
            stored = {t.key: t for t in session.query(SqlTag).filter(
                SqlTag.run_uuid == run_id, SqlTag.key.in_([t.key for t in tags]))}
            for tag in tags:
                if tag.key in stored:
                    stored[tag.key].value = tag.value
                else:
                    stored[tag.key] = SqlTag(run_uuid=run_id, key=tag.key, value=tag.value)
                    session.add(stored[tag.key])
        try:
            session.execute(insert(SqlMetric.__table__), rows)
            update_latest([SqlMetric(**row) for row in latest.values()], session)
            session.flush()
        except IntegrityError:  # a value already stored (log_batch skips those), or a latest value
            session.rollback()  # written meanwhile by another writer (log_batch retries): nothing
            return False        # of this batch is written, log_batch writes it
    return True
