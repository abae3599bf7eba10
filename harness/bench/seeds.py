"""Seed-scan figures for `make bench`: K models trained at once against the looped trainer.

The batched side runs in a fresh process, so its peak resident memory is its own.
"""

import multiprocessing
import queue
import resource
import time

import torch

from harness.core import config, data as data_lib
from harness.trainers.batched import train_batch
from harness.core.runtime import resolve_device
from harness.core.train import train


def batched_in_fresh_process(models: int, iterations: int, device: str, answer) -> None:
    dev = resolve_device(device)
    cfgs = [config.build({"iterations": iterations, "seed": s, "device": device}) for s in range(models)]
    wine = data_lib.load(cfgs[0], dev)
    train_batch(cfgs[:2], wine, dev)  # warm-up: the first kernels pay a one-time start-up
    start = time.perf_counter()
    train_batch(cfgs, wine, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    answer.put((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def timed_batched(models: int, iterations: int, device: str = "cpu") -> tuple[float, float]:
    """Seconds for `models` x `iterations` trained at once, and the process's peak RSS in MiB."""
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    process = context.Process(target=batched_in_fresh_process, args=(models, iterations, device, answer))
    process.start()
    while True:  # the answer, or the process's end without one (its error is printed above)
        try:
            result = answer.get(timeout=1)
            break
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the batched run on {device} failed (exit code {process.exitcode})") from None
    process.join()
    return result


def bench_seeds(quick: bool) -> dict[str, float]:
    models, iterations, sample = (100, 200, 3) if quick else (1000, 1000, 10)
    seconds, peak_mib = timed_batched(models, iterations)
    cfgs = [config.build({"iterations": iterations, "seed": s, "device": "cpu"}) for s in range(sample)]
    wine = data_lib.load(cfgs[0], torch.device("cpu"))
    start = time.perf_counter()
    for cfg in cfgs:
        train(cfg, wine, torch.device("cpu"))
    looped = (time.perf_counter() - start) / sample * models
    print(f"seeds   {models} models x {iterations} iterations at once: {seconds:.1f} s (goal: < 10 s), "
          f"looped one at a time {looped:.0f} s (timed on {sample} models, scaled), "
          f"{looped / seconds:.0f}x faster (goal: >= 50x); peak memory {peak_mib:.0f} MiB (goal: < 2048)")
    figures = {"seeds_s": seconds, "seeds_looped_s": looped, "seeds_peak_mib": peak_mib}
    if torch.cuda.is_available():
        gpu_seconds, _ = timed_batched(100_000, 1000, "cuda")
        print(f"seeds   on {torch.cuda.get_device_name()}: 100000 models x 1000 iterations: {gpu_seconds:.1f} s "
              f"(goal: < 10 s)")
        figures["seeds_cuda_s"] = gpu_seconds
    return figures
