"""A run's data: its dataset's table (harness/core/datasets.py), a stratified split, a scaler
fitted on the training part, tensors on the device.

The network sees standardized features. The boundary is drawn on a 2-D plane: the two chosen
features in their own units, or, with more features ("all" is 13), the first two principal
components of the standardized training data. Either way the plane maps to network inputs by one affine map.
"""

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from harness.core import datasets
from harness.core.config import TrainConfig


@dataclass
class Plane:
    """The 2-D plane the boundary is drawn on; inputs = uv @ weight + bias."""
    weight: np.ndarray
    bias: np.ndarray
    points: np.ndarray
    """training points in plane coordinates"""
    labels: tuple[str, str]

    def to_inputs(self, uv: np.ndarray) -> np.ndarray:
        return (uv @ self.weight + self.bias).astype(np.float32)


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    plane: Plane
    class_names: tuple[str, ...]

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


UNITS = {"alcohol": "% vol", "malic_acid": "g/L", "ash": "g/L", "magnesium": "mg/L", "proline": "mg/L"}
"""the units of the wine features that have one (the dataset's documentation, Forina et al.); the
others are ratios or relative measures (hue, color_intensity, od280/od315_of_diluted_wines) or
indices without a stated unit"""


def axis_label(feature: str) -> str:
    return f"{feature} ({UNITS[feature]})" if feature in UNITS else feature


def split(cfg: TrainConfig):
    """Raw train/val arrays of the chosen features, the feature names and the class names."""
    table = datasets.table(cfg.dataset, cfg.label, cfg.n_samples, cfg.noise, cfg.data_seed)
    names = list(table.feature_names)
    chosen = names if cfg.features == "all" else list(cfg.features)
    x = table.x[:, [names.index(f) for f in chosen]]
    x_train, x_val, y_train, y_val = train_test_split(
        x, table.y, test_size=cfg.val_fraction, random_state=cfg.split_seed, stratify=table.y
    )
    return x_train, x_val, y_train, y_val, chosen, table.class_names


def load(cfg: TrainConfig, device: torch.device) -> Data:
    x_train, x_val, y_train, y_val, names, class_names = split(cfg)
    scaler = StandardScaler().fit(x_train)  # fitted on the training part only
    z_train, z_val = scaler.transform(x_train), scaler.transform(x_val)

    if len(names) != 2:
        pca = PCA(n_components=2).fit(z_train)
        plane = Plane(weight=pca.components_, bias=pca.mean_, points=pca.transform(z_train),
                      labels=("PC1 (standardized features)", "PC2 (standardized features)"))
    else:
        # the plane is the two features in their own units; the network gets them standardized
        plane = Plane(weight=np.diag(1 / scaler.scale_), bias=-scaler.mean_ / scaler.scale_,
                      points=x_train, labels=(axis_label(names[0]), axis_label(names[1])))

    # as in the lecture: tensors built once and moved to the device once
    def tensor(a, dtype):
        return torch.as_tensor(np.asarray(a), dtype=dtype).to(device)

    return Data(
        x_train=tensor(z_train, torch.float32), y_train=tensor(y_train, torch.long),
        x_val=tensor(z_val, torch.float32), y_val=tensor(y_val, torch.long),
        plane=plane, class_names=class_names,
    )
