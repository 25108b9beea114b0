"""Slice geometry: order slices along the slice normal, find duplicates, gaps, uneven spacing and tilt.

Ordering rule: each slice's ``ImagePositionPatient`` is projected on the slice normal
``n = row × column`` of ``ImageOrientationPatient``, with ``n`` flipped so that it points to the patient's head
(+z in DICOM patient coordinates); ascending projection is inferior -> superior. This works with gantry tilt,
where the positions move along z but the slices are perpendicular to the tilted normal. When any slice lacks a
position or orientation the slices are ordered by ``InstanceNumber`` (with a warning), and when that is missing
too, by file name (with a warning). Tilted series are reported, never resampled.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ichd.types import IngestWarning

#: Two slices closer than this along the normal are duplicates (mm).
DUPLICATE_TOL_MM: float = 0.01
#: A step larger than this multiple of the median spacing is a gap.
GAP_FACTOR: float = 1.5
#: Steps that differ from the median by more than this fraction (and are not gaps) make the spacing uneven.
UNEVEN_FRACTION: float = 0.1
#: Tilts below this (degrees) are rounding noise, not tilt.
TILT_MIN_DEG: float = 0.5
#: How many file names a warning lists at most.
MAX_FILES_LISTED: int = 20


@dataclass(frozen=True)
class SliceGeometry:
    """Geometry tags of one slice; ``name`` is the file (and frame) for messages.

    ``preference`` breaks ties between duplicates: lower is kept (the DICOM reader gives lossy copies 1).
    """

    name: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    instance_number: int | None
    preference: int = 0


@dataclass
class Ordering:
    """Result of :func:`order_slices`.

    ``order`` indexes the input slices, inferior -> superior, after dropping duplicates; ``positions_mm`` is the
    position of each ordered slice along the normal (``nan`` when unknown); ``duplicates`` maps each dropped input
    index to the index kept in its place; ``gaps`` lists ``(k, step_mm)`` for a gap between ordered slices k and k+1.
    """

    order: list[int]
    positions_mm: np.ndarray
    method: str
    spacing_mm: float
    duplicates: dict[int, int] = field(default_factory=dict)
    gaps: list[tuple[int, float]] = field(default_factory=list)
    uneven: bool = False
    warnings: list[IngestWarning] = field(default_factory=list)


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of an ``ImageOrientationPatient`` (row × column), pointing to +z (superior) when not in-plane."""
    o = np.asarray(orientation, dtype=np.float64).reshape(2, 3)
    n = np.cross(o[0], o[1])
    norm = float(np.linalg.norm(n))
    if norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient {list(orientation)} has parallel row and column vectors")
    n /= norm
    if n[2] < 0 or (n[2] == 0 and n[np.argmax(np.abs(n))] < 0):
        n = -n
    return n


def is_axial(orientation: Sequence[float]) -> bool:
    """True when the slice normal is closer to the z axis than to x or y (tilted axial slices included)."""
    n = np.abs(slice_normal(orientation))
    return bool(n[2] >= n[0] and n[2] >= n[1])


def oblique_angle_deg(orientation: Sequence[float]) -> float:
    """Angle between the slice normal and the z axis in degrees (gantry tilt for axial CT), 0 for plain axial."""
    n = slice_normal(orientation)
    return float(np.degrees(np.arccos(np.clip(abs(n[2]), 0.0, 1.0))))


def _listed(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(names[:MAX_FILES_LISTED])


def _majority_orientation(slices: Sequence[SliceGeometry]) -> tuple[float, ...]:
    """The exact orientation of the first slice whose (rounded) orientation is the most common one."""
    def key(o: Sequence[float]) -> tuple[float, ...]:
        return tuple(round(v, 4) for v in o)

    counts = Counter(key(s.orientation) for s in slices if s.orientation is not None)
    best = counts.most_common(1)[0][0]
    return next(tuple(s.orientation) for s in slices if s.orientation is not None and key(s.orientation) == best)


def order_slices(slices: Sequence[SliceGeometry]) -> Ordering:
    """Order slices inferior -> superior and report duplicates, gaps, uneven spacing (see module docstring)."""
    n = len(slices)
    if n == 0:
        raise ValueError("order_slices needs at least one slice")
    have_geometry = all(s.position is not None and s.orientation is not None for s in slices)
    warnings: list[IngestWarning] = []
    if not have_geometry:
        return _order_without_positions(slices)

    orientation = _majority_orientation(slices)
    normal = slice_normal(orientation)
    odd = [s.name for s in slices if s.orientation is not None
           and np.max(np.abs(np.asarray(s.orientation) - np.asarray(orientation))) > 1e-3]
    if odd:
        warnings.append(IngestWarning(
            "mixed_orientation",
            f"{len(odd)} slice(s) have an ImageOrientationPatient different from the series' majority "
            f"{list(orientation)}; all are projected on the majority normal", _listed(odd)))
    proj = np.array([float(np.dot(normal, np.asarray(s.position, dtype=np.float64))) for s in slices])
    inst = [s.instance_number if s.instance_number is not None else 2**31 for s in slices]
    ranked = sorted(range(n), key=lambda i: (proj[i], slices[i].preference, inst[i], slices[i].name))

    order: list[int] = []
    duplicates: dict[int, int] = {}
    for i in ranked:
        if order and abs(proj[i] - proj[order[-1]]) < DUPLICATE_TOL_MM:
            duplicates[i] = order[-1]
        else:
            order.append(i)
    if duplicates:
        pairs = [f"{slices[d].name} (same position as {slices[k].name})" for d, k in duplicates.items()]
        warnings.append(IngestWarning(
            "duplicate_position",
            f"{len(duplicates)} slice(s) share a position with another slice and were dropped (kept lossless over lossy "
            f"copies, then the lower InstanceNumber): {'; '.join(pairs[:3])}{' ...' if len(pairs) > 3 else ''}",
            _listed([slices[d].name for d in duplicates])))

    positions = proj[order]
    result = Ordering(order=order, positions_mm=positions, method="position", spacing_mm=float("nan"),
                      duplicates=duplicates, warnings=warnings)
    if len(order) > 1:
        _check_spacing(result, [slices[i].name for i in order])
    return result


def _check_spacing(result: Ordering, names: Sequence[str]) -> None:
    steps = np.diff(result.positions_mm)
    median = float(statistics.median(float(x) for x in steps))  # np.median would import numpy.ma (~10 ms)
    result.spacing_mm = median
    for k, step in enumerate(steps):
        if step > GAP_FACTOR * median:
            result.gaps.append((k, float(step)))
    if result.gaps:
        desc = ", ".join(f"{step:.2f} mm between {names[k]} and {names[k + 1]}" for k, step in result.gaps[:5])
        result.warnings.append(IngestWarning(
            "gap",
            f"{len(result.gaps)} gap(s) larger than {GAP_FACTOR}× the median spacing {median:.3f} mm: {desc}"
            f"{' ...' if len(result.gaps) > 5 else ''}; slices may be missing",
            _listed([names[k + 1] for k, _ in result.gaps])))
    gap_idx = {k for k, _ in result.gaps}
    off = [k for k, step in enumerate(steps)
           if k not in gap_idx and abs(step - median) > max(UNEVEN_FRACTION * median, 0.05)]
    if off:
        result.uneven = True
        counts = Counter(round(float(s), 2) for s in steps)
        desc = ", ".join(f"{s:.2f} mm ×{c}" for s, c in sorted(counts.items()))
        result.warnings.append(IngestWarning(
            "uneven_spacing",
            f"slice spacing along the normal is not constant ({desc}; median {median:.3f} mm); "
            "the volume is not resampled", _listed([names[k + 1] for k in off])))


def _order_without_positions(slices: Sequence[SliceGeometry]) -> Ordering:
    n = len(slices)
    nan = np.full(n, np.nan)
    if n == 1:
        return Ordering(order=[0], positions_mm=nan, method="single", spacing_mm=float("nan"))
    missing = [s.name for s in slices if s.position is None or s.orientation is None]
    if all(s.instance_number is not None for s in slices):
        order = sorted(range(n), key=lambda i: (slices[i].instance_number, slices[i].name))
        warning = IngestWarning(
            "instance_number_order",
            f"{len(missing)} of {n} slices lack ImagePositionPatient/ImageOrientationPatient; ordered by "
            "InstanceNumber, spacing and gaps unknown", _listed(missing))
        method = "instance_number"
    else:
        order = sorted(range(n), key=lambda i: slices[i].name)
        warning = IngestWarning(
            "file_order",
            f"{len(missing)} of {n} slices lack ImagePositionPatient/ImageOrientationPatient and InstanceNumber; "
            "ordered by file name, which may not be anatomical order", _listed(missing))
        method = "file_name"
    return Ordering(order=order, positions_mm=nan, method=method, spacing_mm=float("nan"), warnings=[warning])
