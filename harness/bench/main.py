"""`make bench`: each figure is timed against a reference run in the same process.

Ratios, not absolute times, are the goals; the absolute times say which machine this was.
"""

import importlib
import os
import platform
import time
from pathlib import Path

import torch

from harness.core import config, data as data_lib
from harness.core.config import ConfigError
from harness.render.boundary import render_with_new_figure, renderer_for, title_text
from harness.core.model import create
from harness.core.runtime import seed_everything
from harness.core.train import train


def per_call(fn, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_render(quick: bool) -> dict[str, float]:
    """One boundary image (forward of the grid included) against a new figure per image."""
    cfg = config.build({"device": "cpu"})
    device = torch.device("cpu")
    wine = data_lib.load(cfg, device)
    from harness.trainers.fused_cpu import grid_classes  # as a sweep on the CPU draws (experiment.Workspace)
    renderer = renderer_for(wine, cfg.image_size, device, grid_classes)
    model = create(cfg, wine.n_features, wine.n_classes, seed_everything(0), device)
    labels = wine.y_train.numpy()

    ours = per_call(lambda: renderer.render(model, 10, 0.5, 0.8), 20 if quick else 200)
    reference = per_call(lambda: render_with_new_figure(renderer.predict_regions(model), wine.plane, labels,
                                                     wine.class_names, cfg.image_size, title_text(10, 0.5, 0.8)),
                      3 if quick else 20)
    print(f"render  {cfg.image_size}x{cfg.image_size} px: {ours * 1e3:.2f} ms/image, "
          f"figure-per-image reference {reference * 1e3:.1f} ms/image, "
          f"{reference / ours:.0f}x faster (goal: <= 5 ms)")
    return {"render_ms": ours * 1e3, "render_reference_ms": reference * 1e3}


# name -> (module, function), imported when it runs: the seed scan and the renderer need
# neither MLflow nor Optuna, so they also run on a machine without them (a GPU box, say)
BENCHES = {"render": ("harness.bench.main", "bench_render"), "seeds": ("harness.bench.seeds", "bench_seeds"),
           "calls": ("harness.bench.sweep", "bench_calls"), "sweep": ("harness.bench.sweep", "bench_sweep"),
           "workers": ("harness.bench.sweep", "bench_workers"),
           "fast_paths": ("harness.bench.fast_paths", "bench_fast_paths")}


VECTOR_FLAGS = ("avx512f", "avx512_bf16", "avx2", "fma", "avx", "sse4_2", "asimd", "sve", "neon")


def cpu_description() -> str:
    """The CPU's model and the vector extensions the kernels can use: every figure is from them."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    model = info.get("model name") or info.get("Hardware") or info.get("CPU part") or platform.processor() or "unknown"
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return f"{model} ({' '.join(f for f in VECTOR_FLAGS if f in flags) or 'no vector extensions listed'})"


def main(args) -> int:
    print(f"machine: {platform.machine()}, cpu: {cpu_description()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, python {platform.python_version()}")
    # torch's first forward and backward pay a one-time start-up: pay it before any clock runs
    cfg = config.build({"device": "cpu", "iterations": 3})
    train(cfg, data_lib.load(cfg, torch.device("cpu")), torch.device("cpu"))
    unknown = [name for name in args.only or () if name not in BENCHES]
    if unknown:
        raise ConfigError(f"--only: {unknown[0]!r} is not one of {', '.join(BENCHES)}")
    for name in args.only or BENCHES:
        module, function = BENCHES[name]
        getattr(importlib.import_module(module), function)(args.quick)
    return 0
