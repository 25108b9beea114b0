"""Is a CT series contrast-enhanced (or a CT angiography)? A measure taken from the image alone.

Non-contrast head CT is the indication of every ICH detector: iodinated contrast makes the vessels, the dural
sinuses and enhancing tissue as bright as (or brighter than) blood, and a model trained on non-contrast scans reads
them as hemorrhage. The DICOM header cannot be trusted to say so (``ContrastBolusAgent`` is often removed by
anonymisation), so the check looks at the pixels.

The measure (:func:`measure_contrast`), per series:

* the **brain region** of each slice: inside the head mask (:func:`ichd.preprocessing.head_mask.head_mask`),
  the pixels of brain/CSF density (:data:`BRAIN_HU`), opened by :data:`BRIDGE_MM` to cut thin links to the
  scalp; its largest part(s) (the skull separates brain from scalp), **holes filled** (vessels, calcifications
  and ventricles inside the brain come back, whatever their HU), minus every pixel within :data:`BONE_MARGIN_MM`
  of bone (HU >= :data:`BONE_HU`). The skull and its diploe, whose HU pass through the enhanced range, are
  outside the brain, not holes in it;
* only **cranial slices**: those whose head area is at least :data:`CRANIAL_AREA_FRACTION` of the series' largest
  (the skull base, face and neck, with much bone and air, are left out);
* per cranial slice, the **enhanced area** (mm²): brain-region pixels of :data:`ENHANCED_HU` ``[lo, hi)``
  (110–200 HU) in connected structures of >= 100 HU that hold no pixel of :data:`DENSE_HU` (200 HU) or more.
  Fresh blood is 50–90 HU (clot up to ~100), grey/white matter 20–45 HU; iodine in the veins, dural sinuses and
  choroid plexus brings them to 110–250 HU. Calcifications (pineal, choroid plexus, falx), bone fragments and
  catheters of a non-contrast scan mostly have a dense core (>= 200 HU) and are left out with their rim.
* the **enhanced slice fraction**: the share of cranial slices with at least :data:`ENHANCED_AREA_MM2` of it.
  Contrast reaches every slice (the straight and sagittal sinuses and the cortical veins run through the whole
  head); a non-contrast scan has such spots on some slices only.

A series is flagged when the enhanced slice fraction reaches :data:`ENHANCED_SLICE_FRACTION_THRESHOLD` and at least
:data:`MIN_CRANIAL_SLICES` slices were measured (single slices are never flagged: one slice with a calcification
would be 100 %). The threshold was chosen on the shared data (every non-contrast scan below it, the contrast scan
CQ500-CT-0 above it;
``benchmarks/contrast_calibration.py`` writes the measured values to ``benchmarks/results/contrast/``). With a single
contrast scan to calibrate on, the margin is what that script measures, no more; an arterial-phase CT angiography,
whose vessels reach 300–500 HU, was not available to test (its vessel rims still count when the cores are under
:data:`DENSE_HU`, but that is not measured). The share of brain pixels in 130–700 HU and the 99.5th HU percentile
are reported too, for people reading the values, but not used for the decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichd.preprocessing.head_mask import pixel_mm

#: HU range counted as enhanced (iodine) tissue: [lo, hi).
ENHANCED_HU: tuple[float, float] = (110.0, 200.0)
#: Bright structures (>= 100 HU) with a pixel at or above this are calcifications, bone or devices, not iodine.
DENSE_HU = 200.0
#: A cranial slice counts as enhanced with at least this much enhanced area (mm²).
ENHANCED_AREA_MM2 = 2.0
#: HU range of the descriptive "bright fraction" (not used for the decision).
BRIGHT_HU: tuple[float, float] = (130.0, 700.0)
#: HU from which a pixel is bone.
BONE_HU = 700.0
#: Pixels nearer than this to bone are left out (mm).
BONE_MARGIN_MM = 4.0
#: HU range of brain tissue and CSF (without iodine): [lo, hi).
BRAIN_HU: tuple[float, float] = (-15.0, 100.0)
#: Links narrower than about twice this (mm) between brain and scalp are cut before the brain is picked.
BRIDGE_MM = 2.0
#: Brain parts smaller than this fraction of the largest part are dropped (orbits, scalp).
MIN_PART_FRACTION = 0.25
#: Slices whose head area is at least this fraction of the series' largest are measured.
CRANIAL_AREA_FRACTION = 0.6
#: A series is contrast-enhanced when at least this share of its cranial slices is enhanced.
ENHANCED_SLICE_FRACTION_THRESHOLD = 0.6
#: Fewer cranial slices than this: the measure is reported but never flags (one slice says too little).
MIN_CRANIAL_SLICES = 3
#: Warning code of a flagged series.
WARNING_CODE = "contrast_enhanced"


@dataclass(frozen=True)
class ContrastMeasure:
    """The measured values of one series and the decision."""

    enhanced_slice_fraction: float
    median_enhanced_mm2: float
    bright_fraction: float
    p995_hu: float
    n_slices_measured: int
    flagged: bool
    threshold: float = ENHANCED_SLICE_FRACTION_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return {"enhanced_slice_fraction": round(float(self.enhanced_slice_fraction), 4),
                "median_enhanced_mm2": round(float(self.median_enhanced_mm2), 2),
                "bright_fraction": round(float(self.bright_fraction), 6),
                "p995_hu": None if not np.isfinite(self.p995_hu) else round(float(self.p995_hu), 1),
                "n_slices_measured": int(self.n_slices_measured), "flagged": bool(self.flagged),
                "threshold": float(self.threshold)}

    def message(self) -> str:
        """The warning text of a flagged series."""
        lo, hi = ENHANCED_HU
        return (f"the series looks contrast-enhanced (or a CT angiography): {100 * self.enhanced_slice_fraction:.0f} % "
                f"of its cranial slices show {lo:g}-{hi:g} HU vessels or sinuses inside the skull (non-contrast "
                f"scans: < {100 * self.threshold:g} %); the model is for non-contrast head CT, where iodine looks "
                f"like blood, so the scan call is 'not assessable' (ichd predict --allow-contrast calls it anyway)")


def brain_region(hu: np.ndarray, mask: np.ndarray, pixel_spacing: Sequence[float] | None = None) -> np.ndarray:
    """The brain region of one slice (see the module doc): a boolean ``(H, W)`` array."""
    from ichd.preprocessing.head_mask import components, distance_mm, fill_holes

    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    mm = pixel_mm(mask.shape, pixel_spacing)
    lo, hi = BRAIN_HU
    tissue = mask & (hu >= lo) & (hu < hi)
    # opening by BRIDGE_MM: cuts the thin links between brain and scalp through foramina and partial-volume gaps
    core = distance_mm(tissue, mm) > BRIDGE_MM
    if not core.any():
        return core
    lab, _ = components(core)  # 8-connected
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = sizes >= MIN_PART_FRACTION * sizes.max()
    keep[0] = False
    brain = distance_mm(~keep[lab], mm) <= BRIDGE_MM
    brain = fill_holes(brain & mask)  # vessels, calcifications and ventricles inside the brain
    bone = hu >= BONE_HU
    if bone.any():
        brain &= distance_mm(~bone, mm) > BONE_MARGIN_MM
    return brain


def enhanced_pixels(hu: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` in :data:`ENHANCED_HU` whose bright structure (>= 100 HU, 8-connected) holds no pixel
    of :data:`DENSE_HU` or more (see the module doc)."""
    from scipy.ndimage import binary_dilation

    from ichd.preprocessing.head_mask import components

    bright = region & (hu >= 100.0)
    if not bright.any():
        return bright
    lab, _ = components(bright)  # 8-connected
    dense = binary_dilation(hu >= DENSE_HU) & bright
    bad = np.unique(lab[dense])
    keep = bright & ~np.isin(lab, bad[bad > 0])
    lo, hi = ENHANCED_HU
    return keep & (hu >= lo) & (hu < hi)


def measure_contrast(hu: np.ndarray, pixel_spacing: Sequence[float] | None = None,
                     masks: np.ndarray | None = None, *,
                     threshold: float = ENHANCED_SLICE_FRACTION_THRESHOLD) -> ContrastMeasure:
    """The contrast measure of a series ``hu`` ``(z, H, W)``; ``masks`` are its head masks (computed when None)."""
    from ichd.preprocessing.head_mask import bbox_slices, head_mask, margin_px

    hu = np.asarray(hu)
    if hu.ndim == 2:
        hu = hu[None]
    if masks is None:
        masks = head_mask(hu, pixel_spacing)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    if areas.max(initial=0) == 0:
        return ContrastMeasure(0.0, 0.0, 0.0, float("nan"), 0, False, threshold)
    cranial = np.flatnonzero(areas >= CRANIAL_AREA_FRACTION * areas.max())
    mm = pixel_mm(masks.shape[1:], pixel_spacing)
    px_mm2 = mm[0] * mm[1]
    blo, bhi = BRIGHT_HU
    n = bright = 0
    enhanced_mm2: list[float] = []
    values: list[np.ndarray] = []
    # each slice is measured on its head's bounding box plus a margin wider than every distance used (bone margin,
    # bridge): the same values as on the whole slice, at a fraction of the distance-transform cost
    margin = margin_px(max(BONE_MARGIN_MM, BRIDGE_MM), mm)
    for i in cranial:
        box = bbox_slices(masks[i], margin)
        assert box is not None  # cranial slices have a head
        s = np.asarray(hu[i][box], dtype=np.float32)
        region = brain_region(s, masks[i][box], mm)
        v = s[region]
        n += v.size
        bright += int(((v >= blo) & (v < bhi)).sum())
        values.append(v[::4])
        enhanced_mm2.append(float(enhanced_pixels(s, region).sum()) * px_mm2)
    e = np.asarray(enhanced_mm2)
    frac = float((e >= ENHANCED_AREA_MM2).mean()) if len(e) else 0.0
    v_all = np.concatenate(values) if values else np.zeros(0)
    p995 = float(np.percentile(v_all, 99.5)) if v_all.size else float("nan")
    flagged = bool(frac >= threshold and len(cranial) >= MIN_CRANIAL_SLICES)
    return ContrastMeasure(frac, float(np.median(e)) if len(e) else 0.0, bright / n if n else 0.0, p995,
                           len(cranial), flagged, threshold)
