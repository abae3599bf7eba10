"""The comparison report: figures, a Markdown and a self-contained HTML file, the terminal table,
the boundary grid, and each trial's `boundary.gif`; all logged to MLflow and kept under mlruns/."""

import base64
import tempfile
from pathlib import Path

from PIL import Image

from harness.compare import Comparison, Spread
from harness.report_figures import curves_figure, importance_figure, scan_grid, spread_figure, study_grids

GIF_FRAME_MS = 150


# numbers, as the table and the report show them

def spread_cells(s: Spread | None, n: int, what: str, digits: int, need: int) -> list[str]:
    if s is None:
        return [f"too few: {n} {what}, need {need}"] + [""] * 6
    f = f"{{:.{digits}f}}"
    return [str(s.n), *(f.format(v) for v in (s.min, s.p10, s.median, s.p90, s.max)),
            f"[{f.format(s.median_ci[0])}, {f.format(s.median_ci[1])}]"]


SPREAD_HEADER = ["n", "min", "p10", "median", "p90", "max", "median 95% CI"]


def band_tables(c: Comparison) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for iterations_to_target and for the final val_accuracy."""
    itt = [[b.label, str(len(b.curves)), str(b.reached),
            *spread_cells(b.iterations_to_target, b.reached, "reached", 1, c.options.min_trials)] for b in c.bands]
    acc = [[b.label, str(len(b.curves)),
            *spread_cells(b.val_accuracy, len(b.curves), "trials", 3, c.options.min_trials)] for b in c.bands]
    target = f"{c.target_accuracy:.0%}"
    return [(f"iterations to {target} train accuracy, across seeds (over the networks that reached it)",
             ["lr band", "trials", "reached", *SPREAD_HEADER], itt),
            ("final val_accuracy, across seeds", ["lr band", "trials", *SPREAD_HEADER], acc)]


def importance_table(c: Comparison) -> tuple[list[str], list[list[str]]] | None:
    if isinstance(c.importances, str):
        return None
    params = sorted({p for values in c.importances.values() for p in values})
    evaluators = list(c.importances)
    rows = [[p, *(f"{c.importances[e][p]:.3f}" if p in c.importances[e] else "n/a" for e in evaluators)]
            for p in params]
    return ["param", *evaluators], rows


def format_rows(header: list[str], rows: list[list[str]]) -> list[str]:
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
              if c.kind == "study" else f"seed scan '{c.name}' ({len(c.bands[0].curves)} seeds)")
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


# the report files

def markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out += [f"{'#' * rest[0]} {rest[1]}", ""]
        elif kind == "p":
            out += [rest[0], ""]
        elif kind == "table":
            header, rows = rest
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                    *("| " + " | ".join(r) + " |" for r in rows), ""]
        elif kind == "img":
            out += [f"![{rest[1]}]({rest[0]})", ""]
    return "\n".join(out)


def html(blocks: list[tuple], folder: Path, title: str) -> str:
    from html import escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>"
           "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
           "img{max-width:100%}</style></head><body>"]
    for kind, *rest in blocks:
        if kind == "h":
            out.append(f"<h{rest[0]}>{escape(rest[1])}</h{rest[0]}>")
        elif kind == "p":
            out.append(f"<p>{escape(rest[0])}</p>")
        elif kind == "table":
            header, rows = rest
            out.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{escape(x)}</td>" for x in r) + "</tr>" for r in rows)
                       + "</table>")
        elif kind == "img":
            data = base64.b64encode((folder / rest[0]).read_bytes()).decode()
            out.append(f"<p><img alt='{escape(rest[1])}' src='data:image/png;base64,{data}'></p>")
    return "\n".join(out + ["</body></html>"])


def write_report(c: Comparison, tracker, folder: Path) -> tuple[Path, list[str]]:
    """Figures, report.md and report.html into `folder`, all logged under `report/` on the
    comparison's run. Returns the HTML file and notes for the terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # a previous report's figures (another step, other bands)
        old.unlink()
    notes = []
    figures = [("curves.png", curves_figure(c)), ("iterations_to_target.png", spread_figure(c))]
    with tempfile.TemporaryDirectory() as tmp:
        if c.kind == "study":
            figures += study_grids(c, tracker, Path(tmp))
        else:
            grid, check = scan_grid(c)
            figures.append(grid)
            notes.append(check)
    importance = importance_figure(c)
    if importance is not None:
        figures.append(("importances.png", importance))
    for name, fig in figures:
        fig.savefig(folder / name)

    source = (f"Optuna study `{c.name}`, MLflow parent run `{c.run_id}`: "
              + ", ".join(f"{n} {s.lower()}" for s, n in c.counts.items()) + " trials"
              if c.kind == "study" else
              f"seed scan run `{c.name}` (`{c.run_id}`): {len(c.bands[0].curves)} seeds, everything else fixed")
    o = c.options
    blocks = [("h", 1, f"How the initialization changes convergence: {c.name}"), ("p", source)]
    line = headline(c)
    if line:
        blocks.append(("p", f"**{line[0].upper() + line[1:]}.**"))
    blocks += [("h", 2, "Curves by learning-rate band, coloured by seed"), ("img", "curves.png", "curves")]
    for title, header, rows in band_tables(c):
        blocks += [("h", 2, title[0].upper() + title[1:]), ("table", header, rows)]
    blocks.append(("img", "iterations_to_target.png", "iterations to target by band"))
    blocks.append(("h", 2, "Decision boundaries, one tile per seed"))
    grids = [name for name, _ in figures if name.startswith("boundaries")]
    blocks += [("img", name, name) for name in grids] or [("p", "No band has two trials with boundary images.")]
    blocks += [("p", note) for note in notes]
    blocks.append(("h", 2, f"Parameter importances for {c.objective or 'the objective'}"))
    table = importance_table(c)
    blocks += [("table", *table), ("img", "importances.png", "importances")] if table else [("p", str(c.importances))]
    blocks.append(("p", f"Bands: {o.bands_per_decade} per factor of 10 in lr. Spreads need at least {o.min_trials} "
                        f"values; median CI: percentile bootstrap, {o.resamples} resamples, seed {o.bootstrap_seed}. "
                        "Every number is computed from the logged runs."))
    (folder / "report.md").write_text(markdown(blocks))
    (folder / "report.html").write_text(html(blocks, folder, c.name))
    for path in sorted(folder.iterdir()):
        tracker.log_artifact(c.run_id, path, "report")
    return folder / "report.html", notes
