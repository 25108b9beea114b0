"""Measures of how well a heat map localises a lesion, and the model-randomisation sanity check.

* **Pointing game** (Zhang et al. 2018): a hit when the map's maximum (:func:`peak`) lies inside the lesion mask
  dilated by a tolerance (5 px by default, a disk). A map with no evidence at all (all zero) is a miss.
* **Energy fraction**: the share of the map's total mass that falls inside the (undilated) mask. Scale
  invariant, so the max-normalisation of the map does not matter. An all-zero map scores 0.
* **Chance levels**: what a uniform map over the head would score (energy fraction = mask area / head area;
  pointing game = dilated-mask area / head area), so the numbers can be read against a baseline.
* **Data**: :func:`read_masked_slices` reads the 26 real-HU CT-ICH slices with hemorrhage masks; and
  :func:`bootstrap_means` gives patient-level bootstrap CIs.
* **Randomisation test** (Adebayo et al. 2018, "Sanity checks for saliency maps"): the model's weights are
  re-initialised — all of them ("full") or cascading from the classifier down to the input — and the maps of
  the randomised model are compared with the trained model's by SSIM. A method that explains the *model* must
  give clearly different maps (SSIM well below 1); an edge detector would not.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ichd.constants import LABELS
from ichd.errors import InputError
from ichd.types import CTSeries

if TYPE_CHECKING:
    from torch import nn

#: Pointing-game tolerance in pixels of the original matrix (the issue's 5 px).
DEFAULT_TOLERANCE_PX = 5
#: HU above which a pixel counts as part of the head for the chance levels (excludes air, keeps fat/skin).
HEAD_HU_THRESHOLD = -300.0


def _check_pair(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float64)
    mask = np.asarray(mask).astype(bool)
    if cam.ndim != 2 or cam.shape != mask.shape:
        raise InputError(f"heat map {cam.shape} and mask {mask.shape} must be 2-D arrays of the same shape")
    if not np.all(np.isfinite(cam)):
        raise InputError("heat map has non-finite values")
    return cam, mask


def disk(radius: int) -> np.ndarray:
    """A boolean disk structuring element of ``radius`` pixels (``(2r+1, 2r+1)``)."""
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` dilated by a disk of ``radius`` pixels (``radius`` 0 returns a copy)."""
    from scipy.ndimage import binary_dilation

    mask = np.asarray(mask).astype(bool)
    if radius <= 0:
        return mask.copy()
    return binary_dilation(mask, structure=disk(radius))


def peak(cam: np.ndarray, *, rtol: float = 1e-6) -> tuple[int, int] | None:
    """(row, col) of the map's maximum, or None for an all-zero map.

    A map upsampled from a coarse grid has a *plateau* of (near-)maximal pixels where the top cell touches the
    border (bilinear interpolation clamps there), and taking the first argmax would put the peak on the image
    edge. So of all pixels within ``rtol`` of the maximum, the one nearest their centroid is returned.
    """
    cam = np.asarray(cam, dtype=np.float64)
    top = float(cam.max(initial=0.0))
    if top <= 0:
        return None
    rows, cols = np.nonzero(cam >= top * (1.0 - rtol))
    i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return int(rows[i]), int(cols[i])


def pointing_game(cam: np.ndarray, mask: np.ndarray, *, tolerance_px: int = DEFAULT_TOLERANCE_PX) -> bool:
    """True when the map's peak lies inside ``mask`` dilated by ``tolerance_px``; False for an all-zero map."""
    cam, mask = _check_pair(cam, mask)
    if not mask.any():
        raise InputError("pointing game needs a non-empty mask")
    p = peak(cam)
    return p is not None and bool(dilate(mask, tolerance_px)[p])


def energy_fraction(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass (sum of non-negative values) inside ``mask``; 0.0 for an all-zero map."""
    cam, mask = _check_pair(cam, mask)
    cam = np.clip(cam, 0.0, None)
    total = float(cam.sum())
    if total <= 0.0:
        return 0.0
    return float(cam[mask].sum() / total)


def head_region(hu: np.ndarray, threshold: float = HEAD_HU_THRESHOLD) -> np.ndarray:
    """Pixels of a HU slice that belong to the head (above ``threshold`` HU), holes filled."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(np.asarray(hu) > threshold)


def chance_levels(mask: np.ndarray, head: np.ndarray, *, tolerance_px: int = DEFAULT_TOLERANCE_PX
                  ) -> tuple[float, float]:
    """(pointing-game, energy-fraction) scores of a uniform map over ``head``: area ratios inside the head."""
    mask = np.asarray(mask).astype(bool)
    head = np.asarray(head).astype(bool)
    n = int(head.sum())
    if n == 0:
        raise InputError("head region is empty; is the slice in Hounsfield units?")
    hit = float((dilate(mask, tolerance_px) & head).sum() / n)
    energy = float((mask & head).sum() / n)
    return hit, energy


def map_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM between two maps after scaling each to [0, 1] by its maximum (all-zero maps stay zero)."""
    from skimage.metrics import structural_similarity

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"SSIM needs two 2-D maps of the same shape, got {a.shape} and {b.shape}")
    a = a / a.max() if a.max() > 0 else np.zeros_like(a)
    b = b / b.max() if b.max() > 0 else np.zeros_like(b)
    return float(structural_similarity(a, b, data_range=1.0))


RandomizeMode = Literal["full", "cascading"]


def parameterised_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, in forward-registration order (input -> output)."""
    return [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def randomized_copy(model: nn.Module, *, mode: RandomizeMode = "full", fraction: float = 1.0,
                    seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with re-initialised weights (the original is untouched).

    ``mode="full"`` re-initialises every parameterised layer. ``mode="cascading"`` re-initialises the top
    ``fraction`` of them, counted from the output (the classifier first), as in Adebayo et al.'s cascading
    randomisation. Layers are reset with their own ``reset_parameters()`` (PyTorch's default initialisers;
    batch-norm running statistics are reset too); parameters of layers without one are drawn from N(0, 0.02).
    """
    import torch

    if mode not in ("full", "cascading"):
        raise InputError(f"randomisation mode must be 'full' or 'cascading', got {mode!r}")
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    clone = copy.deepcopy(model)
    names = parameterised_layers(clone)
    if mode == "cascading":
        k = max(1, round(fraction * len(names)))
        names = names[len(names) - k:]
    # A private CPU generator state: the caller's global RNG stream is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = dict(clone.named_modules())
        with torch.no_grad():
            for name in names:
                m = modules[name]
                if hasattr(m, "reset_running_stats"):
                    m.reset_running_stats()
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                else:
                    for p in m.parameters(recurse=False):
                        p.normal_(0.0, 0.02)
    return clone


# ----------------------------------------------------------------------------------------------------------------
# The real-HU slices with hemorrhage masks (../shared/data/hu-slices) and bootstrap summaries
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class MaskedSlice:
    """One real-HU CT slice with its hemorrhage mask, in the CT-ICH JPG orientation (anterior up).

    Attributes:
        name: file stem, e.g. ``"071_14"``.
        patient_id: ``ctich-<ppp>`` (the id CT-ICH folds split on).
        ctich_slice: the matching CT-ICH JPG slice number.
        series: a one-slice :class:`~ichd.types.CTSeries` (HU, rotated).
        mask: (H, W) bool hemorrhage mask (all subtypes together; the masks do not separate them).
        labels: label -> 0/1 slice labels (from the matched CT-ICH slice).
    """

    name: str
    patient_id: str
    ctich_slice: int
    series: CTSeries
    mask: np.ndarray
    labels: dict[str, int]

    @property
    def hu(self) -> np.ndarray:
        return self.series.hu[0]


def read_masked_slices(root: str | os.PathLike[str]) -> list[MaskedSlice]:
    """Read ``hu-slices/`` (``labels.csv``, ``dicom/*.dcm``, ``masks/*.png``) as :class:`MaskedSlice` objects.

    The DICOMs are Secondary Captures whose stored values are HU; they are read with
    :func:`ichd.io.read_ct` (``allow_secondary_capture=True``). Image and mask are rotated with
    ``np.rot90(arr, 1)`` into the CT-ICH orientation the models were trained on.
    """
    import pandas as pd
    from PIL import Image

    from ichd.io.images import ctich_scan_id
    from ichd.io.reader import read_ct

    root = Path(root)
    table = root / "labels.csv"
    if not table.is_file():
        raise InputError(f"{table} not found", hint="point ICHD_DATA at the shared data folder (it holds hu-slices/)")
    df = pd.read_csv(table)
    missing = [c for c in ("file", "mask", "patient", "ctich_slice", *LABELS) if c not in df.columns]
    if missing:
        raise InputError(f"{table} lacks columns {missing}")
    out = []
    for row in df.itertuples(index=False):
        [series] = read_ct(root / row.file, allow_secondary_capture=True)
        hu = np.ascontiguousarray(np.rot90(series.hu, 1, axes=(1, 2)))
        mask = np.ascontiguousarray(np.rot90(np.asarray(Image.open(root / row.mask)) > 0, 1))
        if mask.shape != hu.shape[1:]:
            raise InputError(f"{root / row.mask}: mask shape {mask.shape} differs from the image's {hu.shape[1:]}")
        rotated = dataclasses.replace(series, hu=hu, warnings=[])
        out.append(MaskedSlice(name=Path(row.file).stem, patient_id=ctich_scan_id(int(row.patient)),
                               ctich_slice=int(row.ctich_slice), series=rotated, mask=mask,
                               labels={lab: int(getattr(row, lab)) for lab in LABELS}))
    return out


@dataclass(frozen=True)
class Estimate:
    """A mean with its patient-level bootstrap percentile interval."""

    mean: float
    low: float
    high: float
    n: int
    n_patients: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n,
                "n_patients": self.n_patients}


def bootstrap_means(values: dict[str, np.ndarray], patients: Sequence[str], *, n_boot: int = 2000,
                    seed: int = 0) -> dict[str, Estimate]:
    """Means of each array in ``values`` (one value per row) with seeded patient-level (cluster) bootstrap CIs.

    Rows of one patient are resampled together (:mod:`ichd.evaluation.bootstrap`), so the intervals account for
    several slices of a patient being correlated.
    """
    from ichd.evaluation.bootstrap import GroupIndex, bootstrap

    groups = GroupIndex(list(patients))
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    for k, v in arrays.items():
        if len(v) != groups.n_rows:
            raise InputError(f"{k}: {len(v)} values for {groups.n_rows} rows")

    def statistic(draw: np.ndarray) -> dict[str, float]:
        rows = groups.rows(draw)
        return {k: float(v[rows].mean()) for k, v in arrays.items()}

    intervals = bootstrap(statistic, groups.n_groups, n_boot=n_boot, seed=seed, desc="bootstrap")
    return {k: Estimate(float(v.mean()), intervals[k].low, intervals[k].high, len(v), groups.n_groups)
            for k, v in arrays.items()}
