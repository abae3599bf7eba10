"""Checks that the local stores are what a command expects, before it writes anything, and
the one line a store that stops taking writes (a full disk, a read-only folder) is reported in.

The checks stay cheap on a store of any size: SQLite's own header (the magic string, and the
file at least as long as the page count it gives), its schema readable, and for a sweep the
few rows that tie the two stores together: the study in Optuna's, its parent run in MLflow's.
"""

import errno
import json
import os
import sqlite3
import urllib.parse
from pathlib import Path

from harness.core.config import ConfigError
from harness.tracking.sqlite import file_lock

STUDY_TAG = "optuna.study_name"  # how MLflow's runs name their study (harness/study/sweep.py)
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # the study user attribute naming its MLflow parent run


def local_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def afresh(path: Path) -> str:
    return f"to start afresh, choose another study (STUDY=name) or move {path.parent}/ aside"


def present(path: Path | None) -> bool:
    return path is not None and path.exists() and path.stat().st_size > 0


def damage(path: Path) -> str | None:
    """Why the SQLite file at `path` cannot be used; None when it can (or is absent or empty).
    Read under the lock its creator holds (harness/tracking/sqlite.py), never half made."""
    if not present(path):
        return None
    with file_lock(path):
        return unlocked_damage(path)


def unlocked_damage(path: Path) -> str | None:
    """Read through SQLite only, never with a file of our own: closing any other descriptor of
    the file would drop this process's POSIX locks on it (one lock table per process and file),
    and another process could then take the WAL from under this process's open connections
    (disk I/O errors, writes lost). SQLite shares its descriptors and locks between the
    connections of a process, so its own connections are safe."""
    if not present(path):
        return None
    size = path.stat().st_size
    wal = Path(f"{path}-wal")
    pending = wal.exists() and wal.stat().st_size > 0  # a checkpoint cut short (a full disk): the WAL has the pages
    try:
        connection = connect_read_only(path)
        try:
            page_size, pages = (connection.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count"))
            if size < pages * page_size and not pending:  # the header's page count (SQLite's, where it is valid)
                return f"truncated: {size} bytes, its header says {pages * page_size}"
            # alembic's scratch tables are left by a migration cut short (two first runs at once
            # used to do it): every later open of MLflow's store fails on them
            scratch = connection.execute("SELECT name FROM sqlite_master WHERE name LIKE '\\_alembic\\_tmp\\_%' "
                                         "ESCAPE '\\' LIMIT 1").fetchall()
        finally:
            connection.close()
    except sqlite3.OperationalError as e:  # locked, unreadable: not the file's content
        return str(e)
    except sqlite3.DatabaseError as e:  # SQLite cannot read it: no connection of ours is using it
        return header_damage(path, pending) or str(e)
    return f"half made: a migration was cut short ({scratch[0][0]} is left)" if scratch else None


def header_damage(path: Path, pending: bool) -> str | None:
    """What SQLite's header says is wrong with a file SQLite cannot read: not a database, or
    shorter than its page count (where the header's count is valid)."""
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return "not an SQLite database"
    page_size = int.from_bytes(header[16:18], "big")
    pages = int.from_bytes(header[28:32], "big") * (65536 if page_size == 1 else page_size)
    if header[24:28] == header[92:96] and path.stat().st_size < pages and not pending:
        return f"truncated: {path.stat().st_size} bytes, its header says {pages}"
    return None


def connect_read_only(path: Path) -> sqlite3.Connection:
    """The store, read-only; in a folder this process cannot write to (no WAL index can be made
    there), as immutable (`read_only_url`)."""
    uri = path.resolve().as_uri()  # `#`, `?` and `%` in a folder's name percent-encoded
    connection = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:
        connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return connection
    except sqlite3.OperationalError as e:
        connection.close()
        if "unable to open" not in str(e):
            raise
    return sqlite3.connect(f"{uri}?immutable=1", uri=True)


def check_file(path: Path | None) -> None:
    """A damaged store fails here in one line (exit 2), before anything opens it."""
    reason = damage(path) if path is not None else None
    if reason:
        raise ConfigError(f"{path}: {reason}; {afresh(path)}")


def query(path: Path, sql: str, *args) -> list[tuple]:
    """Rows of a read-only query, under the lock the store's creator holds (one store at a time:
    never two locks at once, whose order could cross another process's)."""
    with file_lock(path):
        return unlocked_query(path, sql, *args)


def unlocked_query(path: Path, sql: str, *args) -> list[tuple]:
    connection = connect_read_only(path)
    try:
        return connection.execute(sql, args).fetchall()
    except sqlite3.OperationalError as e:  # a table missing: not the store it should be
        raise ConfigError(f"{path}: {e}; {afresh(path)}") from None
    finally:
        connection.close()


def check_sweep_stores(tracking_uri: str, storage_url: str, study: str) -> None:
    """A sweep's two local stores agree about `study`: each side's record of it is on the other
    side too. One line, exit 2, nothing written, when one is missing, empty or damaged."""
    mlflow_db, optuna_db = local_path(tracking_uri), local_path(storage_url)
    for path in (mlflow_db, optuna_db):
        check_file(path)
    if optuna_db is None or mlflow_db is None:
        return  # a server or PostgreSQL on one side: harness/study/sweep.py checks through the APIs
    found = query(optuna_db, "SELECT study_id FROM studies WHERE study_name = ?", study) if present(optuna_db) else []
    if found:
        parent = query(optuna_db, "SELECT value_json FROM study_user_attributes WHERE study_id = ? AND key = ?",
                       found[0][0], PARENT_RUN_ATTR)
        run_id = json.loads(parent[0][0]) if parent else None  # Optuna keeps attributes as JSON
        if run_id and not (present(mlflow_db) and query(mlflow_db, "SELECT 1 FROM runs WHERE run_uuid = ?", run_id)):
            state = "is empty" if mlflow_db.exists() else "is missing"
            raise ConfigError(f"{mlflow_db}: {state if not present(mlflow_db) else 'has no run ' + run_id}, the parent "
                              f"run of study '{study}' in {optuna_db}; {afresh(mlflow_db)}")
    elif present(mlflow_db) and query(mlflow_db, "SELECT 1 FROM tags WHERE key = ? AND value = ? LIMIT 1",
                                      STUDY_TAG, study):
        state = ("is empty" if optuna_db.exists() else "is missing") if not present(optuna_db) else f"has no study '{study}'"
        raise ConfigError(f"{optuna_db}: {state}, but {mlflow_db} holds the runs of study '{study}'; {afresh(optuna_db)}")


def check_writable(*urls: str) -> None:
    """A command that writes to a local store it cannot write to fails here, in one line."""
    for url in urls:
        path = local_path(url)
        if path is None:
            continue
        target = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
        if not os.access(target, os.W_OK) or (path.exists() and not os.access(path.parent, os.W_OK)):
            raise ConfigError(f"{path}: cannot be written here ({os.strerror(errno.EROFS if is_read_only_fs(target) else errno.EACCES)}); "
                              "the command writes its runs there: make it writable, or point MLFLOW_TRACKING_URI "
                              "and OPTUNA_STORAGE elsewhere")


def is_read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


FAULTS = {  # what SQLite says, and what it means for the user
    "database or disk is full": "the disk is full",
    "disk I/O error": "a disk I/O error (often a full disk)",
    "attempt to write a readonly database": "the store is read-only",
    "unable to open database file": "the store cannot be opened (its folder is read-only or gone)",
}
FAULT_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied"}


# the errors a store's refusal comes as: the database driver's, and MLflow's, Optuna's and the
# writer process's wrapping of it (each keeps the driver's message)
STORE_ERRORS = {"OperationalError", "MlflowException", "StorageInternalError", "WriteError"}


def store_fault(error: BaseException, folders: tuple[Path, ...] = ()) -> str | None:
    """What a store that stopped taking writes says, in words, when `error`, or the error it was
    raised from, is that: a database error with SQLite's message, or an OSError on a file in one
    of the stores' `folders` (the artifacts). None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in FAULT_ERRNOS and error.filename:
            if any(Path(os.path.abspath(error.filename)).is_relative_to(os.path.abspath(f)) for f in folders):
                return f"{FAULT_ERRNOS[error.errno]} ({error.filename})"
        if STORE_ERRORS & {c.__name__ for c in type(error).__mro__}:
            for message, meaning in FAULTS.items():
                if message in str(error):
                    return f"{meaning} ({message})"
        error = error.__cause__
    return None


def store_folders(*urls: str) -> tuple[Path, ...]:
    """The folders of the local stores among `urls` (their artifacts are under them too)."""
    return tuple(sorted({path.parent for url in urls if (path := local_path(url)) is not None}))


def read_only_url(url: str) -> str:
    """`url`, or for a local store this process cannot write to, the URI that opens it read-only
    (`make compare` and `make ui` read such a store). SQLite's WAL needs its `-shm` file, which
    cannot be made in a read-only folder: with no WAL content (the last writer closed the store
    cleanly) the file is opened as immutable, else read-only with its WAL."""
    path = local_path(url)
    if path is None or not path.exists() or (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        return url
    wal = Path(f"{path}-wal")
    pending = wal.exists() and wal.stat().st_size > 0
    # SQLAlchemy decodes the URL once, SQLite the file URI once more
    uri = urllib.parse.quote(path.resolve().as_uri(), safe=":/")
    return f"sqlite:///{uri}?{'mode=ro' if pending else 'immutable=1'}&uri=true"
