"""wine-init: how a small network's convergence depends on its initialization.

The Python API (harness/api.py, docs/api.md): `train`, `seed_scan`, `sweep` and `compare`, what
`python -m harness train | seeds | sweep | compare` run, returning their results."""

from harness.api import compare, seed_scan, sweep, train

__all__ = ["train", "seed_scan", "sweep", "compare"]
