import numpy as np
import pytest
import torch
from torch import nn

from harness.core import config, data as data_lib
from harness.core.runtime import init_generator
from harness.render.boundary import REGION_COLORS, renderer_for, title_text


class SplitByFirstInput(nn.Module):
    """A known model: class 0 where the first standardized input is negative, else class 2."""

    def forward(self, x):
        left = (x[:, 0] < 0).float()
        return torch.stack([left, torch.zeros_like(left), 1 - left], dim=1)


def color_share(image, rows, cols, color):
    patch = image[rows[0]:rows[1], cols[0]:cols[1]].reshape(-1, 3)
    return (patch == color).all(axis=1).mean()


def test_regions_match_a_known_model(cpu):
    cfg = config.build({})
    wine = data_lib.load(cfg, cpu)
    renderer = renderer_for(wine, 320, cpu)
    image = np.asarray(renderer.render(SplitByFirstInput(), 3, 0.5, 0.75).convert("RGB"))
    assert image.shape == (320, 320, 3) and image.dtype == np.uint8

    # the boundary sits where standardized alcohol is 0: at the training mean, in raw units
    mean_alcohol = wine.plane.points[:, 0].mean()
    top, bottom = renderer.rows
    row, boundary_col = renderer.to_pixel(mean_alcohol, wine.plane.points[:, 1].mean())
    left = (renderer.cols[0] + 2, boundary_col - 3)
    right = (boundary_col + 3, renderer.cols[1] - 2)
    # regions fill their side (the training points and the legend cover the rest)
    assert color_share(image, (top, bottom), left, REGION_COLORS[0]) > 0.6
    assert color_share(image, (top, bottom), left, REGION_COLORS[2]) == 0
    assert color_share(image, (top, bottom), right, REGION_COLORS[2]) > 0.6
    assert color_share(image, (top, bottom), right, REGION_COLORS[0]) == 0
    assert color_share(image, (top, bottom), (renderer.cols[0], renderer.cols[1]), REGION_COLORS[1]) == 0


def test_images_differ_only_where_the_model_or_title_differs(cpu):
    wine = data_lib.load(config.build({}), cpu)
    renderer = renderer_for(wine, 256, cpu)
    model = SplitByFirstInput()
    a, b, c = (np.asarray(renderer.render(model, *args)) for args in [(0, 1.0, 0.5), (0, 1.0, 0.5), (10, 0.25, 0.9)])
    assert np.array_equal(a, b)  # nothing leaks from one image into the next
    changed_rows = np.nonzero((a != c).any(axis=1))[0]
    assert changed_rows.max() < renderer.rows[0]  # only the title above the axes changed


def test_all_features_render_on_the_principal_plane(cpu):
    wine = data_lib.load(config.build({"features": "all"}), cpu)
    renderer = renderer_for(wine, 256, cpu)
    net = nn.Sequential(nn.Linear(13, 4), nn.ReLU(), nn.Linear(4, 3))
    regions = renderer.predict_regions(net)
    assert regions.max() <= 2 and renderer.render(net, 0, 1.0, 0.3).size == (256, 256)


def test_title():
    assert title_text(20, 0.123456, 0.5) == "step 20   train loss 0.1235   train accuracy 0.500"


def test_batched_regions_match_each_model_alone(cpu):
    from harness.trainers.batched import stacked_parameters
    from harness.core.model import create
    from harness.core.runtime import init_generator

    cfgs = [config.build({"seed": s, "hidden": [16, 8]}) for s in range(4)]
    wine = data_lib.load(cfgs[0], cpu)
    renderer = renderer_for(wine, 256, cpu)
    params = stacked_parameters(cfgs, 2, 3, cpu)
    regions = renderer.predict_regions_batched(params, torch.tensor([3, 1]))
    for j, k in enumerate([3, 1]):
        model = create(cfgs[k], 2, 3, init_generator(cfgs[k].seed), cpu)
        alone = model(renderer.grid).argmax(dim=1).to(torch.uint8).numpy().reshape(renderer.grid_shape)
        assert np.array_equal(regions[j], alone)  # the model's own forward
        assert np.array_equal(renderer.predict_regions(model), alone)


def test_one_hidden_layer_regions_in_c_are_the_torch_ops_regions(cpu):
    """The C grid forward (harness/trainers/fused_cpu.py) draws what batched.forward would: the same
    class at every grid point, for weights small and large, whatever the init."""
    from harness.trainers import fused_cpu
    from harness.core.stacked import forward, predicted_classes
    from harness.trainers.batched import stacked_parameters

    if fused_cpu.library() is None:
        pytest.skip("no C compiler here: the torch ops draw every boundary")
    wine = data_lib.load(config.build({}), cpu)
    renderer = renderer_for(wine, 384, cpu)
    cfgs = [config.build({"seed": s, "init": init, "hidden": [24]})
            for s in range(4) for init in ("default", "kaiming_normal", "normal")]
    for scale in (1.0, 4.0, 30.0):  # trained weights grow: the regions' edges move and sharpen
        params = [p * scale for p in stacked_parameters(cfgs, 2, 3, cpu)]
        in_c = fused_cpu.grid_classes(params, renderer.grid_t)
        torch_ops = predicted_classes(forward(params, renderer.grid_t)[-1]).to(torch.uint8)
        # a BLAS may sum in another order: a point whose two best logits tie to the last bit
        # may differ; an error in the C forward moves whole stretches of the edges
        assert (in_c != torch_ops).sum() <= in_c.numel() // 10_000
        assert len(torch.unique(torch_ops)) == 3  # every class shows somewhere: the test sees edges


@pytest.mark.parametrize("activation", ["tanh", "gelu", "sigmoid", "leaky_relu"])
def test_every_activation_is_drawn_as_its_own_forward_classifies(activation, cpu):
    from harness.core.model import create

    wine = data_lib.load(config.build({}), cpu)
    renderer = renderer_for(wine, 256, cpu)
    model = create(config.build({"activation": activation, "init": "normal", "init_std": 1.0, "hidden": [16, 8]}),
                   2, 3, init_generator(0), cpu)
    expected = model(renderer.grid).argmax(dim=1).to(torch.uint8).numpy().reshape(renderer.grid_shape)
    assert (renderer.predict_regions(model) != expected).sum() <= expected.size // 10_000  # ties to the last bit
    assert len(np.unique(expected)) > 1


def test_a_model_laid_out_otherwise_is_drawn_by_its_own_forward(cpu):
    from harness.render.boundary import mlp_activation
    from harness.core.model import build_mlp

    assert mlp_activation(build_mlp(2, [32])) == "relu" and mlp_activation(build_mlp(2, [16, 8], 4)) == "relu"
    assert mlp_activation(build_mlp(2, [16, 8], 2, "gelu")) == "gelu"
    for other in (nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 3)), nn.Sequential(nn.Linear(2, 3), nn.ReLU()),
                  nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3, bias=False)),
                  nn.Sequential(nn.Linear(2, 8), nn.LeakyReLU(0.2), nn.Linear(8, 3)),  # not the config's slope
                  nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)), SplitByFirstInput()):
        assert mlp_activation(other) is None
    wine = data_lib.load(config.build({}), cpu)
    renderer = renderer_for(wine, 256, cpu)
    two_linears = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 3))  # no ReLU between them
    expected = two_linears(renderer.grid).argmax(dim=1).to(torch.uint8).numpy().reshape(renderer.grid_shape)
    assert np.array_equal(renderer.predict_regions(two_linears), expected)


def test_more_classes_than_colours_are_drawn_in_colours_taken_again(tmp_path, cpu):
    """Class c is drawn in colour c mod 9: a CSV with 12 classes draws, each class somewhere."""
    from harness.render.boundary import region_colors

    rng = np.random.default_rng(0)
    rows = [f"{x:.4f},{y:.4f},k{int((np.arctan2(y, x) + np.pi) / (2 * np.pi) * 12) % 12}"
            for x, y in rng.uniform(-2, 2, size=(600, 2))]  # 12 wedges round the origin
    path = tmp_path / "wedges.csv"
    path.write_text("x,y,wedge\n" + "\n".join(rows) + "\n")
    cfg = config.build({"dataset": f"csv:{path}", "label": "wedge"})
    data = data_lib.load(cfg, cpu)
    assert data.n_classes == 12
    renderer = renderer_for(data, 256, cpu)
    model = nn.Sequential(nn.Linear(2, 12))  # logit c = (cos, sin) of wedge c's angle . input: 12 wedges
    with torch.no_grad():
        angles = torch.arange(12) * (2 * np.pi / 12)
        model[0].weight.copy_(torch.stack([torch.cos(angles), torch.sin(angles)], dim=1))
        model[0].bias.zero_()
    regions = renderer.predict_regions(model)
    image = np.asarray(renderer.compose(regions, "twelve").convert("RGB"))
    inside = image[renderer.rows[0]:renderer.rows[1], renderer.cols[0]:renderer.cols[1]].reshape(-1, 3)
    shown = {tuple(c) for c in region_colors(12)[np.unique(regions)].tolist()}
    assert len(np.unique(regions)) > 9  # more classes show than there are colours
    assert all((inside == colour).all(axis=1).any() for colour in shown)
