"""The comparison report's words and numbers: the band tables, the headline sentence, the
terminal table; and each trial's `boundary.gif`. Figures: report_figures.py; files: report_files.py."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from harness.analysis.compare import Band, Comparison, Spread
from harness.core.config import dataset_facts, train_size

GIF_FRAME_MS = 150


# numbers, as the table and the report show them

def number(value: float, digits: int) -> str:
    """`digits` decimals: 0 for counts of steps (a percentile between two steps is rounded)."""
    return f"{value:.{digits}f}"


def spread_cells(s: Spread | None, n: int, what: str, digits: int, need: int) -> list[str]:
    """The spread's numbers and a note; a band with too few values gets the note instead."""
    if s is None:
        return ["-"] * 7 + [f"too few: {n} {what}, need {need}"]
    return [str(s.n), *(number(v, digits) for v in (s.min, s.p10, s.median, s.p90, s.max)),
            f"[{number(s.median_ci[0], digits)}, {number(s.median_ci[1], digits)}]", ""]


SPREAD_HEADER = ["n", "min", "p10", "median", "p90", "max", "median 95% CI", "note"]


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    same: str | None = None
    """when every value in every band is one number: the line that says so, shown instead"""


def band_name(c: Comparison, band: Band) -> str:
    """A scan's one learning rate, or a study's band of them."""
    return f"lr {c.base.lr:g}" if c.kind == "scan" else f"lr {band.label}"


def one_value(spreads: list[Spread | None]) -> float | None:
    """The value, when every spread is of one and the same value."""
    values = {v for s in spreads if s is not None for v in (s.min, s.max)}
    return values.pop() if len(values) == 1 and all(s is not None for s in spreads) else None


def band_tables(c: Comparison) -> list[Table]:
    """The spreads across seeds: iterations_to_target, iterations_to_target_held, final val_accuracy."""
    need = c.options.min_trials
    stopped = "pruned or diverged" if c.kind == "study" else "diverged"
    target = c.target
    tables = []
    for title, what, count, spread_of, digits in (
            (f"iterations to {target}, first reached", "reached", lambda b: b.reached,
             lambda b: b.iterations_to_target, 0),
            (f"iterations to {target}, held for {c.hold_steps} steps", "held", lambda b: b.held,
             lambda b: b.iterations_to_target_held, 0),
            ("final val_accuracy (networks that ran all their iterations)", "finished",
             lambda b: len(b.curves) - b.stopped, lambda b: b.val_accuracy, 3)):
        header = ["lr band" if c.kind == "study" else "lr", "networks", stopped if what != "finished" else "finished",
                  *([what] if what != "finished" else []), *SPREAD_HEADER]
        rows = [[band_name(c, b).removeprefix("lr "), str(len(b.curves)),
                 *([str(b.stopped), str(count(b))] if what != "finished" else [str(count(b))]),
                 *spread_cells(spread_of(b), count(b), what, digits, need)] for b in c.bands]
        value = one_value([spread_of(b) for b in c.bands])
        same = None
        if value is not None:
            n = sum(spread_of(b).n for b in c.bands)
            same = f"{number(value, digits)} for all {n} networks"
            if what == "finished" and c.base is not None:
                val = dataset_facts(c.base).samples - train_size(c.base)
                same += f", {round(value * val)} of the {val} validation points"
        tables.append(Table(title, header, rows, same))
    return tables


def importance_table(c: Comparison) -> tuple[list[str], list[list[str]]] | None:
    if isinstance(c.importances, str):
        return None
    params = sorted({p for values in c.importances.values() for p in values})
    evaluators = list(c.importances)
    rows = [[p, *(f"{c.importances[e][p]:.3f}" if p in c.importances[e] else "n/a" for e in evaluators)]
            for p in params]
    return ["param", *evaluators], rows


def format_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    if all(not r[-1] for r in rows) and header[-1] == "note":  # no notes: no empty column
        header, rows = header[:-1], [r[:-1] for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
            for r in [header, *rows]]


def headline(c: Comparison) -> str:
    """The lecture's point in one sentence, for the band with the most networks that held the
    target: how many steps until the network is at the target and stays there."""
    best = max(c.bands, key=lambda b: (b.held, len(b.curves)))
    s = best.iterations_to_target_held
    if c.kind == "scan":
        where, why = f"at lr {c.base.lr:g}", "depending only on the seed"
    else:
        where, why = f"at lr in {best.label}", "across seeds (lr and the other searched values vary within the band)"
    target = c.target
    if s is None:
        return (f"{where}, {best.held} of {len(best.curves)} networks reached {target} and held it for "
                f"{c.hold_steps} steps: too few for a spread (at least {c.options.min_trials})")
    return (f"{where}, reaching {target} and holding it for {c.hold_steps} steps took from {number(s.min, 0)} to "
            f"{number(s.max, 0)} iterations (median {number(s.median, 0)}, 95% CI [{number(s.median_ci[0], 0)}, "
            f"{number(s.median_ci[1], 0)}]) {why}; {best.held} of {len(best.curves)} networks held it")


def terminal_table(c: Comparison) -> str:
    source = (f"study '{c.name}' (" + ", ".join(f"{n} {s.lower()}" for s, n in c.counts.items()) + ")"
              if c.kind == "study" else f"seed scan '{c.name}' ({len(c.bands[0].curves)} seeds, "
                                        f"{c.bands[0].stopped} diverged)")
    out = [source, ""]
    for table in band_tables(c):
        if table.same:
            out += [f"{table.title}: {table.same}", ""]
        else:
            out += [f"{table.title}:", *("  " + line for line in format_rows(table.header, table.rows)), ""]
    table = importance_table(c)
    if table:
        out += [f"parameter importances for {c.objective or 'the objective'}:",
                *("  " + line for line in format_rows(*table)), ""]
    else:
        out += [f"parameter importances: {c.importances}", ""]
    out.append(headline(c))
    return "\n".join(out)


# each trial's boundary.gif

def trial_gifs(c: Comparison, tracker) -> tuple[int, int]:
    """Log `boundary.gif` (made from the logged images) to each trial run that lacks one; runs
    are finished, so an existing GIF is already up to date. Returns (made, already there)."""
    made = existing = 0
    for curve in (curve for band in c.bands for curve in band.curves if curve.images):
        if tracker.has_artifact(curve.run_id, "boundary.gif"):
            existing += 1
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = tracker.download(curve.run_id, "images", tmp)
            frames = [Image.open(folder / Path(curve.images[s]).name) for s in sorted(curve.images)]
            gif = Path(tmp) / "boundary.gif"
            durations = [GIF_FRAME_MS] * (len(frames) - 1) + [GIF_FRAME_MS * 8]  # rest on the last frame
            frames[0].save(gif, save_all=True, append_images=frames[1:], duration=durations, loop=0)
            tracker.log_artifact(curve.run_id, gif)
        made += 1
    return made, existing
