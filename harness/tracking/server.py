"""Talking to an MLflow tracking server (an http URI): a check before any run, bounded retries,
and one clear line when the server stays down.

MLflow's own HTTP client retries every request, refused connections and 5xx answers included,
with exponential backoff. We only bound it: where the user did not set them, 5 retries that
sleep 0, 4, 8, 16 and 32 s (~60 s in all, enough to outlast a server restart; MLflow's default
of 7 waits ~4 minutes) and 30 s for a request that hangs (instead of 120). A retried write is
safe: a metric that reaches the server twice is stored once, an artifact is overwritten.

Those retries end where the server has begun to answer: an answer broken off by a server that
died in the middle of it (requests' ChunkedEncodingError) is raised at once. ServerClient makes
the whole call again then, a few times, and each new call has MLflow's retries again.
"""

import functools
import json
import os
import re
import time
import urllib.error
import urllib.request

import requests

from harness.core.config import ConfigError
from harness.errors import ServiceError

BROKEN_ANSWER_RETRIES = 3  # calls made again after an answer that broke off (see the docstring)
SERVER_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                   # MLflow prints a link per closed run to a server; the sweep prints one at the end
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class TrackingUnavailable(ServiceError):
    """The tracking server did not answer, even after the retries."""


def use_server_defaults() -> None:
    """Our bounds on MLflow's retries, unless the environment sets its own (MLflow reads the
    variables on every request, and worker processes inherit them)."""
    for name, value in SERVER_DEFAULTS.items():
        os.environ.setdefault(name, value)


def retry_window() -> str:
    retries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7"))
    factor = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2"))
    return f"{retries} retries over ~{factor * (2 ** retries - 2):.0f} s"


def short_cause(error: BaseException) -> str:
    """'Connection refused' out of urllib3's paragraph about it."""
    text = str(error)
    errno = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    if errno:
        return errno.group(1).strip()
    status = re.search(r"too many \d+ error responses", text)
    return status.group(0) if status else type(error).__name__


def is_unreachable(error: Exception) -> bool:
    """MLflow raises its MlflowException while handling the requests error of a request that failed
    for good (refused, reset, timed out, 5xx after the retries)."""
    return isinstance(error.__context__, requests.exceptions.RequestException)


class ServerClient:
    """An MlflowClient whose calls raise TrackingUnavailable once the server stays unreachable.
    A local store never raises it: its errors have no requests error behind them."""

    def __init__(self, client, uri: str):
        self.client, self.uri = client, uri

    def __getattr__(self, name: str):
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args, **kwargs):
            for attempt in range(BROKEN_ANSWER_RETRIES + 1):
                try:
                    return attribute(*args, **kwargs)
                except Exception as e:
                    if not is_unreachable(e):
                        raise
                    broken = isinstance(e.__context__, requests.exceptions.ChunkedEncodingError)
                    if broken and attempt < BROKEN_ANSWER_RETRIES:
                        time.sleep(1)
                        continue
                    gave_up = (f"its answer broke off {attempt + 1} times" if broken else
                               f"gave up after {retry_window()}, see MLFLOW_HTTP_REQUEST_MAX_RETRIES")
                    raise TrackingUnavailable(f"MLFLOW_TRACKING_URI: the MLflow server at {self.uri} stopped "
                                              f"answering ({name}: {short_cause(e.__context__)}; {gave_up})") from None
        return call


def check(uri: str) -> None:
    """One request to MLflow's API, no retries: a wrong URL fails at once, before any run."""
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            json.load(response)
    except urllib.error.HTTPError as e:
        hint = ": set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" if e.code in (401, 403) else ""
        raise ConfigError(f"MLFLOW_TRACKING_URI: the server at {uri} answers HTTP {e.code} to MLflow's API{hint}") from None
    except (OSError, ValueError) as e:
        reason = re.sub(r"^\[Errno -?\d+\] ", "", str(getattr(e, "reason", None) or e))
        raise ConfigError(f"MLFLOW_TRACKING_URI: no MLflow server answers at {uri}: {reason}") from None
