"""`make compare`: with everything else equal, how much does the initialization change how fast
and how well the network learns?

Reads what a study (its Optuna trials and their MLflow runs) or a seed scan (its one run)
logged, groups the curves by learning-rate band, and measures the spread across seeds of
`iterations_to_target` and of the final validation accuracy. Every number comes from the logged
data; `harness/analysis/report.py` turns the result into figures, a report file and a table.
"""

import math
import tempfile
import tomllib
import warnings
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.trial import TrialState

from harness.analysis.compare_config import CompareOptions
from harness.core.config import ConfigError, TrainConfig, flatten, from_params, target_text, train_size
from harness.study.storage import PARENT_RUN_ATTR, RUN_ID_ATTR
from harness.progress import Quiet, Status
from harness.tracking.tracker import Tracker
from harness.core.train import METRICS, steps_to_target


BANDED = ("lr", "seed", "iterations", "run_name")  # what the report's bands and spreads are across

@dataclass
class Curve:
    """One trained network: a trial's run, or one seed of a scan."""
    label: str
    seed: int
    lr: float
    history: dict[str, np.ndarray]
    """each metric at steps 0..last (NaN past the last step the network measured)"""
    iterations_to_target: int | None
    iterations_to_target_held: int | None
    run_id: str | None = None
    images: dict[int, str] = field(default_factory=dict)
    """step -> artifact path of the logged boundary image"""
    finished: bool = True
    """ran its whole iteration count (not pruned, not diverged)"""

    @property
    def last_step(self) -> int:
        return len(self.history["train_loss"]) - 1

    @property
    def final_val_accuracy(self) -> float:
        """NaN for a network that stopped early: its last value is not a final accuracy."""
        return float(self.history["val_accuracy"][-1]) if self.finished else math.nan


@dataclass
class Spread:
    n: int
    min: float
    p10: float
    median: float
    p90: float
    max: float
    median_ci: tuple[float, float]
    """95% bootstrap (percentile) interval of the median"""


@dataclass
class Band:
    low: float
    high: float
    curves: list[Curve]
    reached: int
    """curves that reached the target accuracy"""
    iterations_to_target: Spread | None
    """None: fewer than min_trials curves reached the target"""
    held: int
    """curves that reached the target and held it for hold_steps steps"""
    iterations_to_target_held: Spread | None
    """None: fewer than min_trials curves held the target"""
    val_accuracy: Spread | None
    """None: fewer than min_trials curves that finished"""

    @property
    def stopped(self) -> int:
        """curves that were pruned or diverged"""
        return sum(not c.finished for c in self.curves)

    @property
    def label(self) -> str:
        return f"[{self.low:.3g}, {self.high:.3g})"


@dataclass
class Comparison:
    kind: str
    """"study" or "scan\""""
    name: str
    """the study's name, or the scan run's name"""
    run_id: str
    """where the report is logged: the study's parent run, or the scan's run"""
    target_accuracy: float
    hold_steps: int
    target: str
    """the target as outputs word it (config.target_text)"""
    options: CompareOptions
    bands: list[Band]
    importances: dict[str, dict[str, float]] | str
    """evaluator -> param -> share of the objective's variance; or why there are none"""
    objective: str = ""
    """what the importances explain"""
    counts: dict[str, int] = field(default_factory=dict)
    base: TrainConfig | None = None
    """the scan's config (everything but the seed); a study's first trial's, None where its trials' data differ"""
    mixed: list[str] = field(default_factory=list)
    """config keys besides lr, seed and iterations whose values differ between the study's trials"""


def lr_band(lr: float, per_decade: int) -> tuple[float, float]:
    k = math.floor(math.log10(lr) * per_decade + 1e-9)
    return 10 ** (k / per_decade), 10 ** ((k + 1) / per_decade)


def bootstrap_median_ci(values: np.ndarray, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap: medians of `resamples` resamples with replacement."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    medians = np.median(values[picks], axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def spread(values: list[float], options: CompareOptions) -> Spread | None:
    array = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if len(array) < options.min_trials:
        return None
    p10, median, p90 = np.percentile(array, [10, 50, 90])
    return Spread(len(array), float(array.min()), float(p10), float(median), float(p90), float(array.max()),
                  bootstrap_median_ci(array, options.resamples, options.bootstrap_seed))


def make_bands(curves: list[Curve], options: CompareOptions) -> list[Band]:
    groups: dict[tuple[float, float], list[Curve]] = {}
    for curve in curves:
        groups.setdefault(lr_band(curve.lr, options.bands_per_decade), []).append(curve)
    bands = []
    for (low, high), members in sorted(groups.items()):
        members.sort(key=lambda c: c.seed)
        reached = [c.iterations_to_target for c in members if c.iterations_to_target is not None]
        held = [c.iterations_to_target_held for c in members if c.iterations_to_target_held is not None]
        bands.append(Band(low, high, members, len(reached), spread(reached, options), len(held),
                          spread(held, options), spread([c.final_val_accuracy for c in members], options)))
    return bands


def objective_name(param: str) -> str:
    """The parent run's `objective` param, or the first objective of several."""
    if param.startswith("["):
        return f"{tomllib.loads(f'v = {param}')['v'][0]} (the first objective)"
    return param


def importances(study: optuna.Study) -> dict[str, dict[str, float]] | str:
    """fANOVA and PED-ANOVA importances of the searched params for the (first) objective."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return f"too few complete trials ({len(complete)} < 3)"
    target = None
    if len(study.directions) > 1:  # PED-ANOVA looks for low target values
        sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
        target = lambda t: sign * t.values[0]  # noqa: E731
    out = {}
    for name, evaluator in (("fANOVA", optuna.importance.FanovaImportanceEvaluator(seed=0)),
                            ("PED-ANOVA", optuna.importance.PedAnovaImportanceEvaluator())):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the sign of target is handled above
                out[name] = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. every trial has the same value
            out[name] = {}
            print(f"{name} importances not computed: {e}")
    return out


def check_step(step: int | None, curves: list[Curve], kind: str) -> None:
    """A --step that no tile could show is an error, before anything is written."""
    if step is None:
        return
    if kind == "scan":
        last = max(c.last_step for c in curves)
        if step > last:
            raise ConfigError(f"step: must be in [0, {last}], the steps the scan measured; got {step}")
        return
    logged = sorted({s for c in curves for s in c.images})
    if step not in logged:
        shown = ", ".join(map(str, logged[:4])) + (f", ..., {logged[-1]}" if len(logged) > 4 else "")
        raise ConfigError(f"step: no trial has a boundary image at step {step}; steps with images: {shown or 'none'}")


def study_comparison(study: optuna.Study, tracker: Tracker, options: CompareOptions,
                     status: Status | None = None) -> Comparison:
    """`status` is told how many runs are read (harness/progress.py)."""
    study_name, status = study.study_name, status or Quiet()
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent:
        raise ConfigError(f"study: '{study_name}' has no MLflow parent run (was it made by make sweep?)")
    trials = study.get_trials(deepcopy=False)
    curves, base, sizes, values = [], None, set(), {}
    for i, trial in enumerate(trials):
        status.set(f"reading study '{study_name}': trial {i + 1} of {len(trials)}")
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or not run_id:
            continue
        try:
            run = tracker.get_run(run_id)
        except Exception as e:  # the run was removed from the store: the trial cannot be shown
            print(f"trial {trial.number}: its MLflow run {run_id} cannot be read ({e}); left out")
            continue
        cfg = from_params(run.data.params)
        base = base or cfg  # its target and hold measure every trial: a study keeps one (sweep.check_measure)
        sizes.add(train_size(cfg))
        for key, value in flatten(cfg).items():
            values.setdefault(key, set()).add(value)
        history = tracker.metric_histories(run_id, list(METRICS))
        (reached,), (held,) = steps_to_target(history["train_accuracy"][:, None], cfg)  # in its own data's points
        curves.append(Curve(f"trial-{trial.number}", cfg.seed, cfg.lr, history, reached, held, run_id,
                            tracker.image_steps(run_id, "boundary"), finished=trial.state == TrialState.COMPLETE))
    if not curves:
        raise ConfigError(f"study: '{study_name}' has no finished trial with an MLflow run yet")
    check_step(options.step, curves, "study")
    counts = {s: sum(1 for t in trials if t.state.name == s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    objective = objective_name(tracker.get_run(parent).data.params.get("objective", ""))
    # the target in points where every trial has the same data; else as a share (the data were searched)
    target = target_text(base) if len(sizes) == 1 else f"{base.target_accuracy:.0%} train accuracy"
    mixed = sorted(key for key, seen in values.items() if len(seen) > 1 and key not in BANDED)
    return Comparison("study", study_name, parent, base.target_accuracy, base.hold_steps, target, options,
                      make_bands(curves, options), importances(study), objective, counts, base if len(sizes) == 1 else None,
                      mixed)


def scan_comparison(run_id: str | None, experiment: str, tracker: Tracker, options: CompareOptions) -> Comparison:
    try:
        run = tracker.get_run(run_id) if run_id else tracker.latest_run(experiment, "scan", "seeds")
    except Exception:  # MLflow raises when the id is unknown
        raise ConfigError(f"run: no run with id '{run_id}' in {tracker.uri}") from None
    if run is None:
        raise ConfigError(f"run: no finished seed scan in experiment '{experiment}'; run make seeds first")
    if run.data.tags.get("scan") != "seeds":
        raise ConfigError(f"run: {run.info.run_id} is not a seed scan (made by make seeds)")
    base = from_params({k: v for k, v in run.data.params.items() if k != "seed"})
    with tempfile.TemporaryDirectory() as tmp:
        try:
            saved = np.load(tracker.download(run.info.run_id, "histories.npz", tmp))
        except Exception:
            raise ConfigError(f"run: {run.info.run_id} has no histories.npz (made before it was logged); "
                              "run make seeds again") from None
        seeds, history = saved["seed"], {m: saved[m] for m in METRICS}
    curves = []
    reached, held = steps_to_target(history["train_accuracy"], base)
    for k, seed in enumerate(seeds.tolist()):
        h = {m: history[m][:, k] for m in METRICS}
        measured = np.isfinite(h["train_loss"])
        last = int(np.flatnonzero(measured)[-1]) if measured.any() else -1
        h = {m: v[:last + 1] for m, v in h.items()}
        curves.append(Curve(f"seed {seed}", seed, base.lr, h, reached[k], held[k], run.info.run_id,
                            finished=last == base.iterations))
    check_step(options.step, curves, "scan")
    name = run.info.run_name or run.info.run_id
    return Comparison("scan", name, run.info.run_id, base.target_accuracy, base.hold_steps, target_text(base), options,
                      make_bands(curves, options), "a seed scan varies only the seed", base=base)
