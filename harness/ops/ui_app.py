"""The MLflow server app that `make ui` runs: MLflow's own, with the model-training view as the
browser's default.

MLflow 3.16-3.17's UI shows an experiment and its runs in its GenAI view or its model-training
view. It takes the view from the page's `workflowType` query, which every link the harness
prints carries (harness/tracking/reader.py), else from what the browser last chose, kept in
its localStorage, else GenAI; the experiment tag `mlflow.experimentKind`, which the harness sets
too (tracking/tracker.py), is read only by UIs that choose by the experiment, not by these. The links inside the UI (a run's name in the runs table, the
breadcrumbs) carry no query, so a click from a printed link would land in the GenAI view. This
app adds one line of JavaScript to the UI's page that stores the model-training view as the
browser's choice where it has made none; a choice made in the UI's own toggle stands.

It is an MLflow app plugin, MLflow's public way to extend its server (its basic-auth app is
one): the entry point `wine-init` in the group `mlflow.app` (pyproject.toml), started with
`mlflow server --app-name wine-init`. The localStorage key is the UI's own, not an API:
`view_key_in_use` checks at start-up that the served UI still uses it, and `make ui` says so in
one line where it does not (the printed links keep working; a click may then open GenAI).
"""

from pathlib import Path

APP = "wine-init"  # the plugin's name: `mlflow server --app-name wine-init`
VIEW_KEY = "mlflow.workflowType"  # the UI's storage key, versioned by it as `<key>_v1`
PAGES = ("/", "/index.html")  # where the UI's page is served (under the server's static prefix, if any)
SCRIPT = ("<script>try{var k='" + VIEW_KEY + "_v1';if(localStorage.getItem(k)===null)"
          "localStorage.setItem(k,JSON.stringify('machine_learning'))}catch(e){}</script>")


def view_key_in_use() -> bool:
    """Whether the installed UI's JavaScript still keeps its view under VIEW_KEY."""
    import mlflow.server

    bundle = Path(mlflow.server.__file__).parent / "js" / "build" / "static" / "js"
    return any(f'key:"{VIEW_KEY}",version:1' in path.read_text(errors="ignore") for path in bundle.glob("main.*.js"))


def app_problem() -> str | None:
    """Why the server cannot run as APP, or None: the project is not installed (its entry point
    is missing), or the installed UI no longer keeps its view where this module expects."""
    from importlib.metadata import entry_points

    if not any(e.name == APP for e in entry_points(group="mlflow.app")):
        return f"the MLflow app '{APP}' is not installed (pip install -e . installs it)"
    if not view_key_in_use():
        return "this MLflow's UI keeps its view elsewhere than harness/ops/ui_app.py expects"
    return None


def with_default_view(response):
    """Flask `after_request`: the UI's page gets SCRIPT at the start of its <head>; nothing else
    does (an HTML artifact, such as a report, is served as it was logged)."""
    from flask import request

    if request.path not in PAGES or response.status_code != 200 or response.mimetype != "text/html":
        return response
    response.direct_passthrough = False  # a file response: read it to change it
    page = response.get_data(as_text=True)
    if "<head>" in page and SCRIPT not in page:
        response.set_data(page.replace("<head>", "<head>" + SCRIPT, 1))
        response.headers.pop("ETag", None)  # the file's tag no longer names this body
    return response


def create_app():
    """The factory MLflow's server runs (under uvicorn, its default): MLflow's Flask app with
    `with_default_view`, wrapped in MLflow's FastAPI app as `mlflow server` wraps it."""
    from mlflow.server import app as flask_app
    from mlflow.server.fastapi_app import create_fastapi_app

    flask_app.after_request(with_default_view)
    return create_fastapi_app(flask_app)
