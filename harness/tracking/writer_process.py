"""`WriterProcess`: a run's writes carried out in a child process (`python -m harness.tracking.writer_process`).

The commands (harness/tracking/commands.py) go to the child over a socket pair, in order,
from one thread of this process, which encodes each image on the way. See harness/tracking/writer.py.
"""

import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from multiprocessing.connection import Connection

from harness.signals import interrupts_held
from harness.tracking.commands import DATA, Command, Done, Forget, OpenStore, StepImage, Stop, Writes
from harness.tracking.images import encoded
from harness.tracking.writer import WriteError


def spawn(tracking_uri: str) -> "tuple[subprocess.Popen, Connection]":
    """A writer process for the store, and this end of its socket."""
    ours, theirs = socket.socketpair()
    for end, option in ((ours, socket.SO_SNDBUF), (theirs, socket.SO_RCVBUF)):
        end.setsockopt(socket.SOL_SOCKET, option, 4 << 20)  # a trial's writes without waiting (the OS may cap it)
    with theirs:
        process = subprocess.Popen([sys.executable, "-m", "harness.tracking.writer_process", tracking_uri, str(theirs.fileno())],
                                   pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
    return process, Connection(ours.detach())


_early: "tuple[str, subprocess.Popen, Connection] | None" = None


def start_early(tracking_uri: str) -> None:
    """Start the writer process of a coming `WriterProcess` now: it spends 2-3 s importing MLflow,
    which `harness sweep` lets it do while this process imports torch and opens the study.
    Unused, it exits with this process."""
    global _early
    if _early is None and os.name == "posix" and tracking_uri.startswith("sqlite:///"):
        _early = (tracking_uri, *spawn(tracking_uri))


class WriterProcess:
    """The commands, in a child process (`python -m harness.tracking.writer_process`), started on the first one.

    They go to the child in order from one thread of this process, the sender, which encodes
    each image on the way (16 kB through the socket instead of 150; Pillow lets go of the GIL
    while it encodes): this process hands a run over and trains the next one while the run's
    images are encoded, sent and written. The child ignores Ctrl-C and SIGTERM, which may reach
    the whole process group: this process decides what to do (end the run KILLED, after `drain`). When
    this process dies, the child does what it was handed and exits. POSIX only (it inherits a
    socket); elsewhere the thread is used."""

    metric_batch = 250  # values per log_batch: a run's metrics go over while it trains, not at its end
    max_pending = 64  # metric batches and images handed over but not yet sent: bounds the memory held

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self.process: subprocess.Popen | None = None
        self.link: Connection | None = None
        self.outbox: queue.SimpleQueue | None = None  # commands for the sender, in order; None stops it
        self.sender: threading.Thread | None = None
        self.broken = threading.Event()  # the sender found the child gone
        self.slots: threading.Semaphore | None = None  # free places for DATA commands in the outbox
        self.given = False  # a command other than "open" was handed over to this child
        self.asked: list[str | None] = []  # runs whose "done?" is handed over, in order; the answers come in that order
        self.errors: dict[str | None, str] = {}  # failed writes (and encodes) by run, until that run's drain
        self.unasked: set[str] = set()  # runs with commands handed over since their last "done?"
        self.handed: set[str] = set()  # runs with commands handed over, until their "forget"
        self.lost: set[str] = set()  # runs whose commands went to a child that died

    def _start(self) -> None:
        global _early
        with interrupts_held():  # a child without its sender would take commands that never go
            if _early is not None and _early[0] == self.tracking_uri and _early[1].poll() is None:
                _, self.process, self.link = _early  # started by `start_early`
            else:
                if _early is not None:
                    _early[2].close()
                self.process, self.link = spawn(self.tracking_uri)
            _early = None
            self.outbox, self.broken, self.given = queue.SimpleQueue(), threading.Event(), False
            self.slots = threading.Semaphore(self.max_pending)
            self.sender = threading.Thread(target=send_in_order, daemon=True, name="mlflow-writer-sender",
                                           args=(self.outbox, self.link, self.errors, self.broken, self.slots))
            self.sender.start()

    def _lost_sender(self) -> bool:
        """The child is gone (the sender found it so), or the sender is (or never started)."""
        return self.sender is None or self.broken.is_set() or not self.sender.is_alive()

    def _gone(self) -> WriteError:
        """The child died: what it was given may be lost. The next command starts a new one."""
        code = self.process.poll() if self.process else None
        self._stop_sender(abandon=True)
        if self.link is not None:
            self.link.close()
        self.lost |= self.handed | self.unasked  # their drains raise, whichever run noticed first
        self._forget_child()
        return WriteError(f"the MLflow writer process stopped (exit code {code}); the writes it was given may be lost")

    def _stop_sender(self, abandon: bool = False) -> None:
        """Let the sender send what it holds (or, with `abandon`, drop it) and wait for it to end."""
        if self.sender is None:
            return
        if abandon:
            self.broken.set()
        self.outbox.put(None)
        self.sender.join()
        self.sender = self.outbox = None

    def open_store(self) -> None:
        """Have the child open the store now, once it exists (this process's client made it):
        opening it takes the child about half a second, which the first run's writes would
        otherwise wait for."""
        self.submit(OpenStore())

    def submit(self, command: Command) -> None:
        if self.process is None:
            self._start()
        if self._lost_sender():
            raise self._gone()
        run_id = command.run_id
        self.given = self.given or not isinstance(command, OpenStore)
        if isinstance(command, DATA):  # this process waits while the child is that far behind; Ctrl-C stays possible
            while not self.slots.acquire(timeout=0.2):
                if self._lost_sender():
                    raise self._gone()
        with interrupts_held():  # handed over and counted together
            self.outbox.put(command)
            if isinstance(command, Forget):
                self.handed.discard(run_id)
                self.unasked.discard(run_id)
            elif not isinstance(command, (Done, OpenStore)):
                self.handed.add(run_id)
                self.unasked.add(run_id)

    def hand_over(self, run_id: str) -> None:
        """Ask, without waiting, to be told when the run's writes handed over so far are done:
        this process goes on (with the next run) while they are encoded, sent and written."""
        with interrupts_held():  # a "done?" counted as asked is one that was handed over
            self.submit(Done(run_id))
            self.asked.append(run_id)
            self.unasked.discard(run_id)

    def drain(self, run_id: str | None = None) -> None:
        """Wait until the run's writes (all writes, without a run) are done; raise its error."""
        if run_id in self.lost or (run_id is None and self.lost):
            lost = [run_id] if run_id is not None else list(self.lost)
            self.lost.difference_update(lost)
            raise WriteError(f"the MLflow writer process stopped before it wrote everything of run {lost[0]}")
        if self.process is None:
            return
        if run_id is None or run_id not in self.asked or run_id in self.unasked:
            self.hand_over(run_id)
        try:
            while run_id in self.asked:
                if self._lost_sender():
                    raise OSError("the writer process or its sender is gone")
                if not self.link.poll(0.2):  # Ctrl-C stays possible while the writes go on
                    continue
                with interrupts_held():
                    answered, error = self.link.recv()
                self.asked.remove(answered)
                if error is not None:
                    self.errors.setdefault(answered, error)
        except (OSError, EOFError):
            raise self._gone() from None
        error = self.errors.pop(run_id, None)
        if error is not None:
            raise WriteError(error)

    def close(self) -> None:
        """Stop the child once it has done everything it was given."""
        if self.process is None:
            return
        if not self.broken.is_set():
            self.outbox.put(Stop())
        self._stop_sender()
        if not self.given:  # asked to open the store only: nothing to wait for (it may still be importing)
            self.process.kill()
        self.link.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._forget_child()

    def _forget_child(self) -> None:
        """The child has ended or is gone: drop it and what was asked of it (the next command starts a new one)."""
        self.process = self.link = None
        self.asked, self.errors, self.unasked, self.handed = [], {}, set(), set()


def send_in_order(outbox: queue.SimpleQueue, link: Connection, errors: dict, broken: threading.Event,
                  slots: threading.Semaphore) -> None:
    """The sender: each command to the child in the order handed over, images encoded first. A
    command that cannot be encoded or pickled fails its run (its drain raises) and the rest goes
    on; a child that is gone stops it, and so does anything else that ends this thread."""
    try:
        while (command := outbox.get()) is not None:
            try:
                if broken.is_set():
                    continue  # the child is gone: what is left is dropped
                try:
                    if isinstance(command, StepImage):
                        command = replace(command, image=encoded(command.image))
                    message = pickle.dumps(command, pickle.HIGHEST_PROTOCOL)  # as `link.send` would, before a byte goes
                except Exception as e:
                    errors.setdefault(command.run_id, f"{type(e).__name__}: {e}")
                    continue
                try:
                    link.send_bytes(message)
                except OSError:
                    broken.set()
            finally:
                if isinstance(command, DATA):
                    slots.release()
    except BaseException:
        broken.set()
        raise


def child(tracking_uri: str, fd: int) -> None:
    """The writer process: carry out commands until told to stop or the parent is gone."""
    for stop in (signal.SIGINT, signal.SIGTERM):  # also sent to a whole process group: the parent decides
        signal.signal(stop, signal.SIG_IGN)
    from mlflow import MlflowClient

    from harness.errors import one_line_warnings
    from harness.tracking import mlflow_fast
    from harness.tracking.sqlite import tune_sqlite_connections

    one_line_warnings()
    mlflow_fast.quiet_store_errors()  # its errors go to the parent
    mlflow_fast.preload_store()
    mlflow_fast.fast_paths()  # checked now, while the parent starts: one line where a path does not fit

    tune_sqlite_connections()
    # The store is opened at the first command ("open" as soon as the parent's client has made
    # it), not now: started early (`start_early`), this process would create a new store while
    # the parent does, and one of them would fail.
    writes: Writes | None = None
    link = Connection(fd)
    answering = True  # until the parent stops listening: it may close or die with questions out
    while True:
        try:
            command = link.recv()
        except (EOFError, OSError):  # the parent is gone: what it handed over is done
            break
        if isinstance(command, Stop):
            break
        if writes is None:
            writes = Writes(MlflowClient(tracking_uri))
        if isinstance(command, OpenStore):  # the store is opened: nothing more to do
            continue
        if isinstance(command, Done):  # None: every run's errors
            run_id = command.run_id
            failed = writes.failures(run_id)
            if answering:
                try:
                    link.send((run_id, f"{type(failed[0]).__name__}: {failed[0]}" if failed else None))
                except OSError:
                    answering = False
            continue
        writes.carry_out(command)
    for run_id in list(writes.stages if writes else []):
        writes.run(Forget(run_id))


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]))
    os._exit(0)  # every write is committed; no exit hook (MLflow's telemetry among them) may hold the exit up
