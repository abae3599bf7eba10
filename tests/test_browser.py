"""The MLflow UI as a person sees it: a small sweep, `python -m harness ui`, and Debian's
headless chromium driven by Playwright. Screenshots go to the test's folder and, when
WINE_SCREENSHOTS=dir is set, to that folder too (`make screenshots` remakes the README's).

What MLflow 3.17's UI is made of, as these tests rely on it: the runs table is an ag-grid whose
"Run Name" cells hold the expander of a parent run; the chart view is the CHART value of the
`runs-view-mode` radio group; each chart is a card (test id `experiment-view-compare-runs-card`)
titled by a heading, and an image card has a slider and a number input for the step; the
Artifacts tab is a tree of nodes (test id `artifact-tree-node`) beside a preview.
"""

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import ROOT, UiProcess, free_port, run_cli
from harness.tracking.reader import UI_BASE

pytestmark = pytest.mark.browser

STUDY = "ui-study"
EXPERIMENT = "ui-sweep"
ITERATIONS = 30
STUDY_FILE = f"""
experiment = "{EXPERIMENT}"
iterations = {ITERATIONS}
device = "cpu"
[sweep]
study = "{STUDY}"
trials = 3
[sweep.space]
lr = {{ low = 0.05, high = 1.0, log = true }}
seed = {{ low = 0, high = 9999 }}
"""
SCAN_EXPERIMENT = "ui-seeds"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000  # a 2-core CI machine serves the first page in a few seconds


def chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@dataclass
class Study:
    url: str
    """the experiment page `python -m harness ui` printed"""
    base: str
    experiment_id: str
    parent_id: str
    trial_ids: dict[str, str]
    """run name -> run id"""
    client: MlflowClient
    links: dict[str, str]
    """command -> the run link it printed, on this UI's port"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 3-trial sweep in a fresh store, served by `python -m harness ui` on a free port."""
    if chromium() is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri,
           "OPTUNA_STORAGE": f"sqlite:///{tmp}/optuna.db"}
    study_file = tmp / "study.toml"
    study_file.write_text(STUDY_FILE)
    swept = run_cli("sweep", str(study_file), env=env)
    assert swept.returncode == 0, swept.stderr
    compared = run_cli("compare", str(study_file), env=env)  # each trial's boundary.gif, the report
    assert compared.returncode == 0, compared.stderr
    scanned = run_cli("seeds", "--count", "20", "--set", "iterations=60", "--set", "device=cpu",
                      "--set", f"experiment={SCAN_EXPERIMENT}", env=env)
    assert scanned.returncode == 0, scanned.stderr
    links = {name: printed_link(result.stdout) for name, result in (("compare", compared), ("seeds", scanned))}

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment_id])
    parent_id = next(r.info.run_id for r in runs if r.info.run_name == STUDY)
    trials = {r.info.run_name: r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert sorted(trials) == ["trial-0", "trial-1", "trial-2"]

    port = free_port()
    server = UiProcess([str(study_file), "--port", str(port)], env, tmp / "ui.log")
    try:
        line = server.wait_for_line(f"experiment '{EXPERIMENT}' (")  # the study's first, with its run count
        assert line.startswith(f"experiment '{EXPERIMENT}' (4 runs): "), line
        url = line.split(": ", 1)[1]
        assert server.wait_for_line(f"experiment '{SCAN_EXPERIMENT}' (").startswith(
            f"experiment '{SCAN_EXPERIMENT}' (1 run): http://127.0.0.1:{port}/#/experiments/")  # and every other one
        assert url == f"http://127.0.0.1:{port}/#/experiments/{experiment_id}?workflowType=machine_learning"
        base = f"http://127.0.0.1:{port}"
        yield Study(url, base, experiment_id, parent_id, trials, client,
                    {name: link.replace(UI_BASE, base) for name, link in links.items()})
        assert server.interrupt() == 0, server.output()
    finally:
        server.close()


def headless_chromium():
    """Debian's chromium, headless, driven by Playwright through `executable_path` (a browser is
    never downloaded); a context manager giving the browser."""
    from contextlib import contextmanager

    from playwright.sync_api import expect as playwright_expect, sync_playwright

    @contextmanager
    def launched():
        playwright_expect.set_options(timeout=TIMEOUT_MS)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
            try:
                yield browser
            finally:
                browser.close()

    return launched()


@pytest.fixture(scope="module")
def browser(study):
    with headless_chromium() as browser:
        yield browser


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Save a screenshot to the test output folder; the README's also to WINE_SCREENSHOTS when set
    (the others may show this machine's temporary paths)."""
    folder = tmp_path_factory.mktemp("screenshots")
    copies = Path(os.environ["WINE_SCREENSHOTS"]) if os.environ.get("WINE_SCREENSHOTS") else None

    def save(target, name: str, readme: bool = False) -> Path:
        path = folder / f"{name}.png"
        target.screenshot(path=path)
        if copies and readme:
            copies.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, copies / path.name)
        return path

    return save


def expect(target):
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(target)


def close_assistant(page) -> None:
    """MLflow 3.17 opens its chat assistant beside every page; it is not what these tests look at."""
    panel_text = page.get_by_text("Ask questions about your experiments")
    if panel_text.is_visible():
        page.get_by_role("button", name="Close", exact=True).first.click()
        expect(panel_text).to_be_hidden()


def printed_link(stdout: str) -> str:
    """The run link a command printed: `the run: <url>  (start the UI first: ...)`."""
    line = next(line for line in stdout.splitlines() if line.startswith("the run: "))
    return line.removeprefix("the run: ").split()[0]


def expect_model_training_view(page, experiment_id: str) -> None:
    """MLflow 3.17's side bar links the experiment's runs in its model-training view, and its
    evaluation runs in the GenAI view (where a run page's breadcrumb says "Evaluations")."""
    runs = page.get_by_test_id("experiment-observatory-link-runs")
    expect(runs).to_have_text("Runs")
    expect(runs).to_have_attribute("href", re.compile(f"#/experiments/{experiment_id}/runs"))
    expect(page.locator(f"aside a[href^='#/experiments/{experiment_id}/evaluation-runs']")).to_have_count(0)


def run_name_cell(page, name: str):
    return page.locator('[role=gridcell][col-id="attributes.`Run Name`"]').filter(
        has=page.get_by_role("link", name=name, exact=True))


def open_runs_table(page, study: Study) -> None:
    """The printed URL, then the parent's row expanded: the trials are nested under it."""
    page.goto(study.url)
    parent = run_name_cell(page, STUDY)
    expect(parent).to_be_visible()
    close_assistant(page)
    expect(run_name_cell(page, "trial-0")).to_have_count(0)  # collapsed under the parent
    parent.get_by_role("button").click()  # the expander beside the parent's name


def chart_card(page, title: str):
    return page.get_by_test_id("experiment-view-compare-runs-card").filter(
        has=page.get_by_role("heading", name=title, exact=True))


def scroll_charts_to(page, target, steps: int = 30) -> None:
    """Scroll the chart area with the mouse wheel, as a person does, until `target` is rendered."""
    page.get_by_test_id("experiment-view-compare-runs-card").first.hover()  # over the charts: the wheel scrolls them
    for _ in range(steps):
        if target.count():
            return
        page.mouse.wheel(0, 400)
        page.wait_for_timeout(200)


def wait_until_drawn(page, img) -> None:
    page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=img.element_handle())


def test_the_runs_table_shows_the_study_with_its_trials_nested(page, study, shots):
    open_runs_table(page, study)
    for name in ("trial-0", "trial-1", "trial-2"):
        link = run_name_cell(page, name).get_by_role("link", name=name)
        expect(link).to_be_visible()
        assert link.get_attribute("href").endswith(f"/runs/{study.trial_ids[name]}")
    expect(page.get_by_text("4 matching runs")).to_be_visible()
    shots(page, "ui-runs", readme=True)

    run_name_cell(page, STUDY).get_by_role("button").click()  # collapses again
    expect(run_name_cell(page, "trial-0")).to_have_count(0)


def test_the_chart_view_compares_the_trials_by_lr_and_seed(page, study, shots):
    open_runs_table(page, study)
    expect(run_name_cell(page, "trial-2")).to_be_visible()
    page.locator("label:has(input[name=runs-view-mode][value=CHART])").click()
    for metric in ("train_loss", "train_accuracy"):  # the first row of cards; the rest render on scroll
        expect(chart_card(page, metric)).to_be_visible()

    page.get_by_role("button", name="Add chart").first.click()
    page.get_by_role("menuitem", name="Parallel coordinates").click()
    dialog = page.get_by_role("dialog")
    for field, names in (("Params", ["lr", "seed"]), ("Metrics", ["val_loss"])):
        box = dialog.get_by_test_id("experiment-view-compare-runs-config-field").filter(
            has=page.get_by_role("heading", name=field, exact=True))
        box.locator(".du-bois-light-select-selector").click()
        for name in names:
            page.keyboard.type(name)  # the option list is virtual: filter it to the one we want
            page.locator(f".du-bois-light-select-dropdown:visible .du-bois-light-select-item-option[title='{name}']").click()
        page.keyboard.press("Escape")
    chart = dialog.locator(".parcoords")
    expect(chart).to_be_visible()
    axes = chart.locator("svg text").all_text_contents()
    assert {"lr", "seed", "val_loss"} <= set(axes), axes

    dialog.get_by_role("button", name="Add chart").click()
    expect(dialog).to_be_hidden()
    added = chart_card(page, "Parallel Coordinates").locator(".parcoords")
    scroll_charts_to(page, added)  # it is added last, and cards out of view are not rendered
    expect(added).to_be_visible()
    added.scroll_into_view_if_needed()
    shots(page, "ui-chart", readme=True)


def test_a_trial_shows_its_loss_chart_and_its_boundary_images_on_a_step_slider(page, study, shots):
    open_runs_table(page, study)
    run_name_cell(page, "trial-0").get_by_role("link", name="trial-0").click()
    expect(page.get_by_role("heading", name="trial-0")).to_be_visible()
    close_assistant(page)
    # a click inside the UI carries no view in its URL: the UI `make ui` serves keeps this one
    expect_model_training_view(page, study.experiment_id)
    page.get_by_role("tab", name="Model metrics").click()

    loss = chart_card(page, "train_loss")
    expect(loss.locator(".js-plotly-plot")).to_be_visible()
    expect(loss.get_by_text("trial-0 (train_loss)")).to_be_visible()

    boundary = chart_card(page, "boundary")
    slider = boundary.get_by_role("slider")
    image = boundary.locator("img")
    expect(slider).to_have_attribute("aria-valuemax", str(ITERATIONS))
    expect(image).to_have_attribute("src", re.compile(r"boundary%2Bstep%2B0%2B"))
    # a person drags the slider or types the step; the image follows when the box loses focus
    boundary.locator("input[type=number]").fill("20")
    page.keyboard.press("Tab")
    expect(slider).to_have_attribute("aria-valuenow", "20")
    expect(image).to_have_attribute("src", re.compile(r"boundary%2Bstep%2B20%2B"))
    wait_until_drawn(page, image)

    boundary.locator("button[data-component-id=fullscreen_button_chartcard]").click()
    dialog = page.get_by_role("dialog")
    big = dialog.locator("img")
    expect(big).to_have_attribute("src", re.compile(r"boundary%2Bstep%2B20%2B"))
    wait_until_drawn(page, big)
    # the enlarged view shows the card's WebP at its own size: logged at the image's full size
    assert big.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [384, 384]
    assert big.evaluate("i => i.getBoundingClientRect().width") >= 384  # not shrunk either
    expect(dialog.get_by_role("slider")).to_have_attribute("aria-valuenow", "20")
    # the picture: the image sits centred in a tall box that scrolls, and it fades in on a new step
    big.evaluate("i => i.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(1000)
    shots(dialog, "ui-boundary-slider", readme=True)


def open_artifact(page, study: Study, run_id: str, path: str):
    """Click through a run's Artifacts tab to `path`; returns the preview's header text."""
    # a fresh load: revisiting a run in the same page shows its tree without the nodes to click
    page.goto("about:blank")
    page.goto(f"{study.base}/#/experiments/{study.experiment_id}/runs/{run_id}/artifacts?workflowType=machine_learning")
    first = path.split("/")[0]
    expect(page.locator(f"[data-testid=artifact-tree-node][artifact-name='{first}']")).to_be_visible()
    close_assistant(page)
    for name in path.split("/"):
        page.locator(f"[data-testid=artifact-tree-node][artifact-name='{name}']").click()
    header = page.locator(f"span[title='{path}']")  # the preview's title: the artifact's full path
    expect(header).to_have_text(path)
    return header


def expect_preview(page, study: Study, run_id: str, path: str) -> None:
    """The artifact browser shows the file: an image drawn, a page framed, or its text."""
    open_artifact(page, study, run_id, path)
    if path.endswith((".png", ".gif", ".jpg", ".svg")):
        img = page.locator(f"img[alt='{path}']")
        expect(img).to_be_visible()
        wait_until_drawn(page, img)
    elif path.endswith(".html"):
        expect(page.locator("iframe")).to_be_visible()
    else:
        local = Path(study.client.download_artifacts(run_id, path))
        first = next(line.strip("# ").strip() for line in local.read_text().splitlines() if line.strip("# ").strip())
        expect(page.get_by_text(first).first).to_be_visible()


def artifact_paths(client: MlflowClient, run_id: str, folder: str | None = None) -> list[str]:
    paths = []
    for item in client.list_artifacts(run_id, folder):
        paths += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return paths


def test_the_study_figures_open_in_the_parent_runs_artifacts(page, study, shots):
    expect_preview(page, study, study.parent_id, "optuna/optimization_history.png")
    shots(page, "ui-artifacts")


def test_the_compare_artifacts_open_in_the_artifact_browser(page, study, shots):
    """What `make compare` adds: a `boundary.gif` on every trial, and the report on the parent,
    at the path its `report` tag names (report/<time>/report.html, beside report.md)."""
    for name, run_id in study.trial_ids.items():
        assert "boundary.gif" in artifact_paths(study.client, run_id), f"{name} has no boundary.gif"
        expect_preview(page, study, run_id, "boundary.gif")
    report = study.client.get_run(study.parent_id).data.tags["report"]
    assert report.startswith("report/") and report.endswith("/report.html")
    assert report.replace(".html", ".md") in artifact_paths(study.client, study.parent_id, "report")
    expect_preview(page, study, study.parent_id, report)
    shots(page, "ui-report")


def test_a_printed_run_link_opens_the_run_in_the_model_training_view(page, study):
    page.goto(study.links["compare"])  # the study's parent run, where the report is logged
    expect(page.get_by_role("heading", name=STUDY)).to_be_visible()
    close_assistant(page)
    expect_model_training_view(page, study.experiment_id)
    expect(page.get_by_role("tab", name="Model metrics")).to_be_visible()


def test_a_seed_scan_shows_its_fan_and_histogram_where_a_user_looks_first(page, study, shots):
    page.goto(study.links["seeds"])
    close_assistant(page)
    # the run opens on its Overview: the description says what the run is and where its figures are
    note = page.get_by_test_id("note-editor-preview-content")
    expect(note).to_contain_text("20 seeds at lr 0.7")
    expect(note).to_contain_text("loss_fan")
    page.get_by_role("tab", name="Model metrics").click()
    for key in ("loss_fan", "iterations_to_target_histogram"):
        card = chart_card(page, key)
        scroll_charts_to(page, card)
        image = card.locator("img")
        expect(image).to_be_visible()
        wait_until_drawn(page, image)
    shots(page, "ui-seed-scan")
