"""The fenced Optuna fast path (harness/study/optuna_fast.py): taken with the versions we install,
checked at start-up, and leaving the study as Optuna's own calls leave it."""

import optuna
import pytest

from harness.errors import FallbackWarning
from harness.study import optuna_fast
from harness.study.optuna_fast import record_trial, trial_id
from test_mlflow_fast import fails_once
from test_sweep import stores  # noqa: F401  (a fixture)


pytestmark = pytest.mark.usefixtures("fresh_fast_paths")


def test_the_fast_path_is_taken_with_the_installed_versions():
    assert optuna_fast.fast_paths() == set(optuna_fast.PATHS.checks)


def test_a_check_that_fails_at_start_up_leaves_the_path_off_with_one_warning(stores, monkeypatch):
    from optuna.storages import RDBStorage

    monkeypatch.setattr(RDBStorage, "_set_trial_attr_without_commit", lambda self, trial_id, key, value: None)
    with pytest.warns(FallbackWarning, match=r"the trial_records fast path does not fit this version "
                                             r"\(RDBStorage._set_trial_attr_without_commit takes") as warned:
        assert optuna_fast.fast_paths() == set()
    assert len(warned) == 1
    monkeypatch.undo()
    study = optuna.create_study(storage=stores["OPTUNA_STORAGE"])
    trial = study.ask()
    record_trial(trial, {10: 0.5}, {"reached_target": True})  # by the public calls
    study.tell(trial, 1.0)
    assert study.trials[0].intermediate_values == {10: 0.5} and study.trials[0].user_attrs == {"reached_target": True}


def test_a_trials_id_without_the_private_attribute_is_asked_of_the_storage(stores, monkeypatch):
    study = optuna.create_study(storage=stores["OPTUNA_STORAGE"])
    trials = [study.ask() for _ in range(3)]
    known = [trial_id(t) for t in trials]
    assert known == [t._trial_id for t in trials]
    for t in trials:
        del t._trial_id  # an Optuna that keeps it elsewhere
    assert [trial_id(t) for t in trials] == known


def test_values_written_at_tell_are_those_report_writes(stores, monkeypatch):
    """With no pruner the sweep writes a trial's intermediate values when it tells it
    (`record_trial`, one transaction): the same records as `trial.report` and `set_user_attr`."""
    study = optuna.create_study(storage=stores["OPTUNA_STORAGE"])
    values = {10: 0.5, 20: float("inf"), 30: -float("inf"), 40: float("nan"), 50: 1e-30}
    reported, recorded = study.ask(), study.ask()
    for step, value in values.items():
        reported.report(value, step)
    reported.set_user_attr("reached_target", True)
    # the one transaction, not Optuna's public calls, which record_trial falls back on
    monkeypatch.setattr(optuna.Trial, "report", None)
    monkeypatch.setattr(optuna.Trial, "set_user_attr", None)
    record_trial(recorded, values, {"reached_target": True})
    record_trial(recorded, {10: 9.0}, {})  # as `report`: the first value of a step stands
    monkeypatch.undo()
    for trial in (reported, recorded):
        study.tell(trial, 1.0)
    stored = [study.trials[0], study.trials[1]]
    assert [repr(t.intermediate_values) for t in stored] == [repr(values)] * 2
    assert stored[1].user_attrs == stored[0].user_attrs == {"reached_target": True}
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        record_trial(recorded, {60: 1.0}, {})


def test_trial_records_fall_back_to_the_public_calls_when_optuna_internals_moved(stores, monkeypatch):
    """An Optuna whose storage internals take other arguments: the records are written all the
    same, through `report` and `set_user_attr`, with one FallbackWarning."""
    from optuna.storages._rdb.storage import RDBStorage

    study = optuna.create_study(storage=stores["OPTUNA_STORAGE"])
    trial = study.ask()
    assert optuna_fast.fast_paths() == {"trial_records"}  # checked at start-up; the call fails later
    fails_once(monkeypatch, RDBStorage, "_set_trial_attr_without_commit",
               TypeError("_set_trial_attr_without_commit() takes 4 positional arguments but 6 were given"))
    with pytest.warns(FallbackWarning, match="the trial_records fast path does not fit this version") as warned:
        record_trial(trial, {10: 0.5, 20: 0.25}, {"reached_target": True})
        record_trial(study.ask(), {10: 0.5}, {})  # by the public calls too: the path is off now
    assert len(warned) == 1 and not optuna_fast.enabled("trial_records")
    study.tell(trial, 1.0)
    assert study.trials[0].intermediate_values == {10: 0.5, 20: 0.25} and study.trials[1].intermediate_values == {10: 0.5}
    assert study.trials[0].user_attrs == {"reached_target": True}
