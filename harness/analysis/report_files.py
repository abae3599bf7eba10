"""The report as files: figures, `report.md` and a self-contained `report.html`, written to a
folder under mlruns/ and logged to the comparison's MLflow run."""

import base64
import hashlib
import re
import tempfile
import time
from html import escape
from pathlib import Path

from harness.analysis.compare import Comparison
from harness.analysis.report import band_tables, headline, importance_table
from harness.analysis.report_figures import curves_figure, importance_figure, scan_grid, spread_figure, study_grids

# what a report writes; only these are replaced when the report is made again in the same folder
OWN_FILES = ("report.md", "report.html", "curves.png", "iterations_to_target.png", "importances.png", "boundaries_*.png")


def folder_name(name: str) -> str:
    """A study or run name as one path component: `wine-sweep` stays itself; any other name
    (`..`, `a/b`, empty, over 100 characters) is cleaned and gets `+` and a hash of the name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")[:100]  # no `..`, no hidden folder
    if safe == name and safe:
        return safe
    # `+` is never kept from a name, so a name left as it is cannot equal another's hashed form
    return f"{safe}+{hashlib.sha1(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def default_folder(tracker, name: str) -> Path:
    """mlruns/reports/<folder_name(name)>, beside the local store when there is one."""
    root = tracker.local_db.parent if tracker.local_db else Path("mlruns")
    return root / "reports" / folder_name(name)


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


def inline(text: str) -> str:
    """The two Markdown marks the report uses, **bold** and `code`, as HTML."""
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def html(blocks: list[tuple], folder: Path, title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>"
           "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
           "img{max-width:100%}</style></head><body>"]
    for kind, *rest in blocks:
        if kind == "h":
            out.append(f"<h{rest[0]}>{inline(rest[1])}</h{rest[0]}>")
        elif kind == "p":
            out.append(f"<p>{inline(rest[0])}</p>")
        elif kind == "table":
            header, rows = rest
            out.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{escape(x)}</td>" for x in r) + "</tr>" for r in rows)
                       + "</table>")
        elif kind == "img":  # embedded, so the one file is the whole report
            data = base64.b64encode((folder / rest[0]).read_bytes()).decode()
            out.append(f"<p><img alt='{escape(rest[1])}' src='data:image/png;base64,{data}'></p>")
    return "\n".join(out + ["</body></html>"])


def blocks_of(c: Comparison, figures: list[str], notes: list[str]) -> list[tuple]:
    source = (f"Optuna study `{c.name}`, MLflow parent run `{c.run_id}`: "
              + ", ".join(f"{n} {s.lower()}" for s, n in c.counts.items()) + " trials"
              if c.kind == "study" else
              f"seed scan run `{c.name}` (`{c.run_id}`): {len(c.bands[0].curves)} seeds, everything else fixed")
    blocks = [("h", 1, f"How the initialization changes convergence: {c.name}"), ("p", source)]
    line = headline(c)
    blocks.append(("p", f"**{line[0].upper() + line[1:]}.**"))
    blocks += [("h", 2, "Curves, coloured by iterations to the target (held)"), ("img", "curves.png", "curves")]
    for table in band_tables(c):
        blocks += [("h", 2, table.title[0].upper() + table.title[1:]),
                   ("p", table.same[0].upper() + table.same[1:] + ".") if table.same else ("table", table.header, table.rows)]
    blocks.append(("img", "iterations_to_target.png", "iterations to target by band"))
    blocks.append(("h", 2, "Decision boundaries, one tile per seed"))
    grids = [name for name in figures if name.startswith("boundaries")]
    blocks += [("img", name, name) for name in grids] or [("p", "No band has two trials with boundary images.")]
    blocks += [("p", note) for note in notes]
    blocks.append(("h", 2, f"Parameter importances for {c.objective or 'the objective'}"))
    table = importance_table(c)
    blocks += [("table", *table), ("img", "importances.png", "importances")] if table else [("p", str(c.importances))]
    o = c.options
    blocks.append(("p", f"Bands: {o.bands_per_decade} per factor of 10 in lr. Spreads need at least {o.min_trials} "
                        f"values; median CI: percentile bootstrap, {o.resamples} resamples, seed {o.bootstrap_seed}. "
                        "Every number is computed from the logged runs."))
    return blocks


def write_report(c: Comparison, tracker, folder: Path) -> tuple[Path, list[str], str | None]:
    """Write the report into `folder` and log it to the comparison's run under
    `report/<time>/` (artifacts cannot be replaced, so each report keeps its own folder).
    Returns the HTML file, notes for the terminal, and the report's artifact folder (None: the
    store is read-only, nothing was logged)."""
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in OWN_FILES:  # an earlier report's files; nothing else in the folder is touched
        for old in folder.glob(pattern):
            old.unlink()
    notes = []
    if c.mixed:
        notes.append(f"note: the trials also differ in {', '.join(c.mixed)}, which each learning-rate band mixes; "
                     "to set those side by side over the same seeds, use a seed-scan file with arms (docs/questions.md)")
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

    blocks = blocks_of(c, [name for name, _ in figures], notes)
    (folder / "report.md").write_text(markdown(blocks))
    (folder / "report.html").write_text(html(blocks, folder, c.name))
    if tracker.read_only:  # a store this process cannot write to: the report stays in `folder`
        return folder / "report.html", notes, None
    now = time.time()  # to the millisecond: two reports within one second keep their own folders
    artifact_dir = f"report/{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}-{int(now * 1000) % 1000:03d}"
    for name in [name for name, _ in figures] + ["report.md", "report.html"]:
        tracker.log_artifact(c.run_id, folder / name, artifact_dir)
    tracker.set_tags(c.run_id, {"report": f"{artifact_dir}/report.html"})
    return folder / "report.html", notes, artifact_dir
