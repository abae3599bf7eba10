"""Where a run's slow writes (metric batches, step images) happen, in order, while training goes on.

A run's logger hands them over as commands (harness/tracking/commands.py). `Writer` carries
them out on a background thread of this process. `WriterProcess` (harness/tracking/writer_process.py)
carries them out in a child process with its own MLflow client: MLflow's writes are Python that
holds the GIL, so on a thread they take turns with the rest of this process, and in a process
they run on another core (a batched sweep on a local store uses it). For both, `drain(run_id)`
waits until the run's commands handed over so far are done and raises the first error one of
them hit; `hand_over(run_id)` asks for that ahead, so that this process goes on meanwhile.
"""

import os
import queue
import threading

from harness.tracking.commands import Command, Writes

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class WriteError(RuntimeError):
    """A write failed in the writer process; its message names the original error."""


class Writer:
    """The commands, on a background thread of this process."""

    metric_batch = 1000  # values per log_batch: MLflow's limit, fewest calls (they hold the GIL)

    def __init__(self, client, max_pending: int = 64):
        self.writes = Writes(client)
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)  # bounds the memory held
        self.thread: threading.Thread | None = None

    def submit(self, command: Command) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, daemon=True, name="mlflow-writer")
            self.thread.start()
        self.queue.put(command)

    def _loop(self) -> None:
        while True:
            command = self.queue.get()
            try:
                self.writes.carry_out(command)  # a failure is kept for drain() to raise in the caller's thread
            finally:
                self.queue.task_done()

    def hand_over(self, run_id: str) -> None:
        """Nothing to do ahead of `drain` here: the thread writes everything in order anyway."""

    def drain(self, run_id: str | None = None) -> None:
        """Wait for every write handed over so far and raise the run's first error (any run's
        without one)."""
        self.queue.join()
        failed = self.writes.failures(run_id)
        if failed:
            raise failed[0]

    def close(self) -> None:
        """Nothing to release: the thread is a daemon that waits for commands."""
