"""Checks that decide whether (part of) a series can be read by the model: slices without a head, contrast.

:func:`series_guards` runs once per series inside :meth:`ichd.inference.predictor.Predictor.predict_series`, the
one place every model family (slice CNNs, frozen-encoder bundles, sequence models) goes through:

* **slices without head tissue** (:func:`ichd.preprocessing.head_mask.head_mask` finds none: table only, above the
  vertex, air) are not scored: their probabilities are 0 for every label, they are listed in the result as
  ``skipped_slices`` (reason ``"no_head"``), and the scan probability is computed from the other slices (the
  sequence stage, when there is one, runs on them alone). A series with no head slice at all gets scan P = 0 and
  a ``no_head`` warning.
* **contrast-enhanced / CT-angiography series** (:func:`ichd.preprocessing.contrast.measure_contrast`) get a
  ``contrast_enhanced`` warning and the scan call **not assessable** (``Prediction.not_assessable =
  "contrast_enhanced"``), unless the caller allows contrast (``ichd predict --allow-contrast``). The
  probabilities are kept (the RSNA submission still writes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ichd.types import CTSeries, IngestWarning

#: ``skipped_slices[].reason`` of a slice without head tissue.
NO_HEAD = "no_head"
#: ``Prediction.not_assessable`` of a contrast-enhanced series.
CONTRAST = "contrast_enhanced"


@dataclass
class SeriesGuards:
    """What the checks found on one series."""

    has_head: np.ndarray  # (z,) bool
    crop_box: Any  # ichd.preprocessing.head_mask.CropBox | None (only with PreprocessConfig.crop == "head")
    contrast: Any  # ichd.preprocessing.contrast.ContrastMeasure | None (None: not measured)
    seconds: float = 0.0

    @property
    def skipped(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.has_head)]

    @property
    def contrast_flagged(self) -> bool:
        return self.contrast is not None and bool(self.contrast.flagged)


def pixel_spacing(series: CTSeries) -> tuple[float, float] | None:
    """The in-plane spacing (row, col) in mm, or None when unknown (JPG/PNG input)."""
    from ichd.preprocessing.head_mask import spacing_known

    sp = (float(series.spacing_mm[1]), float(series.spacing_mm[2]))
    return sp if spacing_known(sp) else None


def series_guards(series: CTSeries, *, crop: bool = False, check_contrast: bool = True) -> SeriesGuards:
    """Head masks of every slice (computed once), the crop box when ``crop`` and the contrast measure."""
    import time

    from ichd.preprocessing.contrast import measure_contrast
    from ichd.preprocessing.head_mask import has_head, head_crop_box, head_mask

    t = time.perf_counter()
    spacing = pixel_spacing(series)
    masks = head_mask(series.hu, spacing)
    head = has_head(masks)
    box = head_crop_box(masks) if crop else None
    measure = None
    if check_contrast and head.any():
        measure = measure_contrast(series.hu, spacing, masks)
    return SeriesGuards(has_head=head, crop_box=box, contrast=measure, seconds=time.perf_counter() - t)


def unguarded(series: CTSeries, *, crop: bool = False) -> SeriesGuards:
    """No checks: every slice counts as head, nothing measured (only the crop box when ``crop``: the model's input
    needs it). For measuring what the guards change (``Predictor.predict_series(input_guards=False)``)."""
    from ichd.preprocessing.head_mask import head_crop_box, head_mask

    box = head_crop_box(head_mask(series.hu, pixel_spacing(series))) if crop else None
    return SeriesGuards(has_head=np.ones(series.n_slices, dtype=bool), crop_box=box, contrast=None)


def guard_warnings(guards: SeriesGuards, *, allow_contrast: bool) -> list[IngestWarning]:
    """The warnings the checks add to a result."""
    out: list[IngestWarning] = []
    n = len(guards.has_head)
    skipped = guards.skipped
    if skipped and len(skipped) == n:
        out.append(IngestWarning(
            NO_HEAD, "no slice of the series shows head tissue (air, table or scalp only): nothing was scored, every "
                     "probability is 0 and the scan is negative by construction; check that this is a head CT"))
    elif skipped:
        shown = ", ".join(map(str, skipped[:12])) + (" ..." if len(skipped) > 12 else "")
        out.append(IngestWarning(
            "no_head_slices", f"{len(skipped)} of {n} slices show no head tissue (table or air only, e.g. above the "
                              f"vertex) and were not scored (P = 0; the scan probability comes from the other "
                              f"slices): {shown}"))
    if guards.contrast_flagged:
        msg = guards.contrast.message()
        if allow_contrast:
            msg += "; `ichd predict --allow-contrast` was given: the scan was called as if it were non-contrast"
        out.append(IngestWarning(CONTRAST, msg))
    return out
