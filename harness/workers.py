"""Parallel sweep workers on one machine: processes that share the study and the MLflow store."""

import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import wait

import optuna

from harness.signals import stop_on_first_interrupt
from harness.sweep import Job, work


def finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())


def worker_main(jobs, done) -> None:
    """Entry point of a worker process: wait for the job, then work until the budget is spent,
    sending `done` the number of each trial it finishes."""
    stop_on_first_interrupt()
    try:
        job = jobs.recv()
        if job is not None:
            work(job, on_trial_done=done.send)
    except KeyboardInterrupt:
        sys.exit(130)


class WorkerPool:
    """Worker processes, started before this process opens any database or thread.

    On Linux they are forked, so they start warm (torch, MLflow and Optuna already imported)
    instead of spending seconds importing them again; elsewhere they are spawned.
    """

    def __init__(self, size: int):
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.processes, self.links, self.done = [], [], []
        for i in range(size):
            receive, send = context.Pipe(duplex=False)
            done_receive, done_send = context.Pipe(duplex=False)  # trials it finishes, for the progress bar
            process = context.Process(target=worker_main, args=(receive, done_send), name=f"sweep-worker-{i}")
            process.start()
            done_send.close()  # the worker holds the only writing end: its exit ends the pipe
            self.processes.append(process)
            self.links.append(send)
            self.done.append(done_receive)

    def run(self, jobs: list[Job], study: optuna.Study, progress) -> None:
        """Hand out the jobs and follow the study until every worker is done."""
        for link, job in zip(self.links, jobs):
            link.send(job)
        start = finished_count(study)
        open_pipes = list(self.done)
        try:  # woken by a worker's trial or its exit, never by a clock: the summary starts as the last one ends
            while open_pipes:
                for pipe in wait(open_pipes):
                    try:
                        pipe.recv()
                        progress.update(1)
                    except EOFError:  # the worker has exited
                        open_pipes.remove(pipe)
            for p in self.processes:
                p.join()
        except KeyboardInterrupt:
            self.interrupt()
            raise
        progress.n = finished_count(study) - start
        progress.refresh()
        dead = [f"{p.name} (exit code {p.exitcode})" for p in self.processes if p.exitcode != 0]
        if dead:
            raise RuntimeError(f"sweep workers failed: {', '.join(dead)}; a trial they left running "
                               f"is retried by the next sweep")

    def interrupt(self) -> None:
        """Ctrl-C: from a terminal the workers got it too; give them time to close their runs,
        then pass it on to any that did not get it."""
        for p in self.processes:
            p.join(10)
        for p in self.processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in self.processes:
            p.join(60)

    def cancel(self) -> None:
        for link, p in zip(self.links, self.processes):
            if p.is_alive():
                try:
                    link.send(None)
                except OSError:  # it has just exited
                    pass
        for p in self.processes:
            p.join(60)
