"""Decision-boundary images without a matplotlib figure per image.

Matplotlib draws everything that never changes (axes, ticks, labels, the training points, the
legend) once, into a transparent layer. Each image is then: one batched forward of the grid on
the device, a colour lookup of the predicted classes, one alpha composite of the static layer
over it, and the title drawn with Pillow. That is about 1-2 ms instead of ~120 ms.
"""

from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from harness.core.config import ACTIVATIONS
from harness.core.data import Plane
from harness.core.model import activation
from harness.core.stacked import forward, predicted_classes

# matplotlib's Pastel1 for the regions and Set1 for the points, class c taking colour c (mod 9)
REGION_COLORS = np.array([[251, 180, 174], [179, 205, 227], [204, 235, 197], [222, 203, 228], [254, 217, 166],
                          [255, 255, 204], [229, 216, 189], [253, 218, 236], [242, 242, 242]], dtype=np.uint8)
POINT_COLORS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf", "#999999"]
DPI = 100
GRID_STRIDE = 2  # pixels per grid point along each axis: a quarter of the forward work
GRID_CHUNK = 8192  # grid points x models per batched forward (see predict_regions_batched)
TITLE_GREYS = 16  # palette entries kept for the antialiased title
AXES = (0.17, 0.2, 0.79, 0.72)  # left, bottom, width, height in the image: the title above, the legend below


def region_colors(classes: int) -> np.ndarray:
    return REGION_COLORS[np.arange(classes) % len(REGION_COLORS)]


def plane_extent(points: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    low, high = points.min(axis=0), points.max(axis=0)
    pad = (high - low) * margin
    return low[0] - pad[0], high[0] + pad[0], low[1] - pad[1], high[1] + pad[1]


def draw_static_layer(ax, plane: Plane, labels: np.ndarray, class_names, extent) -> None:
    """What every boundary image shares: the training points, labels and legend."""
    for c, name in enumerate(class_names):
        pts = plane.points[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=18, c=POINT_COLORS[c % len(POINT_COLORS)], edgecolors="black",
                   linewidths=0.5, label=name)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(plane.labels[0])
    ax.set_ylabel(plane.labels[1])
    # below the axes, in one row: never over a point
    ax.figure.legend(loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(class_names), 5), fontsize=8,
                     frameon=False, handletextpad=0.2, columnspacing=1.2)


def nearest_indices(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """The index of the nearest palette colour for every pixel (exact colours map exactly)."""
    packed = rgb.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
    codes, inverse = np.unique(packed, return_inverse=True)
    colors = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1)
    distance = ((colors[:, None, :] - palette[None].astype(np.int32)) ** 2).sum(axis=2)
    return distance.argmin(axis=1).astype(np.uint8)[inverse.ravel()].reshape(rgb.shape[:2])


@cache
def activation_names() -> dict[tuple[type, str], str]:
    """Each config activation's module class and text (`LeakyReLU(negative_slope=0.01)`), to its name."""
    return {(type(module), repr(module)): name for name in ACTIVATIONS for module in [activation(name)]}


def mlp_activation(model: nn.Module) -> str | None:
    """The activation's config name if `model` is laid out as harness.core.model.build_mlp lays
    it out, which is what stacked.forward computes (harness/core/stacked.py): Linear, then
    (activation, Linear) pairs, every Linear with its bias, one activation as the config names
    it (torch's default arguments). None for any other module."""
    if not isinstance(model, nn.Sequential) or len(model) % 2 == 0:
        return None
    names = set()
    for i, layer in enumerate(model):
        if i % 2 == 0:
            if type(layer) is not nn.Linear or layer.bias is None:
                return None
            continue
        name = activation_names().get((type(layer), repr(layer)))
        if name is None:
            return None
        names.add(name)
    return names.pop() if len(names) == 1 else "relu" if not names else None


def title_text(step: int, loss: float, accuracy: float) -> str:
    return f"step {step}   train loss {loss:.4f}   train accuracy {accuracy:.3f}"


class BoundaryRenderer:
    def __init__(self, plane: Plane, labels: np.ndarray, class_names, size: int, device: torch.device,
                 grid_classes=None):
        self.size = size
        self.grid_classes = grid_classes  # a faster `predict_regions_batched` for one hidden layer, or None
        self.classes = len(class_names)
        self.colors = min(self.classes, len(REGION_COLORS))  # a layer and a palette colour each
        self.extent = plane_extent(plane.points)

        # the static layer, drawn once on a transparent canvas
        fig = Figure(figsize=(size / DPI, size / DPI), dpi=DPI)
        fig.patch.set_alpha(0)
        ax = fig.add_axes(AXES)
        ax.patch.set_alpha(0)
        draw_static_layer(ax, plane, labels, class_names, self.extent)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        self.overlay = Image.fromarray(np.asarray(canvas.buffer_rgba()).copy())
        x0, y0, x1, y1 = ax.get_window_extent().extents
        self.cols = (int(round(x0)), int(round(x1)))
        self.rows = (size - int(round(y1)), size - int(round(y0)))  # image rows run top-down

        # one grid point per GRID_STRIDE x GRID_STRIDE pixels of the axes, mapped to network
        # inputs once and kept on the device; pixels take the class of their block's grid point
        width, height = self.cols[1] - self.cols[0], self.rows[1] - self.rows[0]
        self.grid_shape = (-(-height // GRID_STRIDE), -(-width // GRID_STRIDE))
        u = self.extent[0] + (np.arange(self.grid_shape[1]) * GRID_STRIDE + GRID_STRIDE / 2) / width * (self.extent[1] - self.extent[0])
        v = self.extent[3] - (np.arange(self.grid_shape[0]) * GRID_STRIDE + GRID_STRIDE / 2) / height * (self.extent[3] - self.extent[2])
        uu, vv = np.meshgrid(u, v)
        uv = np.stack([uu.ravel(), vv.ravel()], axis=1)
        self.grid = torch.as_tensor(plane.to_inputs(uv)).to(device)
        self.grid_t = self.grid.T.contiguous()  # features x points, as the batched forward takes inputs

        # Every pixel an image can have is known now: outside the axes the static layer over
        # white; inside, the static layer over one of the three region colours; in the title,
        # a grey level. One palette covers them all, so each image is a few uint8 lookups and
        # an 8-bit PNG, which MLflow encodes several times faster than an RGB one.
        self.axes_size = (width, height)
        layers = [Image.alpha_composite(Image.new("RGBA", self.overlay.size, (*color, 255)), self.overlay).convert("RGB")
                  for color in [(255, 255, 255), *map(tuple, region_colors(self.colors))]]
        mosaic = Image.new("RGB", (size * len(layers), size))
        for i, layer in enumerate(layers):
            mosaic.paste(layer, (i * size, 0))
        exact = [255, 255, 255, *region_colors(self.colors).ravel().tolist()]  # the flat colours stay exact
        n_mixed = 256 - TITLE_GREYS - len(exact) // 3
        mixed = mosaic.quantize(n_mixed, method=Image.Quantize.MEDIANCUT).getpalette()[:3 * n_mixed]
        greys = [round(k * 255 / (TITLE_GREYS - 1)) for k in range(TITLE_GREYS)]
        self.palette = exact + mixed + [g for g in greys for _ in range(3)]
        indexed = [nearest_indices(np.asarray(layer), np.array(self.palette).reshape(-1, 3)) for layer in layers]
        self.static = indexed[0]
        self.regions_by_class = np.stack([ix[self.rows[0]:self.rows[1], self.cols[0]:self.cols[1]] for ix in indexed[1:]])
        # for `compose`: each axes pixel's grid point, and where its pixel of class 0 sits in
        # regions_by_class (class c's is axes-size x c further on): two gathers an image
        pixel = np.arange(width * height)
        row, col = np.divmod(pixel, width)
        self.grid_point_of_pixel = (row // GRID_STRIDE) * self.grid_shape[1] + col // GRID_STRIDE
        self.pixel_index = pixel
        self.title_box = (0, self.rows[0])  # the white band above the axes
        font_path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        self.font = ImageFont.truetype(str(font_path), size=max(12, size // 30))

    def to_pixel(self, u: float, v: float) -> tuple[int, int]:
        """(row, column) of the image pixel showing plane point (u, v)."""
        x_min, x_max, y_min, y_max = self.extent
        (c0, c1), (r0, r1) = self.cols, self.rows
        col = c0 + int((u - x_min) / (x_max - x_min) * (c1 - c0))
        row = r0 + int((y_max - v) / (y_max - y_min) * (r1 - r0))
        return row, col

    @torch.no_grad()
    def predict_regions(self, model: nn.Module) -> np.ndarray:
        """Predicted class on the grid (one point per GRID_STRIDE pixels). An MLP of
        harness.core.model goes the way of a model trained in a batch, so both are drawn alike;
        any other module through its own forward."""
        name = mlp_activation(model)
        if name is not None:
            params = [t for layer in model if isinstance(layer, nn.Linear) for t in (layer.weight[None], layer.bias.view(1, -1, 1))]
            return self.predict_regions_batched(params, torch.zeros(1, dtype=torch.long, device=params[0].device), name)[0]
        was_training = model.training
        model.eval()
        classes = model(self.grid).argmax(dim=1).to(torch.uint8).cpu().numpy()
        model.train(was_training)
        return classes.reshape(self.grid_shape)

    @torch.no_grad()
    def predict_regions_batched(self, params: list[torch.Tensor], models: torch.Tensor,
                                activation_name: str = "relu") -> np.ndarray:
        """Regions of several stacked models (see harness.core.stacked). One hidden layer of ReLU
        and 3 classes on the CPU goes through `grid_classes` where the caller gave one (the C kernel's,
        harness/trainers/fused_cpu.py); otherwise the torch ops, GRID_CHUNK grid points x
        models at a time: the hidden activations of 20 models over the whole grid are 60 MB, a
        chunk's fit in a core's cache (3x faster on a CPU), and one model takes few, large chunks."""
        chosen = [p[models] for p in params]
        if (self.grid_classes and len(chosen) == 4 and chosen[2].shape[1] == 3 and activation_name == "relu"
                and self.grid_t.device.type == "cpu"):
            classes = self.grid_classes(chosen, self.grid_t)
            if classes is not None:
                return classes.numpy().reshape(len(models), *self.grid_shape)
        classes = torch.empty(len(models), self.grid_t.shape[1], dtype=torch.uint8, device=self.grid_t.device)
        chunk = max(1024, GRID_CHUNK // len(models))
        for start in range(0, self.grid_t.shape[1], chunk):
            logits = forward(chosen, self.grid_t[:, start:start + chunk], activation_name)[-1]
            classes[:, start:start + chunk] = predicted_classes(logits)
        return classes.cpu().numpy().reshape(len(models), *self.grid_shape)

    def render_stacked(self, weights: list[list[torch.Tensor]], titles: list[str],
                       activation_name: str = "relu") -> list[Image.Image]:
        """One image per model, from each model's parameters as `forward` takes them (without
        the leading model dimension): the models are stacked into one batched forward."""
        if not weights:
            return []
        params = [torch.stack(layer) for layer in zip(*weights)]
        regions = self.predict_regions_batched(params, torch.arange(len(weights), device=params[0].device), activation_name)
        return [self.compose(r, title) for r, title in zip(regions, titles)]

    def render(self, model: nn.Module, step: int, loss: float, accuracy: float) -> Image.Image:
        """A size x size palette image."""
        return self.compose(self.predict_regions(model), title_text(step, loss, accuracy))

    def compose(self, regions: np.ndarray, title: str) -> Image.Image:
        pixels = self.static.copy()
        width, height = self.axes_size
        at = regions.ravel().take(self.grid_point_of_pixel).astype(np.intp)  # each pixel's class
        if self.colors < self.classes:
            at %= self.colors  # class c in colour c mod 9
        at *= width * height
        at += self.pixel_index
        pixels[self.rows[0]:self.rows[1], self.cols[0]:self.cols[1]] = self.regions_by_class.take(at).reshape(height, width)

        # the title in greys (0 black .. TITLE_GREYS-1 white), antialiased, then mapped to the palette
        band = Image.new("L", (self.size, self.rows[0]), 255)
        ImageDraw.Draw(band).text((self.size / 2, self.rows[0] / 2), title, fill=0, font=self.font, anchor="mm")
        grey = np.asarray(band)
        ink = grey < 255
        pixels[:self.rows[0]][ink] = (256 - TITLE_GREYS) + (grey[ink].astype(np.uint16) * (TITLE_GREYS - 1) // 255).astype(np.uint8)

        image = Image.frombytes("P", (self.size, self.size), pixels.tobytes())
        image.putpalette(self.palette)
        return image


def new_figure(regions: np.ndarray, plane: Plane, labels: np.ndarray, class_names, size: int, title: str):
    """The tutorial way, one new pyplot figure per image: the reference `make bench` compares against."""
    import matplotlib.pyplot as plt

    extent = plane_extent(plane.points)
    fig = plt.figure(figsize=(size / DPI, size / DPI), dpi=DPI)
    ax = fig.add_axes(AXES)
    ax.imshow(region_colors(len(class_names))[regions % len(REGION_COLORS)], extent=extent, aspect="auto", interpolation="nearest")
    draw_static_layer(ax, plane, labels, class_names, extent)
    ax.set_title(title)
    return fig


def render_with_new_figure(regions: np.ndarray, plane: Plane, labels: np.ndarray, class_names,
                           size: int, title: str) -> np.ndarray:
    """`new_figure`, drawn to an RGB array and closed."""
    import matplotlib.pyplot as plt

    fig = new_figure(regions, plane, labels, class_names, size, title)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def renderer_for(data, size: int, device: torch.device, grid_classes=None) -> BoundaryRenderer:
    return BoundaryRenderer(data.plane, data.y_train.cpu().numpy(), data.class_names, size, device, grid_classes)
