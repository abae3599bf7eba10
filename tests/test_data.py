import numpy as np
import torch

from harness.core import config, data


def test_split_is_stratified_and_reproducible():
    cfg = config.build({})
    x_train, x_val, y_train, y_val, names, _ = data.split(cfg)
    assert names == ["alcohol", "color_intensity"] and x_train.shape[1] == 2
    full = np.bincount(np.concatenate([y_train, y_val])) / (len(y_train) + len(y_val))
    assert np.allclose(np.bincount(y_train) / len(y_train), full, atol=0.02)
    assert np.allclose(np.bincount(y_val) / len(y_val), full, atol=0.03)
    again = data.split(cfg)
    assert np.array_equal(again[0], x_train)
    other = data.split(config.build({"split_seed": 1}))
    assert not np.array_equal(other[0], x_train)


def test_scaler_is_fitted_on_the_training_part_only(cpu):
    d = data.load(config.build({}), cpu)
    train_mean, train_std = d.x_train.mean(0), d.x_train.std(0, unbiased=False)
    assert torch.allclose(train_mean, torch.zeros(2), atol=1e-5)
    assert torch.allclose(train_std, torch.ones(2), atol=1e-4)
    # the validation part went through the training scaler, so its mean is not forced to 0
    assert d.x_val.mean(0).abs().max() > 1e-3


def test_feature_plane_maps_back_to_the_network_inputs(cpu):
    cfg = config.build({})
    d = data.load(cfg, cpu)
    # the plane shows the training points in raw units; mapping them gives the standardized inputs
    assert np.allclose(d.plane.to_inputs(d.plane.points), d.x_train.numpy(), atol=1e-5)
    assert d.plane.labels == ("alcohol (% vol)", "color_intensity")  # units where the feature has one


def test_all_features_use_the_principal_plane(cpu):
    d = data.load(config.build({"features": "all"}), cpu)
    assert d.n_features == 13
    assert d.plane.points.shape == (len(d.y_train), 2)
    assert d.plane.labels[0].startswith("PC1")
    # first PC carries more variance than the second
    assert d.plane.points[:, 0].var() > d.plane.points[:, 1].var()
    assert d.plane.to_inputs(np.zeros((1, 2))).shape == (1, 13)
