"""The datasets a run can train on, by name, as raw tables (harness/core/data.py splits and scales them).

- `wine` (the lecture's), `iris`, `breast_cancer`: scikit-learn's bundled data;
- `moons`, `circles`, `blobs`: scikit-learn's 2-D generators, with `n_samples`, `noise` and
  their own `data_seed` (`blobs`: three clusters, `noise` their standard deviation);
- `csv:PATH`: a CSV file with a header row, `label` naming the target column and `features`
  the input columns (default: every other column).

Labels become class indices 0..C-1, in the sorted order of their values. Each table is read
once per process. Nothing here imports scikit-learn or pandas until a table is asked for, so a
bad key of the default dataset fails at once.
"""

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BUNDLED = ("wine", "iris", "breast_cancer")
GENERATED = ("moons", "circles", "blobs")
CSV = "csv:"
NAMES = (*BUNDLED, *GENERATED, "csv:PATH")
BLOB_CENTERS = 3

WINE_FEATURES = (
    "alcohol", "malic_acid", "ash", "alcalinity_of_ash", "magnesium", "total_phenols",
    "flavanoids", "nonflavanoid_phenols", "proanthocyanins", "color_intensity", "hue",
    "od280/od315_of_diluted_wines", "proline",
)  # the names sklearn's load_wine().feature_names gives, checked by a test
WINE_SAMPLES = 178


class DatasetError(ValueError):
    """A dataset that cannot be read as asked: (key, message), turned into a ConfigError by the config."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Table:
    x: np.ndarray
    """(samples, columns) float64, every column of `feature_names`"""
    y: np.ndarray
    """(samples,) class indices"""
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]

    @property
    def samples(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Facts:
    """What the config checks against before anything is loaded."""
    samples: int
    feature_names: tuple[str, ...]
    classes: int
    smallest_class: int


WINE = Facts(WINE_SAMPLES, WINE_FEATURES, 3, 48)  # wine's numbers, without importing scikit-learn


def facts(dataset: str, label: str, n_samples: int, noise: float, data_seed: int) -> Facts:
    if dataset == "wine":
        return WINE
    found = table(dataset, label, n_samples, noise, data_seed)
    return Facts(found.samples, found.feature_names, len(found.class_names), int(np.bincount(found.y).min()))


def csv_path(dataset: str) -> str | None:
    """The file of a `csv:PATH` dataset, as given (relative to the working folder), else None."""
    return dataset[len(CSV):] if dataset.startswith(CSV) else None


def table(dataset: str, label: str, n_samples: int, noise: float, data_seed: int) -> Table:
    """The dataset's whole table (the generators' arguments matter only to them, the label only to a CSV)."""
    path = csv_path(dataset)
    if path is not None:
        try:
            stamp = os.stat(path).st_mtime_ns  # a file changed on disk is read again
        except OSError:
            raise DatasetError("dataset", f"dataset: {path!r} is not a readable file") from None
        return _csv(path, label, stamp)
    if dataset in GENERATED:
        return _generated(dataset, n_samples, noise, data_seed)
    return _bundled(dataset)


@lru_cache(maxsize=4)
def _bundled(name: str) -> Table:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    return Table(bunch.data.astype(np.float64), bunch.target.astype(np.int64), tuple(bunch.feature_names),
                 tuple(str(c) for c in bunch.target_names))


@lru_cache(maxsize=8)
def _generated(name: str, n_samples: int, noise: float, data_seed: int) -> Table:
    from sklearn import datasets

    if name == "moons":
        x, y = datasets.make_moons(n_samples, noise=noise, random_state=data_seed)
    elif name == "circles":
        x, y = datasets.make_circles(n_samples, noise=noise, factor=0.5, random_state=data_seed)
    else:
        x, y = datasets.make_blobs(n_samples, n_features=2, centers=BLOB_CENTERS, cluster_std=noise,
                                   random_state=data_seed)
    classes = int(y.max()) + 1
    return Table(x.astype(np.float64), y.astype(np.int64), ("x1", "x2"), tuple(f"class {c}" for c in range(classes)))


@lru_cache(maxsize=4)
def _csv(path: str, label: str, stamp: int) -> Table:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DatasetError("dataset", f"dataset: {path!r} is not a readable CSV file ({type(e).__name__}: {e})") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if label not in columns:
        raise DatasetError("label", f"label: {label!r} is not a column of {path}; its columns: {', '.join(columns)}")
    inputs = [c for c in columns if c != label]
    numeric = [c for c in inputs if pd.api.types.is_numeric_dtype(frame[c])]
    if not numeric:
        raise DatasetError("dataset", f"dataset: {path} has no numeric column besides the label {label!r}")
    frame = frame[[*numeric, label]]
    missing = int(frame.isna().any(axis=1).sum())
    if missing:
        raise DatasetError("dataset", f"dataset: {path} has {missing} row(s) with a missing value; fill or drop them first")
    x = frame[numeric].to_numpy(dtype=np.float64)
    infinite = int((~np.isfinite(x)).any(axis=1).sum())
    if infinite:
        raise DatasetError("dataset", f"dataset: {path} has {infinite} row(s) with an infinite value; fix or drop them first")
    values, y = np.unique(frame[label].to_numpy(), return_inverse=True)
    return Table(x, y.astype(np.int64), tuple(numeric), tuple(str(v) for v in values))
