"""Image measures behind the out-of-domain checks (:mod:`ichd.inference.guards`): how large the imaged body is,
how far the series reaches along z, how noisy its soft tissue is.

All of them work on HU volumes and the head masks of :func:`ichd.preprocessing.head_mask.head_mask` (computed once
per series by the guards). The thresholds and what they do to the scan call are in :mod:`ichd.inference.guards`.

* :func:`body_extent_mm`: per slice, the longer side (mm) of the bounding box of the head mask (HU > -300, holes
  filled, table removed by a 4 mm opening, largest component: on a body CT, the trunk). A head is at most about
  21 cm long (glabella to opisthocranion, with scalp and nose); a chest or abdomen is 30-45 cm wide.
* :func:`z_extent_mm`: how far the series reaches along the slice normal: the distance between the first and last
  slice positions plus one slice spacing (each slice images a slab of that thickness).
* :func:`noise_sd_hu`: the image noise of the brain: on soft-tissue pixels well inside the head (more than
  :data:`NOISE_EDGE_MM` from its outline, measured on a ~2 mm grid) whose 5x5 local mean is between 0 and 80 HU
  (brain and CSF, not bone, air or the skull edge), the standard deviation of each pixel
  minus its 5x5 local mean, estimated robustly (1.4826 x the median absolute deviation, so edges between grey and
  white matter do not count), per slice, then the median over the slices measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ichd.preprocessing.head_mask import pixel_mm

#: Local-mean range (HU) of the pixels the noise is measured on: brain and CSF.
NOISE_TISSUE_HU: tuple[float, float] = (0.0, 80.0)
#: Side (pixels) of the local mean that the noise is measured against.
NOISE_WINDOW = 5
#: Pixels nearer than this to the head outline are left out of the noise measure (mm): scalp, skull.
NOISE_EDGE_MM = 15.0
#: At most this many slices (evenly spaced among those with a head) are measured for noise.
NOISE_MAX_SLICES = 12
#: A slice needs at least this many tissue pixels for a noise value.
NOISE_MIN_PIXELS = 500


def extent_mm(mask: np.ndarray, pixel_spacing: Sequence[float] | None = None) -> float:
    """The longer side (mm) of the bounding box of ``mask`` ``(H, W)``; 0 for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return 0.0
    cols = np.flatnonzero(mask.any(axis=0))
    dy, dx = pixel_mm(mask.shape, pixel_spacing)
    return float(max((rows[-1] - rows[0] + 1) * dy, (cols[-1] - cols[0] + 1) * dx))


def body_extent_mm(masks: np.ndarray, pixel_spacing: Sequence[float] | None = None) -> np.ndarray:
    """Per slice of the head masks ``masks`` ``(z, H, W)``: the longer side (mm) of the outline's bounding box
    (0 without a head). The head mask has a minimum area but no maximum: on a chest or abdomen it is the trunk."""
    return np.array([extent_mm(m, pixel_spacing) for m in masks], dtype=np.float64)


def z_extent_mm(positions_mm: np.ndarray, spacing_z: float) -> float:
    """How far a series reaches along z (mm): last - first position + one spacing; nan when positions are
    unknown; the spacing alone for one slice."""
    pos = np.asarray(positions_mm, dtype=np.float64)
    if not len(pos) or not np.isfinite(pos).all() or not math.isfinite(float(spacing_z)):
        return float("nan")
    return float(pos.max() - pos.min() + abs(float(spacing_z)))


def slice_noise_sd(hu: np.ndarray, mask: np.ndarray, pixel_spacing: Sequence[float] | None = None) -> float:
    """The noise SD (HU) of one slice (see the module doc); nan when it has too few soft-tissue pixels."""
    from scipy.ndimage import uniform_filter

    from ichd.preprocessing.head_mask import bbox_slices, distance_mm, margin_px

    mm = pixel_mm(mask.shape, pixel_spacing)
    box = bbox_slices(mask, margin_px(0.0, mm))
    if box is None:
        return float("nan")
    img = np.asarray(hu[box], dtype=np.float32)
    # "well inside the head" needs no pixel precision: the distance transform runs on a ~2 mm grid
    step = max(1, int(2.0 // min(mm)))
    sub = mask[box][::step, ::step]
    inner_sub = distance_mm(sub, (mm[0] * step, mm[1] * step)) > NOISE_EDGE_MM
    inner = np.repeat(np.repeat(inner_sub, step, axis=0), step, axis=1)[:img.shape[0], :img.shape[1]]
    local = uniform_filter(img, size=NOISE_WINDOW, mode="nearest")
    lo, hi = NOISE_TISSUE_HU
    tissue = inner & (local >= lo) & (local < hi)
    if int(tissue.sum()) < NOISE_MIN_PIXELS:
        return float("nan")
    r = (img - local)[tissue]
    mad = float(np.median(np.abs(r - np.median(r))))
    # a pixel minus the mean of a window that holds it: var = sigma² (1 - 1/k) for k pixels of white noise
    return 1.4826 * mad / math.sqrt(1.0 - 1.0 / NOISE_WINDOW**2)


def noise_sd_hu(hu: np.ndarray, masks: np.ndarray, pixel_spacing: Sequence[float] | None = None) -> float:
    """The series' noise SD (HU): the median of :func:`slice_noise_sd` over up to :data:`NOISE_MAX_SLICES` slices
    with a head (evenly spaced among the half of them with the largest head area: the cranial ones); nan when no
    slice could be measured."""
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    with_head = np.flatnonzero(areas > 0)
    if not len(with_head):
        return float("nan")
    big = with_head[areas[with_head] >= np.median(areas[with_head])]
    pick = big[np.unique(np.linspace(0, len(big) - 1, min(NOISE_MAX_SLICES, len(big))).round().astype(int))]
    values = [slice_noise_sd(hu[i], masks[i], pixel_spacing) for i in pick]
    values = [v for v in values if math.isfinite(v)]
    return float(np.median(values)) if values else float("nan")
