"""Every use of Optuna's private names, fenced here: one fast path, the trial's id, and the public
calls they stand in for.

- `trial_records`: a trial's intermediate values and user attributes in one transaction, in
  place of `trial.report` per value and `trial.set_user_attr` per attribute. `report` queries
  the trial, then the step, then commits, for each value: for a trial's 20 reports about 60 ms
  of the trainer's time, the largest single cost of a batched sweep. When no pruner reads the
  values as they come, the sweep writes them all here, with the attributes, just before it
  tells the trial: the trial is read once and the values inserted together, with RDBStorage's
  own table models and checks.
- `trial_id`: the storage's id of a trial (heartbeats take it). Optuna keeps it as
  `Trial._trial_id`; the public way asks the storage (two queries).

`PATHS` (harness/fastpaths.py) checks once per process, before the first use, that every private name the path
needs is there with the signature it expects and that the tables hold the columns it writes.
A path whose check fails is not used, and one `FallbackWarning` says so (one `warning:` line on
the command line); so does a call that fails where the public calls then succeed, which turns
the path off for the rest of the process. `WINE_INIT_PUBLIC_API=trial_records` (or `all`)
turns it off by hand. The tested versions are pyproject.toml's range.
"""

import inspect

import optuna

from harness.fastpaths import FastPaths

VALUE_COLUMNS = {"trial_intermediate_value_id", "trial_id", "step", "intermediate_value", "intermediate_value_type"}


def check_trial_records() -> str | None:
    """What the one-transaction path needs that this Optuna lacks, or None."""
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    expected = {"_create_scoped_session": (_create_scoped_session, ["scoped_session"]),
                "RDBStorage._set_trial_attr_without_commit": (
                    RDBStorage._set_trial_attr_without_commit, ["self", "session", "model_cls", "trial_id", "key", "value"]),
                "RDBStorage.check_trial_is_updatable": (RDBStorage.check_trial_is_updatable, ["self", "trial_id", "trial_state"]),
                "TrialModel.find_or_raise_by_id": (models.TrialModel.find_or_raise_by_id, ["trial_id", "session"]),
                "TrialIntermediateValueModel.intermediate_value_to_stored_repr": (
                    models.TrialIntermediateValueModel.intermediate_value_to_stored_repr, ["value"])}
    for name, (function, names) in expected.items():
        parameters = list(inspect.signature(function).parameters)
        if parameters[:len(names)] != names:
            return f"{name} takes ({', '.join(parameters)}), not ({', '.join(names)})"
    columns = {c.name for c in models.TrialIntermediateValueModel.__table__.columns}
    if columns != VALUE_COLUMNS:
        return f"trial_values has columns {sorted(columns)}"
    models.TrialUserAttributeModel  # noqa: B018  (an AttributeError if it is gone)
    return None


PATHS = FastPaths(lambda: f"Optuna {optuna.__version__}",
                  {"trial_records": (check_trial_records, "trial.report and trial.set_user_attr")})
fast_paths, enabled, reset = PATHS.usable, PATHS.enabled, PATHS.reset


def trial_id(trial: optuna.Trial) -> int:
    """The storage's id of a trial."""
    known = getattr(trial, "_trial_id", None)
    if isinstance(known, int):
        return known
    storage = trial.storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(trial.study.study_name),
                                                           trial.number)


def record_trial(trial: optuna.Trial, intermediate: dict[int, float], user_attrs: dict) -> None:
    """Write a trial's intermediate values and user attributes: in one transaction where the path
    is on, else (or where that transaction fails: it is rolled back, nothing of it written) with
    `trial.report` and `trial.set_user_attr`, one commit each. A database's own refusal (a full
    disk, a lost connection) is no version's fault and leaves the path on.
    Raises optuna.exceptions.UpdateFinishedTrialError, as `report` does, for a finished trial."""
    error = None
    if enabled("trial_records"):
        try:
            in_one_transaction(trial, intermediate, user_attrs)
            return
        except optuna.exceptions.UpdateFinishedTrialError:
            raise
        except Exception as e:  # rolled back: nothing of it is written
            error = e
    for step, value in intermediate.items():
        trial.report(value, step)
    for key, value in user_attrs.items():
        trial.set_user_attr(key, value)
    if error is not None:  # the public calls wrote what it could not
        PATHS.turn_off("trial_records", error)


def in_one_transaction(trial: optuna.Trial, intermediate: dict[int, float], user_attrs: dict) -> None:
    """`record_trial`'s one transaction, with RDBStorage's internals."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    backend = getattr(trial.storage, "_backend", trial.storage)  # under Optuna's _CachedStorage
    values = models.TrialIntermediateValueModel
    identity = trial_id(trial)
    with _create_scoped_session(backend.scoped_session) as session:
        backend.check_trial_is_updatable(identity, models.TrialModel.find_or_raise_by_id(identity, session).state)
        reported = {step for (step,) in session.query(values.step).filter(values.trial_id == identity)}
        for step, value in intermediate.items():
            if int(step) not in reported:  # as `report`: the first value of a step stands
                stored, kind = values.intermediate_value_to_stored_repr(float(value))
                session.add(values(trial_id=identity, step=int(step), intermediate_value=stored,
                                   intermediate_value_type=kind))
        for key, value in user_attrs.items():
            backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, identity, key, value)
