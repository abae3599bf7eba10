"""The batched trainer's CPU fast path: harness/trainers/fused_cpu.c, built on first use.

For one hidden layer, a block of 16 models trains from its first step to its last inside one
C call, with its weights in the L1 cache and the models in the lanes of the vector registers.
The blocks are shared out between torch's CPU threads (a ctypes call releases the GIL). Where
boundaries are to be drawn (the batched sweep), the weights of those steps are copied out,
and the boundaries drawn from them once training is done.

The C file is compiled once per machine with its C compiler (`cc`, or `$CC`), with
`-O3 -march=native`, into the user's cache folder. Where no compiler works (or on any other
error while building), `library()` is None and the torch ops train the models instead.
"""

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import threading
from contextlib import suppress
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("fused_cpu.c")
FLAG_SETS = (["-O3", "-march=native", "-fopenmp-simd"], ["-O3", "-fopenmp-simd"], ["-O3"])  # the first that builds
_built: dict[str, ctypes.CDLL | None] = {}
_lock = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wine-init"


def cpu_identity() -> str:
    """What -march=native compiles for: a cache folder shared between machines (a home on a
    network disk) keeps one library per kind of CPU."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        flags = platform.node()
    return f"{platform.machine()} {platform.processor()} {flags}"


def _compile() -> ctypes.CDLL | None:
    source = SOURCE.read_bytes()
    compiler = shlex.split(os.environ.get("CC", "cc"))  # CC="ccache cc" is a command with arguments
    for flags in FLAG_SETS:
        command = [*compiler, *flags, "-std=c11", "-shared", "-fPIC"]
        key = hashlib.sha256(source + " ".join([*command, cpu_identity()]).encode()).hexdigest()[:16]
        path = cache_dir() / f"fused_cpu-{key}.so"
        if not path.exists():
            partial = path.with_name(f"{path.name}.{os.getpid()}.part")  # processes building at once
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run([*command, "-o", str(partial), str(SOURCE)], check=True, capture_output=True, timeout=120)
                os.replace(partial, path)
            except (OSError, subprocess.SubprocessError):
                with suppress(OSError):
                    partial.unlink(missing_ok=True)
                continue
        try:
            library = ctypes.CDLL(str(path))
        except OSError:
            continue
        function = library.train_models
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_int64] * 5 + [ctypes.c_void_p] * 11 + [ctypes.c_int64] + [ctypes.c_void_p] * 2 + \
            [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3 + [ctypes.c_int64] + [ctypes.c_void_p] * 3
        library.grid_classes.restype = None
        library.grid_classes.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_void_p]
        return library
    return None


def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where it cannot be built here."""
    compiler = os.environ.get("CC", "cc")
    with _lock:
        if compiler not in _built:
            _built[compiler] = _compile()
        return _built[compiler]


def train(trained, buffers, lr, momentum, iterations, active, diverged, last_step, history, data,
          snap_steps: list[int] = (), wanted: torch.Tensor | None = None):
    """Train every model from step 0 to its iteration count, in place: `trained` is
    [[W1 | b1], W2, b2] and the rest the state that batched.train_batch keeps (on the CPU).

    `wanted` (len(snap_steps), K) says whose weights to keep at each of `snap_steps`
    (increasing). Returns a function of (snapshot index, model indices) that gives those
    models' weights at that step, laid out as `trained` with K rows (the others zero); only
    the wanted ones are kept, so memory grows with the drawings, not steps x models."""
    lib = library()
    k, hidden, f1 = trained[0].shape
    sizes = [hidden * f1, 3 * hidden, 3]
    snaps = torch.as_tensor(list(snap_steps), dtype=torch.int64)
    wanted = torch.zeros(len(snaps), k, dtype=torch.bool) if wanted is None else wanted
    slots = torch.where(wanted, torch.cumsum(wanted.flatten(), 0).view_as(wanted) - 1, -1).contiguous()
    snapshots = torch.zeros(int(wanted.sum()), sum(sizes))
    assert bool(active.all()), "the kernel starts every model at step 0"
    tensors = [t.contiguous() for t in (*trained, *buffers)]
    x, x_val = data.x_train.contiguous(), data.x_val.contiguous()
    flags = torch.zeros(k, dtype=torch.uint8)
    last = last_step.to(torch.int64).contiguous()
    steps = history.shape[1]
    lanes = lib.lanes()
    blocks = -(-k // lanes)
    workers = max(1, min(torch.get_num_threads(), blocks))
    bounds = [min(k, (blocks * i // workers) * lanes) for i in range(workers + 1)]
    y, y_val = data.y_train.to(torch.int64).contiguous(), data.y_val.to(torch.int64).contiguous()
    lr, momentum, iterations = lr.contiguous(), momentum.contiguous(), iterations.to(torch.int64).contiguous()
    codes = [0] * workers

    def run(i: int) -> None:
        codes[i] = lib.train_models(
            bounds[i], bounds[i + 1], k, hidden, f1 - 1, *(t.data_ptr() for t in tensors),
            lr.data_ptr(), momentum.data_ptr(), iterations.data_ptr(), x.data_ptr(), y.data_ptr(), x.shape[0],
            x_val.data_ptr(), y_val.data_ptr(), x_val.shape[0], steps, history.data_ptr(), last.data_ptr(),
            flags.data_ptr(), len(snaps), snaps.data_ptr(), slots.data_ptr(), snapshots.data_ptr())

    threads = [threading.Thread(target=run, args=(i,), name=f"fused-cpu-{i}") for i in range(1, workers)]
    for thread in threads:
        thread.start()
    run(0)
    for thread in threads:
        thread.join()
    if any(codes):
        raise MemoryError("fused_cpu: out of memory for a block's weights")
    for original, done in zip((*trained, *buffers), tensors):
        if original.data_ptr() != done.data_ptr():
            original.copy_(done)
    last_step.copy_(last)
    diverged |= flags.bool()
    active.zero_()

    def weights_at(index: int, models: torch.Tensor) -> list[torch.Tensor]:
        rows = torch.zeros(k, sum(sizes))
        rows[models] = snapshots[slots[index, models]]
        return [part.reshape(t.shape) for part, t in zip(rows.split(sizes, dim=1), trained)]

    return weights_at


GRID_POINTS = 64  # points per block in grid_classes: its grid's length is a multiple of it


def grid_classes(params: list[torch.Tensor], grid_t: torch.Tensor) -> torch.Tensor | None:
    """stacked.predicted_classes(stacked.forward(params, grid_t)[-1]) (harness/core/stacked.py) for one-hidden-layer
    models on the CPU, (M, points) uint8, in C: 4 ms for 20 models over a boundary image's
    grid against 15 ms with the torch ops (same classes; tests/test_boundary.py). None where
    the library cannot be built."""
    lib = library()
    if lib is None:
        return None
    w1, b1, w2, b2 = params
    m, hidden, features = w1.shape
    w1b1 = torch.cat([w1, b1], dim=2).float().contiguous()
    w2, b2 = w2.float().contiguous(), b2.reshape(m, 3).float().contiguous()
    points = grid_t.shape[1]
    padded = torch.zeros(features, -(-points // GRID_POINTS) * GRID_POINTS)
    padded[:, :points] = grid_t
    out = torch.empty(m, padded.shape[1], dtype=torch.uint8)
    lib.grid_classes(m, hidden, features, w1b1.data_ptr(), w2.data_ptr(), b2.data_ptr(), padded.data_ptr(),
                     padded.shape[1], out.data_ptr())
    return out[:, :points]
