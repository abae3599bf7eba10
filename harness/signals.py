"""Ctrl-C handling shared by the command line and the worker processes."""

import signal


def interrupt_once(signum, frame) -> None:
    """SIGINT handler: the first Ctrl-C stops the work; later ones are ignored, so the cleanup
    that closes runs and fails trials is not itself cut short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def stop_on_first_interrupt() -> None:
    """Install `interrupt_once`, also where the parent shell ignored SIGINT (a background job)."""
    signal.signal(signal.SIGINT, interrupt_once)
