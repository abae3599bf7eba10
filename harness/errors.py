"""The errors the command line turns into one `error: ...` line, apart from ConfigError (a bad
config, exit 2, raised in harness/core/config.py), and the warning it turns into one `warning: ...` line."""

import sys
import warnings


class ServiceError(RuntimeError):
    """A server (PostgreSQL, the MLflow tracking server) could not be installed, started or
    reached, or stopped answering for longer than the retries wait; the message says which (exit 1)."""


class NothingCompleted(RuntimeError):
    """A sweep ran trials and none of them completed (or was pruned); the message names the first
    one's error (exit 1)."""


class FallbackWarning(UserWarning):
    """A fast path that does not fit the installed MLflow or Optuna; the public API does the
    work instead. The command line prints it as one `warning: ...` line."""


def one_line_warnings() -> None:
    """A FallbackWarning is printed as one `warning: ...` line (the command line and the writer
    process call this); every other warning as Python prints it."""
    show = warnings.showwarning

    def shown(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FallbackWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = shown
