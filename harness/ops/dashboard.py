"""`make dashboard`: optuna-dashboard over the study storage, on the loopback interface only.

The server is optuna-dashboard under gunicorn (which MLflow installs), run by
`harness/ops/web_server.py` as a child in its own process group and stopped as a whole on
Ctrl-C. `--quiet` keeps gunicorn's notices out and its errors in. The link to the study comes
from the list of studies the dashboard's own pages read (`/api/studies`), once it answers.
"""

import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

import sqlalchemy

from harness.core.config import ConfigError
from harness.ops import web_server
from harness.tracking.store_check import check_file, local_path, present, read_only_url

DEFAULT_PORT = 8080  # `make ui` has 5000


def check_storage(url: str) -> None:
    """A local store that is not there yet is not created (the dashboard would make an empty
    file it cannot show); a damaged one fails in one line."""
    path = local_path(url)
    if path is not None and not present(path):
        raise ConfigError(f"OPTUNA_STORAGE: {url} has no studies yet: run `make sweep` first")
    check_file(path)


def split_password(url: str) -> tuple[str, str, dict[str, str]]:
    """(the URL to serve, the URL to show, the server's extra environment): a database password
    reaches PostgreSQL's driver through PGPASSWORD, not a command line every user can read."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url, url.split("@")[-1] if "@" in url else url, {}  # nothing before the host is shown
    if parsed.password is None or not parsed.drivername.startswith("postgresql"):
        return url, parsed.render_as_string(hide_password=True), {}
    served = sqlalchemy.engine.URL.create(parsed.drivername, parsed.username, None, parsed.host, parsed.port,
                                          parsed.database, parsed.query)
    return (served.render_as_string(hide_password=False),
            parsed.render_as_string(hide_password=True), {"PGPASSWORD": str(parsed.password)})


def server_command(url: str, host: str, port: int) -> list[str]:
    program = Path(sys.executable).parent / "optuna-dashboard"  # installed beside our Python
    # a store this process cannot write to is served read-only (store_check.read_only_url)
    return [str(program), read_only_url(url), "--host", host, "--port", str(port), "--server", "gunicorn", "--quiet"]


def study_page(base_url: str, study: str) -> str | None:
    """The study's page, or None when the store does not have it."""
    with urllib.request.urlopen(f"{base_url}/api/studies", timeout=30) as response:
        summaries = json.load(response)["study_summaries"]
    ids = [s["study_id"] for s in summaries if s["study_name"] == study]
    return f"{base_url}/dashboard/studies/{ids[0]}" if ids else None


def links(study: str, base_url: str) -> list[str]:
    try:
        page = study_page(base_url, study)
    except (OSError, ValueError, KeyError, TypeError) as e:  # a dashboard whose list reads otherwise
        return [f"the studies: {base_url}/dashboard (study '{study}' not looked up: {e})"]
    if page:
        return [f"study '{study}': {page}"]
    return [f"study '{study}' is not in the store yet: run `make sweep` first, then open {base_url}/dashboard"]


def serve(storage: str, study: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
    """Run the dashboard until Ctrl-C (or SIGTERM); print where to look. Returns the exit code."""
    check_storage(storage)
    served, shown, env = split_password(storage)
    return web_server.serve(web_server.WebServer(
        "Optuna dashboard", "optuna-dashboard", "dashboard", server_command(served, host, port),
        {**os.environ, **env}, over=shown, health="/api/meta", links=lambda url, _: links(study, url),
        # gunicorn's quick shutdown: on SIGTERM it would wait 30 s for a browser's open connection
        stop_signal=signal.SIGINT), host, port)
