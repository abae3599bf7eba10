"""What a long command shows while it works: on a terminal, a progress bar or a status line
with the elapsed time, on stderr; in a pipe or a file, nothing (a log stays a log).

`make sweep` counts trials with tqdm, as Optuna does; `make train` counts steps the same way;
`make seeds` and `make compare` say which phase they are in, with a clock, since their longest
phase (a batch trained at once, a report drawn) has no steps to count.
"""

import shutil
import sys
import threading
import time

from tqdm import tqdm

from harness.core.train import Callbacks


def on_terminal() -> bool:
    return sys.stderr.isatty()


def bar(total: int, desc: str, unit: str, shown: bool = True) -> tqdm:
    """A tqdm bar on stderr, off in a pipe (and where not `shown`); gone from the terminal once closed."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not (shown and on_terminal()), leave=False,
                file=sys.stderr, dynamic_ncols=True)


class Status:
    """A line `phase ... 12 s`, redrawn twice a second on a terminal until the block ends; `set`
    changes the phase. Nothing at all in a pipe. What the command prints meanwhile (a note, a
    warning) goes on a line of its own: the status line is blanked first, and redrawn after.

        with Status("training 1000 seeds") as status:
            ...
            status.set("drawing the figures")
    """

    INTERVAL = 0.5

    def __init__(self, phase: str, enabled: bool | None = None):
        self.phase, self.enabled = phase, on_terminal() if enabled is None else enabled
        self.start = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._redraw, daemon=True)
        self.lock = threading.Lock()
        self.drawn = 0  # characters of the status line on the terminal now
        self.streams = (sys.stdout, sys.stderr)

    def set(self, phase: str) -> None:
        self.phase = phase

    def __enter__(self) -> "Status":
        if self.enabled:
            sys.stdout, sys.stderr = (Blanking(stream, self) for stream in self.streams)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stopped.set()
            self.thread.join()
            sys.stdout, sys.stderr = self.streams
            with self.lock:
                self.blank()  # the line is gone; the results follow

    def blank(self) -> None:
        """Under the lock: the status line off the terminal."""
        if self.drawn:
            self.streams[1].write("\r" + " " * self.drawn + "\r")
            self.streams[1].flush()
            self.drawn = 0

    def _redraw(self) -> None:
        while True:
            width = shutil.get_terminal_size().columns - 1  # a wrapped line would not be redrawn in place
            line = f"{self.phase} ... {time.monotonic() - self.start:.0f} s"[:width]
            with self.lock:
                self.streams[1].write("\r" + line.ljust(self.drawn))
                self.streams[1].flush()
                self.drawn = max(self.drawn, len(line))
            if self.stopped.wait(self.INTERVAL):
                return


class Blanking:
    """A stream that blanks the status line before what is written to it."""

    def __init__(self, stream, status: Status):
        self.stream, self.status = stream, status

    def write(self, text: str) -> int:
        with self.status.lock:
            self.status.blank()
            return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Quiet(Status):
    """A Status that shows nothing: for library calls made without one."""

    def __init__(self, phase: str = ""):
        super().__init__(phase, enabled=False)


class StepBar(Callbacks):
    """Training callbacks that move a step bar by one each step."""

    def __init__(self, steps: tqdm):
        self.steps = steps

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        self.steps.update(1)
        return False
