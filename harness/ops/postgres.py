"""A PostgreSQL cluster of our own, for `make services` and the tests: Debian's server binaries,
one data directory, one role that owns the databases, reached over TCP with a password.

PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` system user
and its directory belongs to that user; as anyone else it runs as that user.
"""

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ServiceError

ROLE = "wine"
DATABASES = ("optuna", "mlflow")


def server_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian keeps them per version)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")  # other systems put them on the PATH
    return Path(pg_ctl).parent if pg_ctl else None


def ensure_installed() -> Path:
    """The server binaries, installing Debian's `postgresql` package first when we are root."""
    found = server_bin()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceError("PostgreSQL is not installed: install it (Debian/Ubuntu: sudo apt-get install postgresql) "
                           "and run this again")
    print("installing PostgreSQL (apt-get install postgresql)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"env": env, "stdout": subprocess.DEVNULL}
    if subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True, **quiet)  # a fresh machine has no lists yet
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True, **quiet)
    found = server_bin()
    if not found:
        raise ServiceError("apt-get installed postgresql but its server binaries are not under /usr/lib/postgresql")
    return found


def as_owner(command: list[str]) -> list[str]:
    """Run a server command as the cluster's owner: the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def give_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


@dataclass
class Cluster:
    """A cluster in `root` (data/ and postgres.log), listening on `host`:`port`."""
    root: Path
    port: int = 5433
    host: str = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def connect_host(self) -> str:
        """Where clients on this machine reach it."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "*", "") else self.host.split(",")[0].strip()

    def url(self, database: str, password: str | None = None) -> str:
        """A SQLAlchemy URL; without a password, libpq takes it from PGPASSWORD or ~/.pgpass."""
        secret = f":{password}" if password else ""
        return f"postgresql://{ROLE}{secret}@{self.connect_host}:{self.port}/{database}"

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = as_owner([str(ensure_installed() / tool), *args])
        done = subprocess.run(command, capture_output=True, text=True)
        if check and done.returncode != 0:
            tail = "\n".join(self.log.read_text().splitlines()[-5:]) if self.log.exists() else ""
            raise ServiceError(f"{tool} failed: {(done.stderr or done.stdout).strip()}" + (f"\n{tail}" if tail else ""))
        return done

    def init(self, password: str) -> None:
        """A new cluster whose superuser is ROLE with `password`; password logins from any address
        (who can reach it at all is decided by the address it listens on, and the firewall)."""
        self.root.mkdir(parents=True, exist_ok=True)
        give_to_owner(self.root)
        if subprocess.run(as_owner(["test", "-w", str(self.root)])).returncode != 0:
            raise ServiceError(f"the postgres user cannot reach {self.root.resolve()}: a directory above it "
                               f"is closed to other users (chmod o+x it, or choose another place)")
        pwfile = self.root / "initdb-password"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        give_to_owner(pwfile)
        try:
            self._pg("initdb", "-D", str(self.data), "-U", ROLE, f"--pwfile={pwfile}", "-E", "UTF8",
                     "--auth-local=scram-sha-256", "--auth-host=scram-sha-256")
        finally:
            pwfile.unlink()
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write("host all all all scram-sha-256\n")

    def running(self) -> bool:
        return self.data.exists() and self._pg("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def start(self) -> None:
        # no Unix socket: everything goes over TCP, and the path stays within the socket length limit
        options = f"-c listen_addresses='{self.host}' -p {self.port} -c unix_socket_directories=''"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        if self.running():
            self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_databases(self, password: str) -> None:
        import psycopg

        # autocommit: CREATE DATABASE cannot run in a transaction
        connection = psycopg.connect(host=self.connect_host, port=self.port, user=ROLE, password=password,
                                     dbname="postgres", connect_timeout=10, autocommit=True)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT datname FROM pg_database")
                have = {row[0] for row in cursor.fetchall()}
                for name in DATABASES:
                    if name not in have:
                        cursor.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
        finally:
            connection.close()

    def ensure(self, password: str) -> None:
        """Initialized, running, with its databases; what exists is kept."""
        if not (self.data / "PG_VERSION").exists():
            self.init(password)
        if not self.running():
            self.start()
        deadline = time.time() + 30
        while True:  # pg_ctl -w returns once the server accepts connections; a restart may lag
            try:
                self.create_databases(password)
                return
            except Exception as e:
                if time.time() > deadline or "password" in str(e):
                    raise ServiceError(f"PostgreSQL on {self.host}:{self.port} does not accept {ROLE}'s password "
                                       f"or connections: {str(e).strip().splitlines()[0]}") from None
                time.sleep(0.5)
