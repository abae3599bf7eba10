"""The comparison report's words and numbers: the band tables, the headline sentence, the
terminal table; and each trial's `boundary.gif`. Figures: report_figures.py; files: report_files.py."""

import tempfile
from pathlib import Path

from PIL import Image

from harness.analysis.compare import Comparison, Spread

GIF_FRAME_MS = 150


# numbers, as the table and the report show them

def spread_cells(s: Spread | None, n: int, what: str, digits: int, need: int) -> list[str]:
    """The spread's numbers and a note; a band with too few values gets the note instead."""
    if s is None:
        return ["-"] * 7 + [f"too few: {n} {what}, need {need}"]
    f = f"{{:.{digits}f}}"
    return [str(s.n), *(f.format(v) for v in (s.min, s.p10, s.median, s.p90, s.max)),
            f"[{f.format(s.median_ci[0])}, {f.format(s.median_ci[1])}]", ""]


SPREAD_HEADER = ["n", "min", "p10", "median", "p90", "max", "median 95% CI", "note"]


def band_tables(c: Comparison) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for iterations_to_target and for the final val_accuracy."""
    need = c.options.min_trials
    itt = [[b.label, str(len(b.curves)), str(b.stopped), str(b.reached),
            *spread_cells(b.iterations_to_target, b.reached, "reached", 1, need)] for b in c.bands]
    acc = [[b.label, str(len(b.curves)), str(len(b.curves) - b.stopped),
            *spread_cells(b.val_accuracy, len(b.curves) - b.stopped, "finished", 3, need)] for b in c.bands]
    stopped = "pruned or diverged" if c.kind == "study" else "diverged"
    return [(f"iterations to {c.target_accuracy:.0%} train accuracy, across seeds (over the networks that reached it)",
             ["lr band", "trials", stopped, "reached", *SPREAD_HEADER], itt),
            ("final val_accuracy, across seeds (over the networks that ran all their iterations)",
             ["lr band", "trials", "finished", *SPREAD_HEADER], acc)]


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


def headline(c: Comparison) -> str | None:
    """The lecture's point in one sentence, for the band with the most networks that reached the target."""
    best = max(c.bands, key=lambda b: b.reached)
    s = best.iterations_to_target
    if s is None:
        return None
    if c.kind == "scan":
        where, why = f"at lr {c.base.lr:g}", "depending only on the seed"
    else:
        where, why = f"at lr in {best.label}", "across seeds (lr and the other searched values vary within the band)"
    return (f"{where}, reaching {c.target_accuracy:.0%} train accuracy took from {s.min:.0f} to {s.max:.0f} "
            f"iterations (median {s.median:.0f}, 95% CI [{s.median_ci[0]:.0f}, {s.median_ci[1]:.0f}]) {why}; "
            f"{best.reached} of {len(best.curves)} networks reached it")


def terminal_table(c: Comparison) -> str:
    source = (f"study '{c.name}' (" + ", ".join(f"{n} {s.lower()}" for s, n in c.counts.items()) + ")"
              if c.kind == "study" else f"seed scan '{c.name}' ({len(c.bands[0].curves)} seeds, "
                                        f"{c.bands[0].stopped} diverged)")
    out = [source, ""]
    for title, header, rows in band_tables(c):
        out += [f"{title}:", *("  " + line for line in format_rows(header, rows)), ""]
    table = importance_table(c)
    if table:
        out += [f"parameter importances for {c.objective or 'the objective'}:",
                *("  " + line for line in format_rows(*table)), ""]
    else:
        out += [f"parameter importances: {c.importances}", ""]
    line = headline(c)
    if line:
        out.append(line)
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
