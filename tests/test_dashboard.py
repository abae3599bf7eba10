"""`make dashboard`: optuna-dashboard over the study storage, loopback only, refusals in one line
before anything starts, and (marked browser) a small study as a person sees it in Debian's
headless chromium, then a clean Ctrl-C.

What optuna-dashboard 0.21 is made of, as the browser test relies on it: the study list is a
card per study, a link to /dashboard/studies/<id>; a study's trial list is
/dashboard/studies/<id>/trials, and `?numbers=N` selects trial N, whose page is headed
`Trial N (trial_id=...)` and lists its value, its parameters (`name value`) and its user
attributes.
"""

import os
import re
import shutil
import socket
import urllib.request

import optuna
import pytest

from harness.ops import dashboard
from harness.ops.services import port_taken
from conftest import ROOT, DashboardProcess, free_port, group_alive, run_cli
import test_browser
from test_browser import TIMEOUT_MS, chromium, expect, headless_chromium
import test_make_variables
from test_make_variables import NASTY

make = test_make_variables.make  # the fixture: `make <target> NAME=value` records what the command got

STUDY = "dashboard-study"
STUDY_FILE = test_browser.STUDY_FILE.replace(test_browser.STUDY, STUDY).replace(test_browser.EXPERIMENT, "dashboard-sweep")


def stores(tmp_path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "OPTUNA_STORAGE": f"sqlite:///{tmp_path}/optuna.db"}


def one_line_error(proc, code: int) -> str:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_store_that_does_not_exist_is_not_created_and_sweep_is_named(tmp_path):
    proc = run_cli("dashboard", "--port", str(free_port()), env=stores(tmp_path), timeout=60)
    assert one_line_error(proc, 2) == (f"error: OPTUNA_STORAGE: sqlite:///{tmp_path}/optuna.db has no studies yet: "
                                       "run `make sweep` first")
    assert not list(tmp_path.iterdir())


def test_a_taken_port_is_refused_in_one_line_naming_the_next_one(tmp_path):
    optuna.create_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/optuna.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("dashboard", "--study", STUDY, "--port", str(port), env=stores(tmp_path), timeout=60)
    assert one_line_error(proc, 1) == (f"error: port {port} on 127.0.0.1 is taken by another process; "
                                       f"try another: make dashboard PORT={port + 1}")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5"])
def test_other_hosts_are_refused_without_allow_remote(tmp_path, host):
    proc = run_cli("dashboard", "--host", host, env=stores(tmp_path), timeout=60)
    assert one_line_error(proc, 2).startswith(f"error: host: '{host}' is not a loopback address; the dashboard "
                                              "has no login")


def test_the_server_listens_on_the_given_loopback_port_and_keeps_quiet(tmp_path):
    command = dashboard.server_command(f"sqlite:///{tmp_path}/optuna.db", "127.0.0.1", 8123)
    assert command[0].endswith("optuna-dashboard")
    assert command[1:] == [f"sqlite:///{tmp_path}/optuna.db", "--host", "127.0.0.1", "--port", "8123",
                           "--server", "gunicorn", "--quiet"]


def test_a_database_password_goes_to_the_environment_not_the_command_line():
    served, shown, env = dashboard.split_password("postgresql://wine:s3cret@db:5433/optuna")
    assert served == "postgresql://wine@db:5433/optuna" and env == {"PGPASSWORD": "s3cret"}
    assert "s3cret" not in shown
    assert dashboard.split_password("sqlite:///mlruns/optuna.db") == ("sqlite:///mlruns/optuna.db",) * 2 + ({},)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_dashboard_passes_each_value_as_typed_and_its_own_default_port(make):
    assert make("dashboard", CONFIG=NASTY, STUDY=NASTY, PORT=NASTY)["argv"] == [
        "-m", "harness", "dashboard", NASTY, "--study", NASTY, "--port", NASTY]
    assert make("dashboard")["argv"] == ["-m", "harness", "dashboard", "experiments/sweep.toml"]  # 8080
    assert make("ui")["argv"] == ["-m", "harness", "ui", "experiments/sweep.toml"]  # 5000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A 3-trial sweep in a fresh store, served by `python -m harness dashboard` on a free port:
    (the study page it printed, the process, the port, the study as Optuna reads it)."""
    if chromium() is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does it)")
    tmp = tmp_path_factory.mktemp("dashboard")
    env = stores(tmp)
    study_file = tmp / "study.toml"
    study_file.write_text(STUDY_FILE)
    swept = run_cli("sweep", str(study_file), env=env)
    assert swept.returncode == 0, swept.stderr
    study = optuna.load_study(study_name=STUDY, storage=env["OPTUNA_STORAGE"])

    port = free_port()
    server = DashboardProcess([str(study_file), "--port", str(port)], env, tmp / "dashboard.log")
    try:
        first = server.wait_for_line("Optuna dashboard on ")
        assert first == f"Optuna dashboard on http://127.0.0.1:{port} over {env['OPTUNA_STORAGE']}; Ctrl-C stops it"
        link = server.wait_for_line(f"study '{STUDY}': ").split(": ", 1)[1]
        yield link, server, port, study
    finally:
        server.close()


@pytest.fixture(scope="module")
def page(served):
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        page.set_default_timeout(TIMEOUT_MS)
        yield page


@pytest.mark.browser
def test_the_study_list_links_the_study_the_command_printed(served, page, tmp_path):
    link, _, port, study = served
    base = f"http://127.0.0.1:{port}"
    assert link.startswith(f"{base}/dashboard/studies/")
    page.goto(f"{base}/dashboard")
    card = page.get_by_role("link").filter(has_text=STUDY)
    expect(card).to_have_count(1)
    assert base + card.get_attribute("href") == link
    card.click()
    expect(page).to_have_url(link)
    best = study.best_trial
    expect(page.get_by_role("heading", name=f"Best Trial (number={best.number})")).to_be_visible()
    page.screenshot(path=tmp_path / "dashboard-study.png")


@pytest.mark.browser
def test_a_trials_page_shows_its_value_params_and_mlflow_run(served, page, tmp_path):
    link, _, _, study = served
    trial = study.trials[0]
    page.goto(f"{link}/trials?numbers=0")
    expect(page.get_by_role("heading", name=re.compile(r"^Trial 0 \(trial_id=\d+\)$"))).to_be_visible()
    for text in (repr(trial.value), f"lr {trial.params['lr']!r}", f"seed {trial.params['seed']}",
                 f"mlflow_run_id {trial.user_attrs['mlflow_run_id']}"):
        expect(page.get_by_text(text, exact=True).first).to_be_visible()
    page.screenshot(path=tmp_path / "dashboard-trial.png")


@pytest.mark.browser
def test_ctrl_c_stops_the_dashboard_and_frees_its_port(served):
    _, server, port, _ = served
    assert server.server_group is not None and group_alive(server.server_group)
    assert server.interrupt() == 0, server.output()
    assert server.output().splitlines()[-1] == "stopping the Optuna dashboard"
    assert "Traceback" not in server.output() and "[INFO]" not in server.output()
    assert not group_alive(server.server_group)  # gunicorn and its worker are gone
    assert not port_taken("127.0.0.1", port)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/meta", timeout=5)
