"""Checks that decide whether (part of) a series can be read by the model: slices without a head, contrast, and
inputs out of the model's domain.

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
* **out-of-domain inputs** (measures: :mod:`ichd.preprocessing.domain`), each a named warning; the first four make
  the scan call not assessable (``Prediction.not_assessable`` = the code; ``--allow-contrast`` does not change
  them), the last two are warnings only:

  - :data:`LOCALIZER` (``localizer``): at most :data:`LOCALIZER_MAX_SLICES` slices whose body outline is longer
    than :data:`MAX_HEAD_EXTENT_MM`: a localizer/scout (a projection image with the neck and shoulders), or one
    image of the body. DICOM localizers tagged as such (ImageType LOCALIZER, SeriesDescription SCOUT) never get
    here: the reader skips them (``skipped_non_image``), and an input with nothing else exits with code 2.
  - :data:`NOT_HEAD` (``not_head``): a longer series whose body outline is, on the median slice with tissue,
    longer than :data:`MAX_HEAD_EXTENT_MM` (a head is at most about 21 cm long; chest, abdomen and pelvis are
    30-45 cm wide).
  - :data:`NON_AXIAL` (``non_axial``): the slices are not axial acquisitions: a NIfTI volume stored in another
    plane (its slice axis is not inferior-superior; the reader reorients it, so the model sees reformats), or
    in-plane pixels more than :data:`MAX_PIXEL_ASPECT` times longer one way than the other (a reformat from thick
    slices). Non-axial DICOM images (sagittal, coronal reformats, ImageOrientationPatient more than 45° from
    axial) are skipped by the reader (``not_axial``; nothing else: exit 2); a gantry tilt up to 45° is read and
    gets the reader's ``gantry_tilt`` warning only (:mod:`ichd.io.geometry`).
  - :data:`EXTREME_NOISE` (``extreme_noise``): the noise SD of the brain (:func:`~ichd.preprocessing.domain.
    noise_sd_hu`, on the slices the model sees) above :data:`MAX_NOISE_SD_HU`: small bleeds drown in it and
    noise texture reads as blood.
  - :data:`SHORT_COVERAGE` (``short_coverage``, warning only): a series of 2 or more slices reaching less than
    :data:`MIN_Z_COVERAGE_MM` along z (a whole head is 15-20 cm): a positive call stands, a negative one says
    nothing about the parts not imaged. Single slices get the ``single_slice`` warning instead.
  - :data:`BODY_PART` (``body_part``, warning only): DICOM BodyPartExamined present and naming no part of the head
    (:data:`HEAD_BODY_PARTS`); the tag is free text and often wrong, so the image decides the call.
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
#: ``Prediction.not_assessable`` of a localizer/scout image (or a single image of the body).
LOCALIZER = "localizer"
#: ``Prediction.not_assessable`` of a series that images no head (body CT).
NOT_HEAD = "not_head"
#: ``Prediction.not_assessable`` of non-axial (reformatted) slices.
NON_AXIAL = "non_axial"
#: ``Prediction.not_assessable`` of a series too noisy to read.
EXTREME_NOISE = "extreme_noise"
#: Warning (call unchanged) of a series that covers only part of a head.
SHORT_COVERAGE = "short_coverage"
#: Warning (call unchanged) of a DICOM BodyPartExamined that names no part of the head.
BODY_PART = "body_part"
#: The not-assessable reasons, the first found wins (``not_assessable_reason``; every one found is a warning).
NOT_ASSESSABLE_ORDER: tuple[str, ...] = (LOCALIZER, NOT_HEAD, NON_AXIAL, EXTREME_NOISE, CONTRAST)

#: Longest body outline (mm, bounding-box side) of a head; longer: localizer or body.
MAX_HEAD_EXTENT_MM = 280.0
#: Series of at most this many slices with an outline longer than a head are localizers (longer ones: not_head).
LOCALIZER_MAX_SLICES = 3
#: Largest ratio between the two in-plane pixel sizes of axial slices (larger: a reformat).
MAX_PIXEL_ASPECT = 2.0
#: Largest noise SD (HU) of the brain that is still read.
MAX_NOISE_SD_HU = 30.0
#: Smallest z coverage (mm) of a whole head CT; less: ``short_coverage`` warning.
MIN_Z_COVERAGE_MM = 100.0
#: BodyPartExamined values (upper case, substrings) that name the head.
HEAD_BODY_PARTS: tuple[str, ...] = ("HEAD", "BRAIN", "SKULL", "CRAN", "CEREB", "NEURO", "KOPF", "SCHAEDEL",
                                    "SCHÄDEL", "TETE", "TÊTE", "CABEZA", "CRANIO", "ORBIT", "SINUS", "FACE",
                                    "NECK", "TEMPORAL", "PETROUS", "IAC")


@dataclass(frozen=True)
class DomainMeasure:
    """The out-of-domain measures of one series (:mod:`ichd.preprocessing.domain`) and the codes they raise."""

    extent_mm: float  # median over slices with tissue of the outline's longer side; nan when none
    max_extent_mm: float
    z_coverage_mm: float  # nan when positions are unknown
    noise_sd_hu: float  # nan when not measured
    body_part: str | None
    acquisition_plane: str  # "axial", "sagittal", "coronal", "oblique" or "unknown"
    pixel_aspect: float
    flags: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        def num(v: float, nd: int = 1) -> float | None:
            return round(float(v), nd) if np.isfinite(v) else None

        return {"extent_mm": num(self.extent_mm), "max_extent_mm": num(self.max_extent_mm),
                "z_coverage_mm": num(self.z_coverage_mm), "noise_sd_hu": num(self.noise_sd_hu, 2),
                "body_part": self.body_part, "acquisition_plane": self.acquisition_plane,
                "pixel_aspect": num(self.pixel_aspect, 3), "flags": list(self.flags),
                "limits": {"max_head_extent_mm": MAX_HEAD_EXTENT_MM, "max_noise_sd_hu": MAX_NOISE_SD_HU,
                           "min_z_coverage_mm": MIN_Z_COVERAGE_MM, "max_pixel_aspect": MAX_PIXEL_ASPECT}}


@dataclass
class SeriesGuards:
    """What the checks found on one series."""

    has_head: np.ndarray  # (z,) bool
    crop_box: Any  # ichd.preprocessing.head_mask.CropBox | None (only with PreprocessConfig.crop == "head")
    contrast: Any  # ichd.preprocessing.contrast.ContrastMeasure | None (None: not measured)
    seconds: float = 0.0
    domain: DomainMeasure | None = None  # None: not measured (input_guards=False)

    @property
    def skipped(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.has_head)]

    @property
    def contrast_flagged(self) -> bool:
        return self.contrast is not None and bool(self.contrast.flagged)

    def not_assessable(self, *, allow_contrast: bool) -> str | None:
        """The reason the scan call is not assessable (:data:`NOT_ASSESSABLE_ORDER`), or None."""
        found = set(self.domain.flags if self.domain is not None else ())
        if self.contrast_flagged and not allow_contrast:
            found.add(CONTRAST)
        return next((code for code in NOT_ASSESSABLE_ORDER if code in found), None)


def pixel_spacing(series: CTSeries) -> tuple[float, float] | None:
    """The in-plane spacing (row, col) in mm, or None when unknown (JPG/PNG input)."""
    from ichd.preprocessing.head_mask import spacing_known

    sp = (float(series.spacing_mm[1]), float(series.spacing_mm[2]))
    return sp if spacing_known(sp) else None


def acquisition_plane(series: CTSeries) -> str:
    """The plane the slices were acquired in, as far as the input says: a NIfTI's stored slice axis
    (``meta["original_axcodes"]``), a DICOM series' ImageOrientationPatient (the reader keeps axial ones only);
    "unknown" for image folders."""
    codes = series.meta.get("original_axcodes")
    if isinstance(codes, str) and len(codes) == 3:
        return {"S": "axial", "I": "axial", "L": "sagittal", "R": "sagittal", "A": "coronal",
                "P": "coronal"}.get(codes[2].upper(), "unknown")
    orientation = series.meta.get("image_orientation")
    if orientation:
        from ichd.io.geometry import is_axial, oblique_angle_deg

        if not is_axial(orientation):
            return "oblique"
        return "axial" if oblique_angle_deg(orientation) < 45.0 else "oblique"
    return "unknown"


def measure_domain(series: CTSeries, masks: np.ndarray, *, noise_hu: np.ndarray | None = None,
                   noise_masks: np.ndarray | None = None) -> DomainMeasure:
    """The out-of-domain measures of ``series`` with its head masks, and the codes they raise (see the module
    doc). The noise is measured on ``noise_hu`` / ``noise_masks`` when given (the slabs the model sees)."""
    from ichd.preprocessing.domain import body_extent_mm, noise_sd_hu, z_extent_mm

    spacing = pixel_spacing(series)
    n = series.n_slices
    flags: list[str] = []
    extent = max_extent = float("nan")
    if spacing is not None:
        ext = body_extent_mm(masks, spacing)
        tissue = ext[ext > 0]
        if len(tissue):
            extent, max_extent = float(np.median(tissue)), float(tissue.max())
            if extent > MAX_HEAD_EXTENT_MM:
                flags.append(LOCALIZER if n <= LOCALIZER_MAX_SLICES else NOT_HEAD)
    plane = acquisition_plane(series)
    aspect = float("nan")
    if spacing is not None:
        aspect = max(spacing) / min(spacing)
    if plane in ("sagittal", "coronal", "oblique") or (np.isfinite(aspect) and aspect > MAX_PIXEL_ASPECT):
        flags.append(NON_AXIAL)
    noise = noise_sd_hu(series.hu if noise_hu is None else noise_hu, masks if noise_masks is None else noise_masks,
                        spacing)
    if np.isfinite(noise) and noise > MAX_NOISE_SD_HU:
        flags.append(EXTREME_NOISE)
    z_cov = z_extent_mm(series.positions_mm, float(series.spacing_mm[0])) if n > 1 else float("nan")
    if n > 1 and np.isfinite(z_cov) and z_cov < MIN_Z_COVERAGE_MM:
        flags.append(SHORT_COVERAGE)
    body_part = series.meta.get("body_part") or None
    if body_part and not any(k in str(body_part).upper() for k in HEAD_BODY_PARTS):
        flags.append(BODY_PART)
    return DomainMeasure(extent_mm=extent, max_extent_mm=max_extent, z_coverage_mm=z_cov, noise_sd_hu=noise,
                         body_part=str(body_part) if body_part else None, acquisition_plane=plane,
                         pixel_aspect=aspect, flags=tuple(flags))


def series_guards(series: CTSeries, *, crop: bool = False, check_contrast: bool = True,
                  masks: np.ndarray | None = None, slabs: Any = None) -> SeriesGuards:
    """Head masks of every slice (computed once, or given as ``masks``), the crop box when ``crop``, the contrast
    measure and the out-of-domain measures. ``slabs`` (:class:`ichd.preprocessing.slabs.Slabs`): the series is
    read as these slabs, so the noise is measured on them (head mask of a slab: the union of its slices')."""
    import time

    from ichd.preprocessing.contrast import measure_contrast
    from ichd.preprocessing.head_mask import has_head, head_crop_box, head_mask

    t = time.perf_counter()
    spacing = pixel_spacing(series)
    if masks is None:
        masks = head_mask(series.hu, spacing)
    head = has_head(masks)
    box = head_crop_box(masks) if crop else None
    measure = None
    if check_contrast and head.any():
        measure = measure_contrast(series.hu, spacing, masks)
    if slabs is not None:
        domain = measure_domain(series, masks, noise_hu=slabs.hu,
                                noise_masks=np.logical_or.reduceat(masks, slabs.starts, axis=0))
    else:
        domain = measure_domain(series, masks)
    return SeriesGuards(has_head=head, crop_box=box, contrast=measure, seconds=time.perf_counter() - t,
                        domain=domain)


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
    if guards.domain is not None:
        out.extend(IngestWarning(code, domain_message(code, guards.domain)) for code in guards.domain.flags)
    return out


def slab_warning(slabs: Any, n_slices: int) -> IngestWarning:
    """The ``thin_slices_as_slabs`` note of a series read as slabs (:mod:`ichd.preprocessing.slabs`)."""
    return IngestWarning(
        "thin_slices_as_slabs",
        f"{n_slices} slices {slabs.source_spacing_mm:.3g} mm apart were read as {slabs.n_slabs} slabs of about "
        f"{slabs.thickness_mm:.1f} mm (the mean HU of consecutive slices; the model was trained on 5 mm slices): "
        f"every slice reports its slab's probabilities (listed in 'slabs'); `ichd predict --no-slabs` scores the "
        f"thin slices one by one")


def not_assessable_text(pred: Any) -> str:
    """Why ``pred`` (a :class:`~ichd.types.Prediction`) is not assessable, for reports: the message of the warning
    whose code is its ``not_assessable`` reason (every reason has one), else the reason code."""
    reason = pred.not_assessable or ""
    return next((w.message for w in pred.warnings if w.code == reason), reason.replace("_", " "))


def domain_message(code: str, m: DomainMeasure) -> str:
    """The warning text of an out-of-domain code (see the module doc)."""
    na = "; the scan call is 'not assessable'"
    if code == LOCALIZER:
        return (f"the image is {m.max_extent_mm:.0f} mm long, more than any head ({MAX_HEAD_EXTENT_MM:g} mm): a "
                f"localizer/scout or an image of the body, not an axial head CT slice{na}")
    if code == NOT_HEAD:
        return (f"the body on the slices is {m.extent_mm:.0f} mm long (median slice), more than any head "
                f"({MAX_HEAD_EXTENT_MM:g} mm): this does not look like a head CT (body CT?){na}")
    if code == NON_AXIAL:
        why = (f"acquired {m.acquisition_plane} (the reader reoriented it: the model sees reformats)"
               if m.acquisition_plane in ("sagittal", "coronal", "oblique")
               else f"in-plane pixels {m.pixel_aspect:.1f} times longer one way than the other (a reformat)")
        return f"the slices are not axial acquisitions: {why}; the model is for axial head CT{na}"
    if code == EXTREME_NOISE:
        return (f"the image noise of the brain is {m.noise_sd_hu:.0f} HU (standard deviation; head CT: under "
                f"{MAX_NOISE_SD_HU:g} HU): small bleeds cannot be seen and noise can look like blood{na}")
    if code == SHORT_COVERAGE:
        return (f"the series covers {m.z_coverage_mm:.0f} mm along z, less than a whole head "
                f"({MIN_Z_COVERAGE_MM:g} mm or more): a positive call stands, a negative one says nothing about "
                f"the parts of the head not imaged")
    if code == BODY_PART:
        return (f"BodyPartExamined is {m.body_part!r}, not a part of the head; the tag is free text and often wrong, "
                f"so only the image checks decide the call (check the input)")
    raise ValueError(f"unknown out-of-domain code {code!r}")
