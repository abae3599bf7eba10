"""SQLite settings for the local stores (MLflow's and Optuna's), set on every new connection.

WAL lets readers (the UI, other workers) go on while one process writes, and with
synchronous=NORMAL a commit no longer waits for the disk: a crash of the process loses
nothing, a power cut may lose the last commits, the database stays consistent either way.
"""

import fcntl
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import event
from sqlalchemy.engine import Engine


def _on_connect(dbapi_connection, _record) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()


def tune_sqlite_connections() -> None:
    """Apply the settings above to every SQLAlchemy engine of this process (idempotent)."""
    if not event.contains(Engine, "connect", _on_connect):
        event.listen(Engine, "connect", _on_connect)


@contextmanager
def file_lock(database: Path) -> Iterator[None]:
    """An exclusive lock on `<database>.lock`, for this machine's processes: the one that finds
    the database new creates its tables while the others wait (two at once collide in MLflow's
    migrations and leave it half made). A folder this process cannot write in has nothing to
    create: no lock is needed there. An Optuna store's study lock is the same file
    (study_storage.study_lock): a process never takes one while it holds the other."""
    try:
        handle = open(f"{database}.lock", "a")
    except OSError:
        if database.exists():
            yield
            return
        raise
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
