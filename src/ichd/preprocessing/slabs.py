"""Thin-slice series as slabs of the training thickness (issue 21 item 3).

The models were trained on 5 mm head CT (RSNA 2019, CT-ICH); a 0.625-1.25 mm series has several times the noise
per slice and shows small vessels and partial-volume edges a 5 mm slice averages away. A series whose slice
spacing is below :data:`MAX_THIN_SPACING_MM` is therefore read as slabs: runs of ``k = round(`` :data:`SLAB_MM`
``/ spacing)`` consecutive slices, their HU averaged (the mean along z, :func:`numpy.add.reduceat`), before the
model. Slabs are cut by :func:`numpy.array_split` into ``round(n / k)`` nearly equal runs (sizes differ by at most
one slice), from the most inferior slice up. Each source slice then reports the probabilities of its slab
(:class:`Slabs.slab_of`); see :meth:`ichd.inference.predictor.Predictor.predict_series`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Series with a slice spacing below this (mm) are read as slabs.
MAX_THIN_SPACING_MM = 2.5
#: Target slab thickness (mm): the training data's slice thickness.
SLAB_MM = 5.0


@dataclass
class Slabs:
    """How a thin-slice series is read: ``groups[j]`` are the source slices of slab ``j`` (consecutive, inferior
    -> superior), ``hu`` their mean ``(m, H, W)`` float32, ``slab_of[i]`` the slab of source slice ``i``."""

    groups: list[np.ndarray]
    hu: np.ndarray
    source_spacing_mm: float

    @property
    def n_slabs(self) -> int:
        return len(self.groups)

    @property
    def starts(self) -> np.ndarray:
        """The first source slice of every slab (for ``np.*.reduceat`` over source-slice arrays)."""
        return np.array([int(g[0]) for g in self.groups], dtype=np.intp)

    @property
    def slab_of(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_slabs), [len(g) for g in self.groups])

    @property
    def thickness_mm(self) -> float:
        """The mean slab thickness (source slices per slab x spacing)."""
        return float(np.mean([len(g) for g in self.groups])) * self.source_spacing_mm

    def representative(self) -> np.ndarray:
        """The middle source slice of every slab (the one reports show for it)."""
        return np.array([int(g[(len(g) - 1) // 2]) for g in self.groups], dtype=np.intp)

    def positions(self, positions_mm: np.ndarray) -> np.ndarray:
        """The mean position of each slab's source slices."""
        pos = np.asarray(positions_mm, dtype=np.float64)
        return np.add.reduceat(pos, self.starts) / np.array([len(g) for g in self.groups])

    def to_json(self, positions_mm: np.ndarray | None = None) -> list[dict[str, Any]]:
        """``[{index, source_slices, z_mm}]`` per slab (``z_mm`` null when positions are unknown)."""
        z = self.positions(positions_mm) if positions_mm is not None else np.full(self.n_slabs, np.nan)
        return [{"index": j, "source_slices": [int(i) for i in g],
                 "z_mm": round(float(z[j]), 4) if math.isfinite(float(z[j])) else None}
                for j, g in enumerate(self.groups)]


def slab_groups(n: int, spacing_mm: float, *, slab_mm: float = SLAB_MM) -> list[np.ndarray] | None:
    """The source slices of each slab of a series of ``n`` slices ``spacing_mm`` apart, or None when it is not
    thin (spacing unknown or >= :data:`MAX_THIN_SPACING_MM`) or has a single slice."""
    dz = abs(float(spacing_mm))
    if n < 2 or not math.isfinite(dz) or dz <= 0 or dz >= MAX_THIN_SPACING_MM:
        return None
    k = max(1, round(slab_mm / dz))
    if k < 2:
        return None
    return [g for g in np.array_split(np.arange(n), max(1, round(n / k))) if len(g)]


def make_slabs(hu: np.ndarray, spacing_mm: float, *, slab_mm: float = SLAB_MM) -> Slabs | None:
    """The slabs of a series ``hu`` ``(z, H, W)`` (see the module doc), or None when it is not read as slabs."""
    groups = slab_groups(len(hu), spacing_mm, slab_mm=slab_mm)
    if groups is None:
        return None
    starts = np.array([int(g[0]) for g in groups], dtype=np.intp)
    sums = np.add.reduceat(np.asarray(hu), starts, axis=0, dtype=np.float32)
    sizes = np.array([len(g) for g in groups], dtype=np.float32)
    return Slabs(groups=groups, hu=sums / sizes[:, None, None], source_spacing_mm=abs(float(spacing_mm)))
