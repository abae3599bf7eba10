"""Parallel sweep workers on one machine: processes that share the study and the MLflow store."""

import multiprocessing
import os
import signal
import sys
from multiprocessing.connection import wait

import optuna

from harness.signals import stop_on_first_interrupt
from harness.study.config import Sweep
from harness.study.trial import Job
from harness.study.worker import prepare_workspace, work
from harness.study.summary import draw_figures, drawing_cost
from harness.signals import interrupts_held

WORK_DONE = "work done"  # a worker's word once its share of the trials is done: it may draw figures
DRAW_TIMEOUT_S = 120  # a worker's share of the summary's figures takes well under a second


def finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())


def worker_main(jobs, jobs_writer, done, sweep: Sweep | None = None) -> None:
    """Entry point of a worker process: make the sweep's workspace while the job is on its way,
    then work until the budget is spent, sending `done` the number of each trial it finishes;
    then draw the summary's figures it is asked for, until it is told to stop or the sweep's
    process is gone."""
    stop_on_first_interrupt()
    jobs_writer.close()  # forked with it: only the sweep's process writes, so its end ends the pipe
    try:
        workspace = prepare_workspace(sweep) if sweep is not None else None
        job = next_request(jobs)
        if job is None:
            return
        work(job, on_trial_done=done.send, workspace=workspace)
        done.send(WORK_DONE)
        while (request := next_request(jobs)) is not None:
            done.send(draw_share(*request))
    except KeyboardInterrupt:
        sys.exit(130)


def next_request(jobs):
    """The next job or drawing request; None to stop, also once the sweep's process is gone."""
    try:
        return jobs.recv()
    except EOFError:
        return None


def draw_share(study_name: str, directions: list, trials: list, names: list[str], folder: str) -> list[str] | None:
    """Draw the figures `names` of a study whose trials were sent over, into `folder`; None if
    they could not be drawn here (the sweep's process draws them instead)."""
    try:
        study = optuna.create_study(study_name=study_name, directions=directions)
        study.add_trials(trials)  # in memory, numbered as in the study
        return draw_figures(study, names, folder)
    except Exception:
        return None


class WorkerPool:
    """Worker processes, started before this process opens any database or thread.

    On Linux they are forked, so they start warm (torch, MLflow and Optuna already imported)
    instead of spending seconds importing them again; elsewhere they are spawned.
    """

    def __init__(self, size: int, sweep: Sweep | None = None):
        """`sweep`: its data and renderer are made in each worker while this process opens the study."""
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.processes, self.links, self.done = [], [], []
        self.idle: list[int] = []  # workers whose share of the trials is done, alive and waiting
        for i in range(size):
            receive, send = context.Pipe(duplex=False)
            done_receive, done_send = context.Pipe(duplex=False)  # trials it finishes, for the progress bar
            process = context.Process(target=worker_main, args=(receive, send, done_send, sweep),
                                      name=f"sweep-worker-{i}")
            process.start()
            done_send.close()  # the worker holds the only writing end: its exit ends the pipe
            self.processes.append(process)
            self.links.append(send)
            self.done.append(done_receive)

    def run(self, jobs: list[Job], study: optuna.Study, progress) -> None:
        """Hand out the jobs and follow the study until every worker is done."""
        open_pipes = list(self.done)
        try:  # woken by a worker's trial or its exit, never by a clock: the summary starts as the last one ends
            for link, job in zip(self.links, jobs):
                with interrupts_held():  # a message cut in the middle would leave the pipe out of step
                    link.send(job)
            start = finished_count(study)
            while open_pipes:
                for pipe in wait(open_pipes):
                    try:
                        message = pipe.recv()
                    except EOFError:  # the worker has exited
                        open_pipes.remove(pipe)
                        continue
                    if message == WORK_DONE:
                        open_pipes.remove(pipe)
                        self.idle.append(self.done.index(pipe))
                    else:
                        progress.update(1)
            ended = [p for i, p in enumerate(self.processes) if i not in self.idle]
            for p in ended:
                p.join()
        except KeyboardInterrupt:
            self.interrupt()
            raise
        progress.n = finished_count(study) - start
        progress.refresh()
        dead = [f"{p.name} (exit code {p.exitcode})" for p in ended if p.exitcode != 0]
        if dead:
            raise RuntimeError(f"sweep workers failed: {', '.join(dead)}; a trial they left running "
                               f"is retried by the next sweep")

    def draw(self, study: optuna.Study, names: list[str], folder: str) -> list[str]:
        """`draw_figures`, shared out between this process and the idle workers, the longest
        first, each to whoever has least to draw so far (this process first). A worker that
        cannot draw its share, or takes over DRAW_TIMEOUT_S, leaves it to this process."""
        costs = {name: drawing_cost(name, study) for name in names}
        shares: list[list[str]] = [[] for _ in range(len(self.idle) + 1)]  # the first one is this process's
        loads = [0] * len(shares)
        for name in sorted(names, key=lambda n: -costs[n]):
            least = loads.index(min(loads))
            shares[least].append(name)
            loads[least] += costs[name]
        trials = study.get_trials(deepcopy=False)
        asked = []
        for worker, share in zip(self.idle, shares[1:]):
            if share:
                try:
                    with interrupts_held():
                        self.links[worker].send((study.study_name, study.directions, trials, share, folder))
                    asked.append((worker, share))
                except OSError:  # it has gone: drawn here
                    shares[0] += share
        skipped = draw_figures(study, shares[0], folder)
        for worker, share in asked:
            drawn = None
            try:
                if self.done[worker].poll(DRAW_TIMEOUT_S):
                    drawn = self.done[worker].recv()
                else:  # stuck: it is stopped, and its share drawn here
                    self.processes[worker].kill()
            except EOFError:
                pass
            skipped += draw_figures(study, share, folder) if drawn is None else drawn
        return skipped

    def interrupt(self) -> None:
        """Ctrl-C or SIGTERM: pass it on to the workers at once (a SIGTERM reached this process
        only; a worker that got the terminal's Ctrl-C ignores the second), and give them time to
        close their runs. Idle workers are told to stop."""
        self.tell_to_stop(self.idle)
        for p in self.processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in self.processes:
            p.join(60)

    def tell_to_stop(self, workers) -> None:
        """Stop the workers (indices) waiting for a job or a figure to draw."""
        for i in workers:
            if self.processes[i].is_alive():
                try:
                    self.links[i].send(None)
                except OSError:  # it has just exited
                    pass

    def cancel(self) -> None:
        self.tell_to_stop(range(len(self.processes)))
        for p in self.processes:
            p.join(60)
        for p in self.processes:
            if p.is_alive():  # stuck: this process must not wait for it as it exits
                p.kill()
                p.join()
