"""SQLite settings for the local stores (MLflow's and Optuna's), set on every new connection.

WAL lets readers (the UI, other workers) go on while one process writes, and with
synchronous=NORMAL a commit no longer waits for the disk: a crash of the process loses
nothing, a power cut may lose the last commits, the database stays consistent either way.
"""

import sqlite3

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
