"""Decision-boundary images without a matplotlib figure per image.

Matplotlib draws everything that never changes (axes, ticks, labels, the training points, the
legend) once, into a transparent layer. Each image is then: one batched forward of the grid on
the device, a colour lookup of the predicted classes, one alpha composite of the static layer
over it, and the title drawn with Pillow. That is about 1-2 ms instead of ~120 ms.
"""

from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from harness.data import Plane

REGION_COLORS = np.array([[251, 180, 174], [179, 205, 227], [204, 235, 197]], dtype=np.uint8)
POINT_COLORS = ["#e41a1c", "#377eb8", "#4daf4a"]
DPI = 100
GRID_STRIDE = 2  # pixels per grid point along each axis: a quarter of the forward work


def plane_extent(points: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    low, high = points.min(axis=0), points.max(axis=0)
    pad = (high - low) * margin
    return low[0] - pad[0], high[0] + pad[0], low[1] - pad[1], high[1] + pad[1]


def draw_static_layer(ax, plane: Plane, labels: np.ndarray, class_names, extent) -> None:
    """What every boundary image shares: the training points, labels and legend."""
    for c, name in enumerate(class_names):
        pts = plane.points[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=18, c=POINT_COLORS[c], edgecolors="black", linewidths=0.5, label=name)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel(plane.labels[0])
    ax.set_ylabel(plane.labels[1])
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)


def title_text(step: int, loss: float, accuracy: float) -> str:
    return f"step {step}   loss {loss:.4f}   accuracy {accuracy:.3f}"


class BoundaryRenderer:
    def __init__(self, plane: Plane, labels: np.ndarray, class_names, size: int, device: torch.device):
        self.size = size
        self.extent = plane_extent(plane.points)

        # the static layer, drawn once on a transparent canvas
        fig = Figure(figsize=(size / DPI, size / DPI), dpi=DPI)
        fig.patch.set_alpha(0)
        ax = fig.add_axes((0.16, 0.12, 0.80, 0.79))
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

        # outside the axes nothing ever changes: composite that part once
        white = Image.new("RGBA", self.overlay.size, (255, 255, 255, 255))
        self.static = Image.alpha_composite(white, self.overlay).convert("RGB")
        self.overlay_axes = self.overlay.crop((self.cols[0], self.rows[0], self.cols[1], self.rows[1]))
        self.axes_size = (width, height)
        self.palette = REGION_COLORS.ravel().tolist()
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
        """Predicted class on the grid (one point per GRID_STRIDE pixels), from one batched forward."""
        was_training = model.training
        model.eval()
        classes = model(self.grid).argmax(dim=1).to(torch.uint8).cpu().numpy()
        model.train(was_training)
        return classes.reshape(self.grid_shape)

    def render(self, model: nn.Module, step: int, loss: float, accuracy: float) -> np.ndarray:
        """An RGB uint8 image (size x size x 3)."""
        return self.compose(self.predict_regions(model), title_text(step, loss, accuracy))

    def compose(self, regions: np.ndarray, title: str) -> np.ndarray:
        classes = Image.fromarray(regions)
        classes.putpalette(self.palette)
        axes = classes.resize(self.axes_size, Image.NEAREST).convert("RGBA")
        image = self.static.copy()
        image.paste(Image.alpha_composite(axes, self.overlay_axes).convert("RGB"), (self.cols[0], self.rows[0]))
        draw = ImageDraw.Draw(image)
        draw.text((self.size / 2, self.rows[0] / 2), title, fill=(0, 0, 0), font=self.font, anchor="mm")
        return np.asarray(image)


def render_with_new_figure(regions: np.ndarray, plane: Plane, labels: np.ndarray, class_names,
                           size: int, title: str) -> np.ndarray:
    """The tutorial way, one new figure per image: the reference `make bench` compares against."""
    import matplotlib.pyplot as plt

    extent = plane_extent(plane.points)
    fig = plt.figure(figsize=(size / DPI, size / DPI), dpi=DPI)
    ax = fig.add_axes((0.16, 0.12, 0.80, 0.79))
    ax.imshow(REGION_COLORS[regions], extent=extent, aspect="auto", interpolation="nearest")
    draw_static_layer(ax, plane, labels, class_names, extent)
    ax.set_title(title)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def renderer_for(data, size: int, device: torch.device) -> BoundaryRenderer:
    return BoundaryRenderer(data.plane, data.y_train.cpu().numpy(), data.class_names, size, device)
