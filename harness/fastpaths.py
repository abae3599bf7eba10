"""The bookkeeping of a fence's fast paths (harness/tracking/mlflow_fast.py, harness/study/optuna_fast.py).

A fast path goes past a library's public API. Its fence checks it once per process, before the
first use, with its own check (a problem in a few words, or None); a failed check, or a call
that fails where the public call then works, turns it off for the rest of the process with one
FallbackWarning (one `warning:` line on the command line). `WINE_INIT_PUBLIC_API` names paths
to leave off (comma-separated, or `all`), silently: `make bench` measures what each buys.
"""

import os
import threading
import warnings
from typing import Callable

from harness.errors import FallbackWarning

CHECK_ERRORS = (ImportError, AttributeError, TypeError, ValueError, OSError)  # a check that cannot run fails


class FastPaths:
    def __init__(self, library: Callable[[], str], checks: dict[str, tuple[Callable[[], str | None], str]]):
        """`library()`: its name and version, for the warning; `checks`: each path's check and
        the public call that stands in for it."""
        self.library, self.checks = library, checks
        self.off: set[str] = set()  # turned off by a failed call, in this process
        self.checked: frozenset[str] | None = None
        self.lock = threading.RLock()

    def usable(self) -> frozenset[str]:
        """The paths this process may take: checked once, each failure said in one warning."""
        with self.lock:
            if self.checked is None:
                self.checked = self.check()
            return self.checked

    def check(self) -> frozenset[str]:
        wanted = os.environ.get("WINE_INIT_PUBLIC_API", "")
        usable = set()
        for name, (check, _) in self.checks.items():
            if name in wanted.split(",") or wanted == "all":
                continue
            try:
                problem = check()
            except CHECK_ERRORS as e:
                problem = f"{type(e).__name__}: {e}"
            if problem:
                self.say(name, problem)
            else:
                usable.add(name)
        return frozenset(usable)

    def enabled(self, name: str) -> bool:
        return name in self.usable() and name not in self.off

    def turn_off(self, name: str, error: BaseException) -> None:
        """A call of the path failed where the public call then worked: not used again here,
        unless the failure was the database's own (locked, a lost connection), which no version causes."""
        if transient(error):
            return
        with self.lock:
            if name in self.off:
                return
            self.off.add(name)
        self.say(name, f"{type(error).__name__}: {error}")

    def reset(self) -> None:
        """Check again at the next use, every path on that the environment leaves on (`make bench`)."""
        with self.lock:
            self.checked = None
            self.off.clear()

    def say(self, name: str, problem: str) -> None:
        warnings.warn(f"{self.library()}: the {name} fast path does not fit this version ({problem}); "
                      f"using {self.checks[name][1]} instead", FallbackWarning, stacklevel=4)


def transient(error: BaseException) -> bool:
    """A database's refusal (SQLAlchemy's OperationalError, as raised or as the cause a library wrapped)."""
    from sqlalchemy.exc import OperationalError  # the driver both libraries use
    return any(isinstance(e, OperationalError) for e in (error, error.__cause__, error.__context__))
