"""The background thread that does a run's slow writes (metric batches, images) in order."""

import queue
import threading


class Writer:
    """A background thread that does the slow writes (metric batches, images) in order, so
    training goes on meanwhile. `drain` waits for them and raises the first error they hit."""

    def __init__(self, max_pending: int = 64):
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)  # bounds the memory held
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def submit(self, fn, *args) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, daemon=True, name="mlflow-writer")
            self.thread.start()
        self.queue.put((fn, args))

    def _loop(self) -> None:
        while True:
            fn, args = self.queue.get()
            try:
                if self.error is None:
                    fn(*args)
            except BaseException as e:  # kept for drain() to raise in the caller's thread
                self.error = e
            finally:
                self.queue.task_done()

    def drain(self) -> None:
        self.queue.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
