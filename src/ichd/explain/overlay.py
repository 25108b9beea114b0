"""Heat-map overlays on the brain window: as an RGB array (for reports, DICOM SC) or a labelled figure (PNG).

The CT slice is shown in the brain window (L40/W80) in grayscale. The Grad-CAM map (values in [0, 1], relative
to its own maximum) is drawn with a perceptually uniform colour map at partial opacity, and only where it is at
least ``min_value`` so that faint, meaningless activation does not tint the whole brain. Figures carry a colour
bar legend (the hidden range is greyed out on it), a title with the class and its probability, and the slice
index. Rendering uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed).

Every overlay is kept to the head: when the slice is given in HU, :func:`overlay` and :func:`draw_overlay` (which
the reports, the DICOM Secondary Captures, the viewer's slice images, ``ichd explain`` and the montages all use)
multiply the map by the slice's head mask (:func:`head_masked_map`, :func:`ichd.preprocessing.head_mask.head_mask`),
so no heat is drawn on air, the table or the head holder.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import numpy as np

from ichd.constants import LABEL_ABBREVIATIONS, SEED_WINDOWS
from ichd.errors import InputError
from ichd.utils.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Display window (level, width) in HU: the seed's brain window.
BRAIN_WINDOW: tuple[float, float] = SEED_WINDOWS["brain"]
#: Perceptually uniform colour map; its dark-blue low end stays visible over grey tissue.
DEFAULT_CMAP = "plasma"
#: Opacity of the heat map where it is shown.
DEFAULT_ALPHA = 0.5
#: Map values below this (relative to the map's maximum) are not drawn.
DEFAULT_MIN_VALUE = 0.2


def display_image(image: np.ndarray, window: tuple[float, float] | None = BRAIN_WINDOW) -> np.ndarray:
    """A 2-D slice as float32 gray in [0, 1].

    With ``window=(level, width)`` the image is taken as Hounsfield units and windowed; with ``window=None`` it
    is already a display image (uint8 0..255, or float in [0, 1]).
    """
    from ichd.preprocessing.windows import apply_window

    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"overlay image must be a 2-D slice, got shape {img.shape}")
    if window is not None:
        return np.asarray(apply_window(img.astype(np.float32), *window), dtype=np.float32)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def resize_map(cam_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a 2-D map to ``shape`` (the original matrix), keeping values in the input's range."""
    from skimage.transform import resize

    cam = np.asarray(cam_map, dtype=np.float32)
    if cam.ndim != 2:
        raise InputError(f"heat map must be 2-D, got shape {cam.shape}")
    if cam.shape == tuple(shape):
        return cam
    out = resize(cam, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)
    return np.clip(np.nan_to_num(out.astype(np.float32)), float(cam.min(initial=0.0)), float(cam.max(initial=0.0)))


def model_map_to_square(cam_map: np.ndarray, shape: tuple[int, int], crop_box=None) -> np.ndarray:
    """A map on the model-input grid (S, S) on the slice's display grid: the ``(H, W)`` slice centre-padded to a
    square of side ``max(H, W)``. Without ``crop_box`` the model saw that whole square (resize); with it (a
    :class:`~ichd.preprocessing.head_mask.CropBox` in slice coordinates) the model saw that box: the map is resized
    to the box and placed there, 0 elsewhere."""
    from ichd.preprocessing.head_mask import box_to_square_grid

    h, w = int(shape[0]), int(shape[1])
    s = max(h, w)
    if crop_box is None:
        return resize_map(cam_map, (s, s))
    box = box_to_square_grid(crop_box, (h, w))
    inner = resize_map(cam_map, (box.side, box.side))
    out = np.zeros((s, s), dtype=np.float32)
    r0, c0 = max(0, box.top), max(0, box.left)
    r1, c1 = min(s, box.top + box.side), min(s, box.left + box.side)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = inner[r0 - box.top:r1 - box.top, c0 - box.left:c1 - box.left]
    return out


def head_masked_map(cam_map: np.ndarray, image_hu: np.ndarray, pixel_spacing=None) -> np.ndarray:
    """The map resized to the HU slice ``image_hu`` and set to 0 outside its head mask
    (:func:`ichd.preprocessing.head_mask.head_mask`; all 0 on a slice without a head). The one place overlays are
    masked."""
    from ichd.preprocessing.head_mask import head_mask

    img = np.asarray(image_hu)
    cam = resize_map(cam_map, img.shape)
    return cam * head_mask(img, pixel_spacing).astype(np.float32)


def _shown_map(image: np.ndarray, cam_map: np.ndarray, shape: tuple[int, int], window, head_only: bool,
               pixel_spacing) -> np.ndarray:
    """The map as drawn: resized to ``shape``; kept to the head when the image is in HU (``window`` given)."""
    if head_only and window is not None:
        return head_masked_map(cam_map, image, pixel_spacing)
    return resize_map(cam_map, shape)


def _heat_rgba(cam: np.ndarray, cmap: str, alpha: float, min_value: float) -> np.ndarray:
    """(H, W, 4) float colours of the map, alpha 0 below ``min_value``."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.clip(cam, 0.0, 1.0))
    rgba[..., 3] = np.where(cam >= min_value, alpha, 0.0)
    return rgba


def overlay(image: np.ndarray, cam_map: np.ndarray, *, window: tuple[float, float] | None = BRAIN_WINDOW,
            cmap: str = DEFAULT_CMAP, alpha: float = DEFAULT_ALPHA,
            min_value: float = DEFAULT_MIN_VALUE, head_only: bool = True,
            pixel_spacing: tuple[float, float] | None = None) -> np.ndarray:
    """Blend a heat map onto a slice: (H, W, 3) uint8 RGB at the image's size.

    Args:
        image: 2-D slice in HU (windowed with ``window``) or a display image (``window=None``).
        cam_map: 2-D map in [0, 1] (any size; resized to the image).
        cmap / alpha / min_value: colour map, opacity, and the value below which nothing is drawn.
        head_only / pixel_spacing: with an HU image, draw the map only inside the head mask
            (:func:`head_masked_map`; ``pixel_spacing`` in mm when known).
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    gray = display_image(image, window)
    cam = _shown_map(image, cam_map, gray.shape, window, head_only, pixel_spacing)
    heat = _heat_rgba(cam, cmap, alpha, min_value)
    a = heat[..., 3:4]
    rgb = (1.0 - a) * gray[..., None] + a * heat[..., :3]
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def draw_overlay(ax: Axes, image: np.ndarray, cam_map: np.ndarray | None, *,
                 window: tuple[float, float] | None = BRAIN_WINDOW, cmap: str = DEFAULT_CMAP,
                 alpha: float = DEFAULT_ALPHA, min_value: float = DEFAULT_MIN_VALUE, head_only: bool = True,
                 pixel_spacing: tuple[float, float] | None = None):
    """Draw the slice (and the map, when given, kept to the head as in :func:`overlay`) on ``ax``; returns the heat
    image artist (or None) for a colour bar."""
    from matplotlib.colors import Normalize

    gray = display_image(image, window)
    ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")
    artist = None
    if cam_map is not None:
        cam = _shown_map(image, cam_map, gray.shape, window, head_only, pixel_spacing)
        shown = np.ma.masked_less(cam, min_value)
        artist = ax.imshow(shown, cmap=cmap, norm=Normalize(0.0, 1.0), alpha=alpha, interpolation="bilinear")
    ax.set_axis_off()
    return artist


def add_colorbar(fig: Figure, axes, *, cmap: str = DEFAULT_CMAP, min_value: float = DEFAULT_MIN_VALUE,
                 label: str = "Grad-CAM (relative to the map's maximum)", map_name: str | None = None):
    """A 0..1 colour bar beside ``axes``; the range below ``min_value`` (not drawn on the image) is greyed out."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap)
    cbar = fig.colorbar(mappable, ax=axes, fraction=0.046, pad=0.02)
    cbar.set_label(f"{map_name} (relative to the map's maximum)" if map_name else label, fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    if min_value > 0:
        cbar.ax.axhspan(0.0, min_value, color="0.85", zorder=3)
        cbar.ax.text(0.5, min_value / 2, "not\nshown", ha="center", va="center", fontsize=6,
                     transform=cbar.ax.get_yaxis_transform(), zorder=4)
    return cbar


def class_title(class_name: str, probability: float | None) -> str:
    """``"Subdural (SDH) p=0.87"``: the class and its probability for titles and labels."""
    abbrev = LABEL_ABBREVIATIONS.get(class_name, class_name.upper())
    name = class_name if class_name != "any" else "any hemorrhage"
    text = f"{name[0].upper()}{name[1:]} ({abbrev})"
    return text if probability is None else f"{text} p={probability:.2f}"


def overlay_figure(image: np.ndarray, cam_map: np.ndarray, *, class_name: str, probability: float | None,
                   slice_index: int | None = None, threshold: float | None = None, subtitle: str | None = None,
                   window: tuple[float, float] | None = BRAIN_WINDOW, cmap: str = DEFAULT_CMAP,
                   alpha: float = DEFAULT_ALPHA, min_value: float = DEFAULT_MIN_VALUE,
                   side_by_side: bool = True, dpi: int = 100,
                   pixel_spacing: tuple[float, float] | None = None, map_name: str = "Grad-CAM") -> Figure:
    """A labelled overlay figure: [plain brain window |] slice + heat map (``map_name``: what the map is, e.g.
    "Grad-CAM" or "Lesion map"), colour bar, title.

    The title gives the class, its probability (and the operating threshold when given) and the slice index
    (0 = most inferior), so a PNG is self-explanatory when opened on its own.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = 2 if side_by_side else 1
    fig = Figure(figsize=(4.2 * ncols + 0.8, 4.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    if side_by_side:
        draw_overlay(axes[0], image, None, window=window)
        axes[0].set_title(_window_caption(window), fontsize=8)
    draw_overlay(axes[-1], image, cam_map, window=window, cmap=cmap, alpha=alpha, min_value=min_value,
                 pixel_spacing=pixel_spacing)
    axes[-1].set_title(f"{map_name}, shown where ≥ {min_value:g}", fontsize=8)
    add_colorbar(fig, list(axes), cmap=cmap, min_value=min_value, map_name=map_name)
    title = class_title(class_name, probability)
    if threshold is not None:
        title += f" (threshold {threshold:.2f})"
    if slice_index is not None:
        title += f" — slice {slice_index}"
    fig.suptitle(title, fontsize=11)
    if subtitle:
        fig.supxlabel(subtitle, fontsize=7, color="0.3")
    return fig


def _window_caption(window: tuple[float, float] | None) -> str:
    if window is None:
        return "slice"
    return f"brain window L{window[0]:g}/W{window[1]:g}"


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int | None = None) -> None:
    """Write ``fig`` as a PNG atomically (complete or absent) and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi or fig.dpi, bbox_inches="tight")
    fig.clear()


def figure_png_bytes(fig: Figure, *, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes (for embedding in HTML reports), then free it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight")
    fig.clear()
    return buf.getvalue()
