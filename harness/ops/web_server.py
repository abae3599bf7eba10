"""What `make ui` and `make dashboard` share: a web server run as a child in its own process
group, on a loopback port, until Ctrl-C.

A Ctrl-C in the terminal reaches only us, and we stop the child's whole group (servers start
worker processes of their own), so nothing is left listening after we exit. Neither server has
a login, so both listen on 127.0.0.1 unless the user insists.
"""

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from harness.core.config import ConfigError
from harness.ops.services import answers, port_taken, stop_group
from harness.signals import interrupt_once

LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT = 120.0  # seconds; a first start of the MLflow UI creates the database tables
STOP_TIMEOUT = 15.0


def check_host(host: str, allow_remote: bool, what: str) -> None:
    """Anyone who reaches the port can read and delete runs (or studies): there is no login."""
    if host not in LOOPBACK and not allow_remote:
        raise ConfigError(f"host: '{host}' is not a loopback address; {what} has no login, so it listens on "
                          f"127.0.0.1 only (--allow-remote binds it anyway)")


def base_url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass
class WebServer:
    """One server to run until Ctrl-C, and what to tell the user once it answers."""
    title: str
    """what the user is shown ("MLflow UI"): `<title> on <url> over <store>; Ctrl-C stops it`"""
    program: str
    """what runs, in errors ("the MLflow server")"""
    target: str
    """the make target, for the hint to try another port (`make <target> PORT=N`)"""
    command: list[str]
    env: dict[str, str]
    over: str
    """the store it serves, as shown to the user"""
    health: str
    """a path that answers 200 once the server is up"""
    links: Callable[[str, object], list[str]]
    """the lines printed once it answers, from its base URL and what `look_up` found"""
    look_up: Callable[[str], object] = field(default=lambda url: None)
    """work done while the server starts (from its base URL), for `links`"""
    stop_signal: int = signal.SIGTERM
    """what stops the group at once (SIGKILL follows after STOP_TIMEOUT)"""
    dropped: tuple[str, ...] = ()
    """the starts of lines on the server's stderr not to show: notices it prints with no switch to turn them off"""


def wait_until_up(server: WebServer, process: subprocess.Popen, url: str, port: int,
                  timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{server.program} exited with code {process.returncode} before it answered "
                               f"(is the port taken? try another: make {server.target} PORT={port + 1})")
        if answers(url, path=server.health):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{server.program} did not answer on {url} within {timeout:.0f} s")


def stop(server: WebServer, process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """Signal the server's process group, SIGKILL what lingers. The whole group, not only its
    leader: the leader can exit before a worker process it started has closed the port."""
    stop_group(process.pid, timeout, server.stop_signal)
    process.poll()


def pass_on(stream, dropped: tuple[str, ...]) -> None:
    """The server's stderr to ours, line by line, less the lines that start with `dropped`."""
    for line in iter(stream.readline, b""):
        text = line.decode(errors="replace")
        if not text.startswith(dropped):
            sys.stderr.write(text)
            sys.stderr.flush()


def serve(server: WebServer, host: str, port: int) -> int:
    """Run `server` until Ctrl-C (or SIGTERM); print where to look. Returns the exit code."""
    url = base_url(host, port)
    if port_taken(host, port):  # else another server would answer in its place, and we would say it is ours
        print(f"error: port {port} on {host} is taken by another process; try another: "
              f"make {server.target} PORT={port + 1}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, interrupt_once)  # `kill` stops it as cleanly as Ctrl-C
    process = subprocess.Popen(server.command, env=server.env, process_group=0,
                               stderr=subprocess.PIPE if server.dropped else None)
    if server.dropped:
        threading.Thread(target=pass_on, args=(process.stderr, server.dropped), daemon=True).start()
    try:
        found = server.look_up(url)  # while the server starts
        wait_until_up(server, process, url, port)
        print(f"{server.title} on {url} over {server.over}; Ctrl-C stops it", flush=True)
        for line in server.links(url, found):
            print(line, flush=True)
        process.wait()
        print(f"{server.program} exited with code {process.returncode}", file=sys.stderr)
        return process.returncode or 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopping the {server.title}", flush=True)
        return 0
    finally:
        stop(server, process)
