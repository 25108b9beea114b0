"""Slice images for ``GET /v1/studies/{id}/slices/{i}.png``: one slice in a display window, optionally with the
Grad-CAM map of one class blended on top (:func:`ichd.explain.overlay.overlay`, as in the reports).

The slice is padded to a square with air first, exactly as the model sees it, so the plain image and the overlay
have the same size and the heat map lines up with the anatomy.
"""

from __future__ import annotations

import io

import numpy as np

from ichd.constants import AIR_HU, CTICH_BONE_WINDOW, LABEL_ABBREVIATIONS, LABELS, SEED_WINDOWS
from ichd.errors import InputError, did_you_mean

#: Display windows (level, width) in HU by name.
WINDOWS: dict[str, tuple[float, float]] = {
    "brain": SEED_WINDOWS["brain"],
    "subdural": SEED_WINDOWS["subdural"],
    "soft_tissue": SEED_WINDOWS["soft_tissue"],
    "bone": CTICH_BONE_WINDOW,
}


def parse_window(name: str) -> tuple[float, float]:
    """A window by name (``brain``, ``subdural``, ``soft_tissue``, ``bone``); :class:`InputError` otherwise."""
    key = name.strip().lower()
    if key not in WINDOWS:
        raise InputError(f"unknown window {name!r}; {did_you_mean(key, WINDOWS)}",
                         hint="window=brain|subdural|soft_tissue|bone")
    return WINDOWS[key]


def parse_label(name: str) -> str:
    """A class name (``subdural``) or abbreviation (``SDH``) -> the label; :class:`InputError` otherwise."""
    key = name.strip()
    if key.lower() in LABELS:
        return key.lower()
    by_abbrev = {v.lower(): k for k, v in LABEL_ABBREVIATIONS.items()}
    if key.lower() in by_abbrev:
        return by_abbrev[key.lower()]
    raise InputError(f"unknown overlay class {name!r}; {did_you_mean(key.lower(), LABELS)}",
                     hint="overlay=" + "|".join(LABELS) + " (or EDH, IPH, IVH, SAH, SDH)")


def display_slice(hu: np.ndarray) -> np.ndarray:
    """The slice as shown: float32 HU padded to a square with air (the model's view)."""
    from ichd.preprocessing.resize import pad_to_square

    return pad_to_square(np.asarray(hu, dtype=np.float32), AIR_HU)


def slice_png(hu: np.ndarray, window: tuple[float, float], cam: np.ndarray | None = None,
              labels: np.ndarray | None = None) -> bytes:
    """PNG bytes of one HU slice in ``window``: 8-bit grey, or RGB with ``cam`` (a [0, 1] map) blended on; with
    ``labels`` (the second reader's label map of the slice) its classes are drawn on top in their colours."""
    from PIL import Image

    from ichd.explain.overlay import display_image, overlay

    img = display_slice(hu)
    if labels is not None:
        from ichd.inference.second_reader import draw_labels
        from ichd.preprocessing.resize import pad_to_square

        if cam is None:
            base = np.repeat(np.clip(np.round(display_image(img, window) * 255.0), 0, 255).astype(np.uint8)[..., None],
                             3, axis=2)
        else:
            base = overlay(img, cam, window=window)
        pil = Image.fromarray(draw_labels(base, pad_to_square(np.asarray(labels, dtype=np.uint8), 0)))
    elif cam is None:
        gray = np.clip(np.round(display_image(img, window) * 255.0), 0, 255).astype(np.uint8)
        pil = Image.fromarray(gray)
    else:
        pil = Image.fromarray(overlay(img, cam, window=window))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
