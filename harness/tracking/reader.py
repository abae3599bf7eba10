"""Reading runs back (`make compare`, `make ui`): metric histories, step images, artifacts, the
newest run of a kind, and the UI's URLs. `Tracker` (harness/tracking/tracker.py) is a `RunReader`."""

import os
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from harness.tracking.mlflow_fast import full_size_step
from harness.tracking.writer import DEFAULT_TRACKING_URI


UI_BASE = "http://127.0.0.1:5000"  # where `make ui` serves a local store
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
"""the query that opens a page of MLflow 3.16-3.17's UI in its model-training view (how the UI
chooses its view: harness/ops/ui_app.py)"""


def experiment_page(ui_base: str, experiment_id: str) -> str:
    """An experiment's runs table in the UI, in the model-training view."""
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}"


def run_page(ui_base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the UI, in the model-training view (its Model metrics tab)."""
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """MLflow's artifact progress bars off while the body runs, as the user had them after."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name) if saved is None else os.environ.__setitem__(name, saved)


class RunReader:
    """What reads a store back, over `self.client` (an MlflowClient) and `self.uri`."""

    def experiment_url(self, experiment: str, ui_base: str = UI_BASE) -> str:
        base = self.uri.rstrip("/") if self.is_server else ui_base
        return experiment_page(base, self.experiment_id(experiment))

    def run_url(self, run_id: str, ui_base: str = UI_BASE) -> str:
        base = self.uri.rstrip("/") if self.is_server else ui_base
        return run_page(base, self.client.get_run(run_id).info.experiment_id, run_id)

    def run_link(self, run_id: str, ui_base: str = UI_BASE) -> str:
        """The run's page, and for a local store how to start the UI that serves it."""
        return self.with_ui_hint(self.run_url(run_id, ui_base))

    def with_ui_hint(self, url: str) -> str:
        """A page of this store's UI, and for a local store how to start that UI."""
        command = self.ui_command()
        return f"{url}  (start the UI first: {command})" if command else url

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def all_runs(self, experiment_id: str, filter_string: str = "", page: int = 10_000) -> list:
        """Every run of the experiment that matches `filter_string`, page after page of `search_runs`."""
        runs, token = [], None
        while True:
            found = self.client.search_runs([experiment_id], filter_string, max_results=page, page_token=token)
            runs += found
            token = found.token
            if not token:
                return runs

    # reading back, for reports (`make compare`)

    def metric_histories(self, run_id: str, keys: list[str]) -> dict[str, np.ndarray]:
        """Each metric's values at steps 0..last, in step order (NaN where a step is missing)."""
        out = {}
        for key in keys:
            points = self.client.get_metric_history(run_id, key)
            values = np.full(max((m.step for m in points), default=-1) + 1, np.nan)
            for m in points:
                values[m.step] = m.value
            out[key] = values
        return out

    def image_steps(self, run_id: str, key: str) -> dict[int, str]:
        """step -> artifact path of the full-size image that `log_image(key=..., step=...)` wrote."""
        steps = {}
        for info in self.client.list_artifacts(run_id, "images"):
            step = full_size_step(info.path, key)
            if step is not None:
                steps[step] = info.path
        return steps

    def has_artifact(self, run_id: str, path: str) -> bool:
        folder, _, _ = path.rpartition("/")
        return any(info.path == path for info in self.client.list_artifacts(run_id, folder or None))

    def download(self, run_id: str, path: str, destination: str | Path) -> Path:
        with no_progress_bars():  # one bar per call is noise
            return Path(self.client.download_artifacts(run_id, path, str(destination)))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def latest_run(self, experiment: str, tag: str, value: str):
        """The newest finished run of `experiment` tagged `tag = value`, or None."""
        experiment_id = self.find_experiment_id(experiment)
        if experiment_id is None:
            return None
        runs = self.client.search_runs([experiment_id], f"tags.{tag} = '{value}' and attributes.status = 'FINISHED'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def ui_command(self) -> str:
        """How to start a UI over this store; nothing for a server, which serves its own."""
        if self.is_server:
            return ""
        return "make ui" if self.uri == DEFAULT_TRACKING_URI else f"MLFLOW_TRACKING_URI={shlex.quote(self.uri)} make ui"
