"""Every use of MLflow's private names, fenced here: two fast paths and the public calls they stand in for.

- `metric_rows`: a run's batch of metric values, params and tags in one transaction of MLflow's
  SQL store, in place of `MlflowClient.log_batch`. `log_batch` opens a transaction for the
  params, one for the metrics and one for the tags, and builds an ORM object per metric value
  that SQLAlchemy flushes one at a time: about 100 ms for a trial's 804 values. Here the same
  rows go in one multi-row INSERT into the store's own `metrics` table, `latest_metrics` is
  brought up to date by the store's own method, and params and tags are written as the store
  writes them, after the store's own checks: 12-20 ms. (tests/test_mlflow_fast.py compares the
  rows with log_batch's.)
- `image_files`: step images written in `MlflowClient.log_image`'s file layout (a PNG, a WebP
  for the UI's card, the `mlflow.loggedImages` tag), many per `log_artifacts` call or straight
  into a local artifact folder, in place of `log_image` per image (harness/tracking/images.py;
  the WebP is at full size, not log_image's blurry 256 px).
  (tests/test_tracking.py compares the files with log_image's.)

`PATHS` (harness/fastpaths.py) checks once per process, before the first use, that every private name a path
needs is there with the signature it expects, and that the tables hold the columns it writes
(a new column would otherwise be left out of the rows). A path whose check fails is not used:
the public call is, and one line on stderr says so. A call that fails where the public call
then succeeds turns its path off for the rest of the process, with one line as well. So an
MLflow release that moves these internals slows the harness down, and never fails a write.
`WINE_INIT_PUBLIC_API=metric_rows,image_files` (or `all`) turns paths off by hand (`make bench`
measures what each buys that way). The tested versions are pyproject.toml's range.
"""

import inspect
import re
import uuid
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from harness.fastpaths import FastPaths

BATCH_LIMIT = 1000  # MLflow's limit of metric values, params and tags in one log_batch
METRIC_COLUMNS = {"run_uuid", "key", "value", "timestamp", "step", "is_nan"}
LOGGED_IMAGES_TAG = "mlflow.loggedImages"


def check_metric_rows() -> str | None:
    """What the one-transaction path needs that this MLflow lacks, or None."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlTag  # noqa: F401
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.utils import validation
    from mlflow.tracking.fluent import get_active_model_id  # noqa: F401
    from mlflow.tracking.metric_value_conversion_utils import convert_metric_value_to_float_if_possible  # noqa: F401

    expected = {"SqlAlchemyStore._get_run": ["self", "session", "run_uuid"],
                "SqlAlchemyStore._check_run_is_active": ["self", "run"],
                "SqlAlchemyStore._update_latest_metrics_if_necessary": ["self", "logged_metrics", "session"],
                "SqlAlchemyStore.sanitize_metric_value": ["self", "metric_value"],
                "validation._validate_metric": ["key", "value", "timestamp", "step", "path"],
                "validation._validate_batch_log_data": ["metrics", "params", "tags"],
                "validation._validate_param_keys_unique": ["params"],
                "validation._validate_run_id": ["run_id"]}
    for name, names in expected.items():
        owner, attribute = name.split(".")
        function = getattr({"SqlAlchemyStore": SqlAlchemyStore, "validation": validation}[owner], attribute)
        parameters = list(inspect.signature(function).parameters)
        if parameters[:len(names)] != names:
            return f"{name} takes ({', '.join(parameters)}), not ({', '.join(names)})"
    from mlflow.store.db import utils
    if "read_only" not in inspect.getsource(utils._get_managed_session_maker):
        return "the store's session maker takes no read_only argument"
    for model in (SqlMetric, SqlLatestMetric):
        columns = {c.name for c in model.__table__.columns}
        if columns != METRIC_COLUMNS:
            return f"{model.__tablename__} has columns {sorted(columns)}"
    return None


def check_image_files() -> str | None:
    """Whether `log_image` still lays out a step image as `image_filename` does, or what differs."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # noqa: F401
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository  # noqa: F401
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES

    source = inspect.getsource(MlflowClient.log_image)
    for piece in ("+step+{step}+timestamp+{timestamp}+{filename_uuid}", '+compressed"', ".png", ".webp"):
        if piece not in source:
            return f"MlflowClient.log_image no longer names its files with {piece!r}"
    if MLFLOW_LOGGED_IMAGES != LOGGED_IMAGES_TAG:
        return f"the images tag changed ({MLFLOW_LOGGED_IMAGES})"
    return None


def mlflow_version() -> str:
    from mlflow.version import VERSION
    return f"MLflow {VERSION}"


PATHS = FastPaths(mlflow_version, {"metric_rows": (check_metric_rows, "MlflowClient.log_batch"),
                                   "image_files": (check_image_files, "MlflowClient.log_image")})
fast_paths, enabled, reset = PATHS.usable, PATHS.enabled, PATHS.reset


# metric_rows

def log_batch(client: MlflowClient, run_id: str, metrics: list[tuple], params: list[tuple] = (),
              tags: list[tuple] = ()) -> None:
    """What `client.log_batch` does with `metrics` as (key, value, timestamp, step) tuples and
    params and tags as (key, value) pairs: in one transaction where that path is on and fits the
    batch (see `in_one_transaction`), else by `log_batch`. The one transaction's error, if
    `log_batch` then fails too, is the store's (an ended run, a full disk): log_batch's is raised."""
    error = None
    if metrics and enabled("metric_rows"):
        try:
            if in_one_transaction(client, run_id, metrics, params, tags):
                return
        except Exception as e:  # nothing of it was written: its transaction was rolled back
            error = e
    client.log_batch(run_id, metrics=[Metric(*m) for m in metrics], params=[Param(*p) for p in params],
                     tags=[RunTag(*t) for t in tags])
    if error is not None:  # log_batch wrote what the one transaction could not
        PATHS.turn_off("metric_rows", error)


def in_one_transaction(client: MlflowClient, run_id: str, metrics: list[tuple], params, tags) -> bool:
    """Write the batch in one transaction; False, with nothing written, where `log_batch` has to
    do it: a store of another kind (a tracking server), a run-name tag (which MLflow also writes
    into the run's row), an active model (whose metrics MLflow also writes), a batch over
    MLflow's limits, or a metric value already stored (which `log_batch` skips)."""
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError
    from mlflow.store.tracking.dbmodels.models import SqlMetric, SqlParam, SqlTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking.fluent import get_active_model_id
    from mlflow.tracking.metric_value_conversion_utils import convert_metric_value_to_float_if_possible
    from mlflow.utils.validation import _validate_batch_log_data, _validate_metric, _validate_param_keys_unique, _validate_run_id

    store = client._tracking_client.store
    if (not isinstance(store, SqlAlchemyStore) or any(key == MLFLOW_RUN_NAME for key, _ in tags)
            or get_active_model_id() is not None or len(metrics) + len(params) + len(tags) > BATCH_LIMIT):
        return False
    _validate_run_id(run_id)
    rows, latest = [], {}
    for i, (key, value, timestamp, step) in enumerate(metrics):
        value = convert_metric_value_to_float_if_possible(value)  # as the client does (a tensor, an array)
        _validate_metric(key, value, timestamp, step, path=f"metrics[{i}]")
        is_nan, value = store.sanitize_metric_value(value)
        row = dict(run_uuid=run_id, key=key, value=value, timestamp=timestamp, step=step, is_nan=is_nan)
        rows.append(row)
        last = latest.get(key)  # the newest value of each key is all latest_metrics needs
        if last is None or (step, timestamp, value) > (last["step"], last["timestamp"], last["value"]):
            latest[key] = row
    _, params, tags = _validate_batch_log_data([], [Param(*p) for p in params], [RunTag(*t) for t in tags])
    _validate_param_keys_unique(params)

    with store.ManagedSessionMaker(read_only=False) as session:
        store._check_run_is_active(store._get_run(run_uuid=run_id, session=session))
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
            store._update_latest_metrics_if_necessary([SqlMetric(**row) for row in latest.values()], session)
            session.flush()
        except IntegrityError:  # a value already stored (log_batch skips those), or a latest value
            session.rollback()  # written meanwhile by another writer (log_batch retries): nothing
            return False        # of this batch is written, log_batch writes it
    return True


# image_files

def image_filename(key: str, step: int, timestamp_ms: int) -> str:
    """The artifact path `log_image` gives a step image, without its extension."""
    return f"images/{re.sub('/', '~', key)}+step+{step}+timestamp+{timestamp_ms}+{uuid.uuid4()}"


def full_size_step(artifact_path: str, key: str) -> int | None:
    """The step of a full-size image `log_image` named for `key` (the PNG, not its thumbnail);
    None for any other artifact."""
    name = artifact_path.rsplit("/", 1)[-1]
    parts = name.removesuffix(".png").split("+")
    if name.endswith(".png") and len(parts) >= 3 and parts[0] == re.sub("/", "~", key) and parts[1] == "step":
        return int(parts[2])
    return None


def local_artifact_dir(artifact_uri: str, tracking_uri: str | None = None) -> Path | None:
    """The folder of a run's artifacts when MLflow keeps them on this machine's disk; None
    otherwise (a server's, or one this process cannot tell)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    try:
        repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
        return Path(repository.artifact_dir) if type(repository) is LocalArtifactRepository else None
    except Exception:  # log_artifacts will say what is wrong, if anything is
        return None


def quiet_store_errors() -> None:
    """MLflow's SQL store logs each error it raises with its traceback; the harness says it in one line."""
    import logging
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def preload_store() -> None:
    """Import the SQL store's module ahead of the first write: most of opening a store (0.6-1 s),
    which a writer process does while the sweep starts."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
