"""What a long command shows while it works: on a terminal, a progress bar or a status line
with the elapsed time, on stderr; in a pipe or a file, nothing (a log stays a log).

`make sweep` counts trials with tqdm, as Optuna does; `make train` counts steps the same way;
`make seeds` and `make compare` say which phase they are in, with a clock, since their longest
phase (a batch trained at once, a report drawn) has no steps to count.
"""

import sys
import threading
import time

from tqdm import tqdm

from harness.core.train import Callbacks


def on_terminal() -> bool:
    return sys.stderr.isatty()


def bar(total: int, desc: str, unit: str) -> tqdm:
    """A tqdm bar on stderr, off in a pipe; gone from the terminal once closed."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not on_terminal(), leave=False, file=sys.stderr,
                dynamic_ncols=True)


class Status:
    """A line `phase ... 12 s`, redrawn twice a second on a terminal until the block ends; `set`
    changes the phase. Nothing at all in a pipe.

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
        self.width = 0

    def set(self, phase: str) -> None:
        self.phase = phase

    def __enter__(self) -> "Status":
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.stopped.set()
            self.thread.join()
            sys.stderr.write("\r" + " " * self.width + "\r")  # the line is gone; the results follow
            sys.stderr.flush()

    def _redraw(self) -> None:
        while True:
            line = f"{self.phase} ... {time.monotonic() - self.start:.0f} s"
            sys.stderr.write("\r" + line.ljust(self.width))
            sys.stderr.flush()
            self.width = max(self.width, len(line))
            if self.stopped.wait(self.INTERVAL):
                return


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
