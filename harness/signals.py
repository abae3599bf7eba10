"""Ctrl-C and SIGTERM handling shared by the command line and the worker processes, and output
that survives the pipe it goes to closing."""

import errno
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop signal arrived: Ctrl-C (SIGINT) or `kill` (SIGTERM, what a scheduler or
    `docker stop` sends). A KeyboardInterrupt, so every path that ends runs KILLED on Ctrl-C
    does the same for both; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)  # picklable: args rebuild it
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return interrupt.exit_code if isinstance(interrupt, Stopped) else 128 + signal.SIGINT


def interrupt_once(signum, frame) -> None:
    """Stop-signal handler: the first Ctrl-C or SIGTERM stops the work; later ones are ignored,
    so the cleanup that closes runs and fails trials is not itself cut short."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Stopped(signum)


def stop_on_first_interrupt() -> None:
    """Install `interrupt_once` for SIGINT and SIGTERM, also where the parent shell ignored
    SIGINT (a background job), and `redeliver_lost_stops`."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, interrupt_once)
    if not getattr(sys.unraisablehook, "redelivers_stops", False):
        sys.unraisablehook = redeliver_lost_stops(sys.unraisablehook)


def redeliver_lost_stops(previous):
    """An unraisable-exception hook for a stop that Python dropped: a signal that arrives while a
    finalizer runs (a `__del__`, a weakref callback: SQLAlchemy has them) has its Stopped raised
    there, where Python prints "Exception ignored" and goes on; with the stop signals ignored from
    then on, the sweep would run to its end and exit 0. The hook arms the handlers again and sends
    the signal once more from another thread, so that it arrives after the finalizer."""
    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, Stopped):
            previous(unraisable)
            return
        signum = unraisable.exc_value.signum
        for sig in STOP_SIGNALS:
            signal.signal(sig, interrupt_once)  # the hook runs where the handler did: the main thread
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()

    hook.redelivers_stops = True
    return hook


class SurvivesClosedPipe:
    """A text stream whose reader may go away: `make sweep | tee log` and Ctrl-C stops tee too.
    The first write to the closed pipe sends this and every later write to /dev/null instead of
    raising BrokenPipeError out of whatever was printing (a progress bar, the cleanup that ends
    the runs KILLED)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as e:
            self._closed(e)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as e:
            self._closed(e)

    def _closed(self, error: OSError) -> None:
        if error.errno not in (errno.EPIPE, errno.EINVAL):
            raise error
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())  # what is still buffered goes nowhere, quietly
        except (OSError, ValueError):
            pass
        finally:
            os.close(devnull)
        self.stream = open(os.devnull, "w")

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) waits until the body is done: a message to or from another process
    whole (cut in the middle, the pipe would be out of step and the next read would wait
    forever), a trial asked for with its first heartbeat. The signal's handler then runs as it
    would have (ours raises Stopped; the default one ends the process)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread gets Python's signal handlers
        return
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append((signum, frame))) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signum, frame = caught[0]
            if callable(previous[signum]):
                previous[signum](signum, frame)
            elif previous[signum] == signal.SIG_DFL:
                signal.raise_signal(signum)


def survive_closed_pipes() -> None:
    """Wrap stdout and stderr in `SurvivesClosedPipe` (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, SurvivesClosedPipe):
            setattr(sys, name, SurvivesClosedPipe(stream))
