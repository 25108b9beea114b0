"""Measures of how well a heat map localises a lesion, and the model-randomisation sanity check.

* **Pointing game** (Zhang et al. 2018): a hit when the map's maximum lies inside the lesion mask dilated by a
  tolerance (5 px by default, a disk). A map with no evidence at all (all zero) is a miss.
* **Energy fraction**: the share of the map's total mass that falls inside the (undilated) mask. Scale
  invariant, so the max-normalisation of the map does not matter. An all-zero map scores 0.
* **Chance levels**: what a uniform map over the head would score (energy fraction = mask area / head area;
  pointing game = dilated-mask area / head area), so the numbers can be read against a baseline.
* **Randomisation test** (Adebayo et al. 2018, "Sanity checks for saliency maps"): the model's weights are
  re-initialised — all of them ("full") or cascading from the classifier down to the input — and the maps of
  the randomised model are compared with the trained model's by SSIM. A method that explains the *model* must
  give clearly different maps (SSIM well below 1); an edge detector would not.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal

import numpy as np

from ichd.errors import InputError

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


def peak(cam: np.ndarray) -> tuple[int, int] | None:
    """(row, col) of the map's maximum (the first one in row-major order), or None for an all-zero map."""
    cam = np.asarray(cam)
    if not np.any(cam > 0):
        return None
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(r), int(c)


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
