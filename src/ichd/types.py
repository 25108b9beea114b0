"""Core data types passed between stages. Small, typed, documented; no patient identifiers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ichd.calls import call_dict, reported_calls, scan_call
from ichd.constants import LABELS


@dataclass(frozen=True)
class IngestWarning:
    """Something odd found while reading CT input that did not stop the read.

    ``code`` is a stable machine-readable key (e.g. ``"gantry_tilt"``, ``"gap"``, ``"duplicate_position"``,
    ``"skipped_files"``, ``"instance_number_order"``, ``"bad_intercept_fixed"``); ``message`` is for people;
    ``files`` lists the affected files (paths as given, no patient data), possibly truncated.
    """

    code: str
    message: str
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "files": list(self.files)}


@dataclass
class CTSeries:
    """One CT series as a Hounsfield-unit volume.

    Attributes:
        hu: volume, shape (z, y, x), float32 (or int16) Hounsfield units, slices ordered inferior -> superior
            when positions are known (along the slice normal), else in file/instance order.
        spacing_mm: (z, y, x) spacing in mm; z is the median spacing along the slice normal. ``nan`` when unknown
            (e.g. windowed JPG input).
        positions_mm: per-slice position along the slice normal in mm (length z); ``nan`` when unknown.
        sop_instance_uids: per-slice SOPInstanceUID (or a stable synthetic id like ``"slice-007"`` for images).
        study_instance_uid / series_instance_uid: UIDs of the source (synthetic ones for non-DICOM input).
        tilt_deg: gantry tilt in degrees (0 when none / unknown).
        warnings: things found while reading.
        source: where it came from (path as given), for messages; never a patient identifier.
        source_kind: "dicom", "nifti", "images" or "ctich".
        meta: extra non-identifying facts (modality, transfer syntaxes, manufacturer, window given, ...).
        source_files: per-slice source file (length z), or ``None`` when the slices do not come one per file
            (NIfTI). :func:`ichd.io.read_ct` makes them relative to the path it was given, with ``/`` separators
            (``"IM0001.dcm"``, ``"sub/slice-07.png"``, the member name for a zip; the same file repeats for
            the frames of a multi-frame file); the readers under it give them as they found them. File names
            only, never a patient identifier read from the data.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    positions_mm: np.ndarray
    sop_instance_uids: list[str]
    study_instance_uid: str
    series_instance_uid: str
    tilt_deg: float = 0.0
    warnings: list[IngestWarning] = field(default_factory=list)
    source: str = ""
    source_kind: str = "dicom"
    meta: dict[str, Any] = field(default_factory=dict)
    source_files: list[str] | None = None

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"CTSeries.hu must be 3-D (z, y, x), got shape {self.hu.shape}")
        n = self.hu.shape[0]
        if len(self.sop_instance_uids) != n or len(self.positions_mm) != n:
            raise ValueError(
                f"CTSeries has {n} slices but {len(self.sop_instance_uids)} UIDs and {len(self.positions_mm)} positions"
            )
        if self.source_files is not None and len(self.source_files) != n:
            raise ValueError(f"CTSeries has {n} slices but {len(self.source_files)} source files")

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])

    def warn(self, code: str, message: str, files: tuple[str, ...] = ()) -> None:
        self.warnings.append(IngestWarning(code, message, files))


@dataclass
class Prediction:
    """Result of running a model on one :class:`CTSeries`.

    ``slice_probs`` is (n_slices, 6) and ``scan_probs`` is (6,), both in :data:`ichd.constants.LABELS` order.
    The JSON layout (``ichd.inference`` writes it) is versioned by a JSON Schema shipped in the package.

    ``skipped_slices``: ``{"index", "reason"}`` of slices that were not scored (probabilities 0; reason
    ``"no_head"``); ``not_assessable``: why the scan cannot be called (``"contrast_enhanced"``), else None;
    ``guards``: the measured values behind both (e.g. ``{"contrast": {...}}``), for the result file;
    ``provenance``: whether the input is in the model's training data (``ichd.inference.provenance``).
    ``slabs``: for a thin-slice series read as slabs (``ichd.preprocessing.slabs``), ``[{"index",
    "source_slices", "z_mm"}]`` per slab (each slice's probabilities are its slab's); None otherwise.
    """

    slice_probs: np.ndarray
    scan_probs: np.ndarray
    thresholds: dict[str, float]
    model: dict[str, str]
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: list[str]
    positions_mm: np.ndarray
    warnings: list[IngestWarning] = field(default_factory=list)
    timing_s: dict[str, float] = field(default_factory=dict)
    labels: tuple[str, ...] = LABELS
    skipped_slices: list[dict[str, Any]] = field(default_factory=list)
    not_assessable: str | None = None
    guards: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] | None = None
    slabs: list[dict[str, Any]] | None = None

    @property
    def scan_positive(self) -> dict[str, bool]:
        """Scan-level calls per label (:func:`ichd.calls.call_dict`: ``p >= threshold``, and a subtype only when
        ``any`` is positive)."""
        return call_dict(self.scan_probs, self.thresholds, self.labels)

    @property
    def scan_call(self) -> str:
        """``"positive"``, ``"negative"`` or ``"not_assessable"`` (:func:`ichd.calls.scan_call`)."""
        return scan_call(self.scan_probs, self.thresholds, self.labels, not_assessable=self.not_assessable)

    @property
    def reported_calls(self) -> dict[str, bool | None]:
        """What results report per label: :attr:`scan_positive`, or None for each label of a not-assessable scan."""
        return reported_calls(self.scan_probs, self.thresholds, self.labels, not_assessable=self.not_assessable)
