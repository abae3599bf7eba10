"""What a sweep leaves on its parent run, and the table it prints at the end."""

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt  # Optuna's matplotlib figures use pyplot
import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as optuna_plots

from harness.tracking.tracker import RunLogger
from harness.study.storage import MEASURE_ATTR

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass
class SweepSummary:
    study_name: str
    objectives: list[str]
    directions: list[str]
    counts: dict[str, int]
    best: list[FrozenTrial]
    """the best trials: top 5 by value, or the Pareto front when there are several objectives"""
    experiment_url: str
    parent_run_id: str
    ui_command: str = "make ui"
    run_link: str = ""
    """the parent run's page (RunReader.run_link)"""


def best_trials(study: optuna.Study, limit: int = 5) -> list[FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: t.value, reverse=reverse)[:limit]


def figures(study: optuna.Study) -> dict[str, callable]:
    """Optuna's figures, their axes named by the objectives (not "Objective Value")."""
    names = study.user_attrs.get(MEASURE_ATTR, {}).get("objectives") or [f"objective {i}" for i in range(len(study.directions))]
    if len(study.directions) > 1:
        return {"pareto_front": lambda: optuna_plots.plot_pareto_front(study, target_names=names)}
    return {"optimization_history": lambda: optuna_plots.plot_optimization_history(study, target_name=names[0]),
            # fANOVA's forest with a fixed seed: the same study draws the same figure, in any process
            "param_importances": lambda: optuna_plots.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target_name=names[0]),
            "slice": lambda: optuna_plots.plot_slice(study, target_name=names[0])}


def drawing_cost(name: str, study: optuna.Study) -> int:
    """About how long a figure takes to draw, in panels: the slice plot has one per parameter."""
    return max(1, len({k for t in study.get_trials(deepcopy=False) for k in t.params})) if name == "slice" else 1


def draw_figures(study: optuna.Study, names: list[str], folder: str) -> list[str]:
    """Optuna's matplotlib figures `names` as `folder/<name>.png`; returns those that could not be made."""
    plt.switch_backend("agg")  # files only: no window, and no display needed (a worker, a server)
    skipped, plots = [], figures(study)
    for name in names:
        with warnings.catch_warnings():
            # what Optuna's plots say of a study with few trials (no legend, equal importances,
            # one value on an axis): the figure is drawn all the same, and the user asked for none of it
            warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
            try:
                axes = plots[name]()
            except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials for it
                skipped.append(name)
                continue
            fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            fig.savefig(Path(folder) / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
    return skipped


def log_figures(study: optuna.Study, parent: RunLogger, draw=draw_figures) -> list[str]:
    """Optuna's figures as images under `optuna/`, drawn by `draw` (as `draw_figures`; the sweep's
    idle workers draw them side by side); returns those that could not be made."""
    with tempfile.TemporaryDirectory() as tmp:
        names = list(figures(study))
        skipped = draw(study, names, tmp)
        for name in names:
            if name not in skipped:
                parent.log_artifact(Path(tmp) / f"{name}.png", "optuna")
    return skipped


def summarize(study: optuna.Study, objectives: list[str], parent: RunLogger, experiment_url: str,
              ui_command: str, with_figures: bool = True, draw=draw_figures, run_link: str = "") -> SweepSummary:
    """Write the best trial and the figures (drawn by `draw`) to the parent run; return what the table shows."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(1 for t in trials if t.state.name == s) for s in STATES}
    best = best_trials(study)
    tags = {f"trials.{s.lower()}": n for s, n in counts.items()}
    if best and len(objectives) == 1:
        top = best[0]
        parent.log_metrics({"best_value": top.value, "best_trial_number": top.number}, step=len(trials))
        tags.update({"best_trial_number": top.number, f"best_{objectives[0]}": top.value,
                     **{f"best_params.{k}": v for k, v in top.params.items()}})
    elif best:
        tags["pareto_trial_numbers"] = ",".join(str(t.number) for t in best)
    if with_figures:
        skipped = log_figures(study, parent, draw)
        if skipped:
            tags["figures_skipped"] = ",".join(skipped)
    parent.set_tags(tags)
    return SweepSummary(study.study_name, objectives, [d.name.lower() for d in study.directions], counts,
                        best, experiment_url, parent.run_id, ui_command, run_link)


def format_table(summary: SweepSummary) -> str:
    params = sorted({k for t in summary.best for k in t.params})
    header = ["trial", *summary.objectives, *params]
    rows = [[str(t.number), *(f"{v:.4g}" for v in t.values),
             *(f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "")) for k in params)]
            for t in summary.best]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths))

    title = "best trials" if len(summary.objectives) == 1 else "Pareto front"
    directions = ", ".join(f"{o} ({d})" for o, d in zip(summary.objectives, summary.directions))
    counts = ", ".join(f"{n} {s.lower()}" for s, n in summary.counts.items() if n or s in ("COMPLETE", "PRUNED", "FAIL"))
    out = [f"study '{summary.study_name}': {directions}", f"trials: {counts}", "", f"{title}:"]
    out += [line(header), *(line(r) for r in rows)] if rows else ["  (no complete trial yet)"]
    out += ["", f"MLflow parent run {summary.parent_run_id}" + (f": {summary.run_link}" if summary.run_link else ""),
            f"open the UI: {summary.ui_command}, then {summary.experiment_url}" if summary.ui_command
            else f"open the UI: {summary.experiment_url}"]
    return "\n".join(out)
