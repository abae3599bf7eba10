"""The arms side by side: the table (terminal and Markdown), three figures and the report's files.

The figures: the spread of iterations_to_target_held per arm (box and seeds; on a log axis of
the one numeric key the arms differ in, when there is one), the median train-accuracy curve of
each arm with its p10-p90 band, and the final decision boundary of each arm's median seed.
"""

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from harness.analysis.arms import ArmResult, ArmScan, varying_keys
from harness.analysis.report import format_rows
from harness.analysis.report_files import default_folder as study_folder
from harness.analysis.report_files import folder_name, html, markdown
from harness.analysis.seed_scan import percentiles, write_csv
from harness.core.config import target_text

BEST_LR = ("the lr at which the most seeds held the target; among equals, the lowest median "
           "iterations_to_target_held, then the highest median final train accuracy, then the lowest lr")
MEDIAN_SEED = ("the seed in the middle when the seeds are ordered by iterations_to_target_held (never held: last; "
               "ties by the higher final train accuracy, then the lower seed)")


def default_folder(tracker, name: str) -> Path:
    """mlruns/reports/<name>/, beside the tracking store when it is a local one."""
    return study_folder(tracker, name) if tracker is not None else Path("mlruns") / "reports" / folder_name(name)


def table(results: list[ArmResult]) -> list[dict]:
    """One row per arm, at its chosen lr."""
    rows = []
    for r in results:
        s = r.chosen.summary
        rows.append({"arm": r.arm.label, "lr": r.chosen.lr, "lrs": " ".join(f"{lr:g}" for lr in r.arm.lrs),
                     "seeds": r.chosen.scan.count, "reached": s["reached"], "held": s["held"], "diverged": s["diverged"],
                     **{f"iterations_to_target_held_{k}": s.get(f"iterations_to_target_held_{k}")
                        for k in ("min", "p10", "median", "p90", "max")},
                     "final_train_accuracy_median": s.get("final_train_accuracy_median"),
                     "final_val_accuracy_median": s.get("final_val_accuracy_median"),
                     "median_seed": r.median_seed, "run_id": r.run_id, "trainer": r.chosen.batch.trainer})
    return rows


def lr_rows(result: ArmResult) -> list[dict]:
    """One row per lr the arm trained, the chosen one marked."""
    return [{"arm": result.arm.label, "lr": o.lr, "chosen": o is result.chosen, "reached": o.summary["reached"],
             "held": o.summary["held"], "diverged": o.summary["diverged"],
             **{f"iterations_to_target_held_{k}": o.summary.get(f"iterations_to_target_held_{k}") for k in ("p10", "median", "p90")},
             "final_train_accuracy_median": o.summary.get("final_train_accuracy_median"),
             "final_val_accuracy_median": o.summary.get("final_val_accuracy_median")} for o in result.by_lr]


def cell(value, digits: int = 0) -> str:
    """`digits` decimals: 0 for a step (a percentile between two steps is rounded); "-" for none."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def median_cell(value) -> str:
    """A median of steps: a whole step, or halfway between two (an even count), as it is."""
    return cell(value, 0 if value is None or float(value).is_integer() else 1)


TABLE_HEADER = ["arm", "lr", "reached", "held", "held: median", "p10-p90", "train acc", "val acc"]
TABLE_NOTE = ("reached, held: the seeds that reached the target, and that held it; held: median, p10-p90: "
              "iterations_to_target_held across the seeds that held it; train acc, val acc: the final accuracy, "
              "median across the seeds")


def table_cells(rows: list[dict]) -> list[list[str]]:
    out = []
    for row in rows:
        n = row["seeds"]
        lrs = len(row["lrs"].split())
        out.append([row["arm"], f"{row['lr']:g}" + (f" (best of {lrs})" if lrs > 1 else ""),
                    f"{row['reached']}/{n}", f"{row['held']}/{n}", median_cell(row["iterations_to_target_held_median"]),
                    f"{cell(row['iterations_to_target_held_p10'])}-{cell(row['iterations_to_target_held_p90'])}"
                    if row["held"] else "-", cell(row["final_train_accuracy_median"], 3),
                    cell(row["final_val_accuracy_median"], 3)])
    return out


def format_table(rows: list[dict]) -> str:
    """The terminal table: one line per arm."""
    return "\n".join(format_rows(TABLE_HEADER, table_cells(rows)))


def common_target(results: list[ArmResult]) -> str:
    texts = {target_text(r.chosen.scan.base) for r in results}
    holds = {r.chosen.scan.base.hold_steps for r in results}
    what = texts.pop() if len(texts) == 1 else "the target accuracy"
    return what + (f", held {holds.pop()} steps" if len(holds) == 1 else "")


def x_axis(results: list[ArmResult]) -> tuple[np.ndarray, list[str], str, float]:
    """Where each arm stands on the x axis: at its value of the one numeric key the arms differ
    in (on a log scale when it spans a factor of 20 or more), else one slot per arm.
    Returns the positions, their tick labels, the axis label and the boxes' width."""
    keys = varying_keys([r.arm for r in results])
    values = [getattr(r.arm.base, keys[0]) for r in results] if len(keys) == 1 and keys[0] != "lr" else []
    numeric = (len(values) > 1 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)
               and len(set(values)) == len(values))
    if not numeric:
        return (np.arange(len(results), dtype=float), [r.arm.label for r in results], "", 0.6)
    log = max(values) / min(values) >= 20
    positions = np.log10(values) if log else np.array(values, dtype=float)
    gaps = np.diff(np.sort(positions))
    return positions, [f"{v:g}" for v in values], keys[0] + (" (log scale)" if log else ""), 0.6 * gaps.min()


def spread_figure(results: list[ArmResult]) -> Figure:
    """iterations_to_target_held of every seed that held the target, per arm: a box (p10-p90
    whiskers) over the seeds, with how many held and reached it written above."""
    positions, labels, xlabel, width = x_axis(results)
    fig = Figure(figsize=(max(6, 1.3 * len(results) + 2), 4.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0)
    for x, r in zip(positions, results):
        held = np.array([row["iterations_to_target_held"] for row in r.chosen.rows
                         if row["iterations_to_target_held"] is not None], dtype=float)
        n, s = r.chosen.scan.count, r.chosen.summary
        if len(held):
            ax.scatter(x + jitter.uniform(-0.4, 0.4, len(held)) * width, held, s=4, alpha=0.3, color="tab:blue", linewidths=0)
            ax.boxplot(held, positions=[x], widths=width, whis=(10, 90), showfliers=False, manage_ticks=False,
                       medianprops={"color": "black", "linewidth": 1.5})
        else:
            ax.text(x, 0.5, "none held", transform=ax.get_xaxis_transform(), ha="center", color="grey", fontsize=8)
        ax.text(x, 1.01, f"held {s['held']}/{n}\nreached {s['reached']}/{n}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(positions, labels, rotation=0 if xlabel or max(len(t) for t in labels) < 12 else 20)
    ax.set_xlim(positions.min() - width, positions.max() + width)
    ax.set_ylim(0, max(r.chosen.scan.base.iterations for r in results))
    ax.set_xlabel(xlabel or "arm")
    ax.set_ylabel("iterations_to_target_held")
    count = results[0].chosen.scan.count
    fig.suptitle(f"iterations to {common_target(results)}\n{count} seeds per arm; box: p10, quartiles, median, p90; "
                 "dots: the seeds that held it", fontsize=10)
    return fig


def curves_figure(results: list[ArmResult]) -> Figure:
    """The median train accuracy of each arm at each step, and its p10-p90 band across seeds."""
    fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(results))]
    for r, colour in zip(results, colours):
        bands = percentiles(r.chosen.batch.history["train_accuracy"])
        steps = np.arange(len(bands["median"]))
        ax.fill_between(steps, bands["p10"], bands["p90"], color=colour, alpha=0.15, linewidth=0)
        ax.plot(steps, bands["median"], color=colour, linewidth=1.6, label=f"{r.arm.label} (lr {r.chosen.lr:g})")
    for target in sorted({r.chosen.scan.base.target_accuracy for r in results}):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("step (updates)")
    ax.set_ylabel("train_accuracy")
    ax.set_title(f"median train accuracy and p10-p90 across {results[0].chosen.scan.count} seeds; dashed: the target",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def boundaries_figure(results: list[ArmResult]) -> Figure:
    """Each arm's median seed at its last step: the decision boundary and the training points."""
    rows = math.ceil(len(results) / 4)  # at most 4 tiles a row, the rows as even as they go
    cols = math.ceil(len(results) / rows)
    fig = Figure(figsize=(3.2 * cols, 3.6 * rows), dpi=100, layout="constrained")
    for i, r in enumerate(results):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        held = next(row["iterations_to_target_held"] for row in r.chosen.rows if row["seed"] == r.median_seed)
        ax.set_title(f"{r.arm.label}\nseed {r.median_seed}: " + (f"held from step {held}" if held is not None else "never held"),
                     fontsize=9)
        if r.boundary is not None:
            ax.imshow(np.asarray(r.boundary.convert("RGB")))
    fig.suptitle("the median seed of each arm at its last step", fontsize=10)
    return fig


def arm_description(r: ArmResult, scan: ArmScan) -> str:
    """An arm's child run description (shown on its Overview page)."""
    s = r.chosen.summary
    lrs = f" (the best of lr {', '.join(f'{lr:g}' for lr in r.arm.lrs)}: `lrs.csv`)" if len(r.arm.lrs) > 1 else ""
    return (f"**Arm `{r.arm.label}`: {scan.count} seeds at lr {r.chosen.lr:g}**{lrs}. {s['held']} of {scan.count} seeds "
            f"reached {target_text(r.chosen.scan.base)} and held it for {r.chosen.scan.base.hold_steps} steps; "
            f"{s['reached']} reached it at least once.\n\n"
            "- **Artifacts**: `seeds.csv` (one row per seed), `lrs.csv`, `histories.npz` (every seed's curves: "
            "`make compare RUN=<this run's id>` reads it), `figures/` (the histogram, the median seed's boundary).")


def blocks(scan: ArmScan, results: list[ArmResult], run_id: str | None) -> list[tuple]:
    rows = table(results)
    varies = varying_keys(scan.arms)
    source = (f"{len(results)} arms of {scan.count} seeds each (seeds {scan.first}..{scan.first + scan.count - 1}), "
              f"differing in {', '.join(f'`{k}`' for k in varies) or 'nothing'}"
              + (f"; MLflow parent run `{run_id}`, a child run per arm." if run_id else "; not tracked."))
    out = [("h", 1, f"Arms of {scan.base.experiment}"), ("p", source),
           ("p", f"The target: {common_target(results)}. An arm with several learning rates is shown at its best: {BEST_LR}."),
           ("table", TABLE_HEADER, table_cells(rows)), ("p", TABLE_NOTE[0].upper() + TABLE_NOTE[1:] + "."),
           ("img", "spread.png", "iterations_to_target_held per arm"),
           ("img", "curves.png", "median train accuracy per arm"),
           ("h", 2, "Decision boundaries"),
           ("p", f"Each arm's median seed ({MEDIAN_SEED}), trained again alone at the arm's lr."),
           ("img", "boundaries.png", "the median seed of each arm")]
    mismatched = [r.arm.label for r in results if not r.boundary_matches]
    out.append(("p", "Trained again, every median seed followed the curve it has in the scan, step for step."
                if not mismatched else f"Trained again, the median seed of {', '.join(mismatched)} did not follow its "
                "curve in the scan (another trainer drew it): its tile is the network trained alone."))
    if any(len(r.arm.lrs) > 1 for r in results):
        lr_table = [[row["arm"], f"{row['lr']:g}" + (" (chosen)" if row["chosen"] else ""), str(row["reached"]),
                     str(row["held"]), median_cell(row["iterations_to_target_held_median"]),
                     cell(row["final_train_accuracy_median"], 3), cell(row["final_val_accuracy_median"], 3)]
                    for r in results for row in lr_rows(r)]
        out += [("h", 2, "Every learning rate"),
                ("table", ["arm", "lr", "reached", "held", "held: median", "train acc", "val acc"], lr_table)]
    return out


def description(scan: ArmScan, results: list[ArmResult], run_id: str) -> str:
    """The parent run's description: the table, and where the report is."""
    return markdown(blocks(scan, results, run_id)[:5]) + "\n**Artifacts**: `report/` (report.md, report.html, the figures, arms.csv, lrs.csv)."


def write(scan: ArmScan, results: list[ArmResult], folder: Path, run_id: str | None) -> list[Path]:
    """The report's files in `folder` (created; files of the same names replaced); returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [write_csv(folder / "arms.csv", table(results)),
             write_csv(folder / "lrs.csv", [row for r in results for row in lr_rows(r)])]
    for name, fig in (("spread.png", spread_figure(results)), ("curves.png", curves_figure(results)),
                      ("boundaries.png", boundaries_figure(results))):
        fig.savefig(folder / name)
        files.append(folder / name)
    content = blocks(scan, results, run_id)
    (folder / "report.md").write_text(markdown(content))
    (folder / "report.html").write_text(html(content, folder, f"Arms of {scan.base.experiment}"))
    return files + [folder / "report.md", folder / "report.html"]
