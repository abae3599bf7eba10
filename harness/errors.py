"""The errors the command line turns into one `error: ...` line, apart from ConfigError (a bad
config, exit 2, raised in harness/core/config.py)."""


class ServiceError(RuntimeError):
    """A server (PostgreSQL, the MLflow tracking server) could not be installed, started or
    reached, or stopped answering for longer than the retries wait; the message says which (exit 1)."""


class NothingCompleted(RuntimeError):
    """A sweep ran trials and none of them completed (or was pruned); the message names the first
    one's error (exit 1)."""


class FallbackWarning(UserWarning):
    """A fast path that does not fit the installed MLflow or Optuna; the public API does the
    work instead. The command line prints it as one `warning: ...` line."""
