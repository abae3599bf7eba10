"""What each fenced fast path buys on a whole `make sweep`: the default study
(experiments/sweep.toml, 20 trials), run with every fast path on and with each one off in turn
(`WINE_INIT_PUBLIC_API`, which the writer process inherits), in alternate rounds, medians.

A fast path is kept only where it buys at least 10% of the sweep's time (BENCHMARKS.md).
"""

import os
from statistics import median

from harness.bench.sweep import timed_sweep
from harness.study import optuna_fast
from harness.tracking import mlflow_fast

PATHS = [*mlflow_fast.PATHS.checks, *optuna_fast.PATHS.checks]


def timed_make_sweep(trials: int, off: str) -> float:
    """`make sweep` in fresh stores with the fast paths in `off` turned off: seconds."""
    saved = os.environ.get("WINE_INIT_PUBLIC_API")
    os.environ["WINE_INIT_PUBLIC_API"] = off
    for fence in (mlflow_fast, optuna_fast):
        fence.reset()
    try:
        return timed_sweep(trials, workers=1, sweep_file="experiments/sweep.toml")
    finally:
        os.environ.pop("WINE_INIT_PUBLIC_API") if saved is None else os.environ.__setitem__("WINE_INIT_PUBLIC_API", saved)
        for fence in (mlflow_fast, optuna_fast):
            fence.reset()


def bench_fast_paths(quick: bool) -> dict[str, float]:
    trials, rounds = (3, 1) if quick else (20, 5)
    variants = {"every fast path": "", **{f"without {path}": path for path in PATHS}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, off in variants.items():
            times[name].append(timed_make_sweep(trials, off))
    reference = median(times["every fast path"])
    print(f"paths   make sweep ({trials} trials), median of {rounds} alternate rounds: every fast path "
          f"{reference:.2f} s (" + ", ".join(f"{t:.2f}" for t in times["every fast path"]) + ")")
    figures = {"fast_paths_sweep_s": reference}
    for path in PATHS:
        without = median(times[f"without {path}"])
        buys = 1 - reference / without
        print(f"paths   without {path}: {without:.2f} s (" + ", ".join(f"{t:.2f}" for t in times[f"without {path}"])
              + f"); it buys {buys:.0%} of the sweep's time (kept where >= 10%)")
        figures[f"without_{path}_s"] = without
    return figures
