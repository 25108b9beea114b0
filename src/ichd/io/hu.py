"""Stored DICOM pixel values -> Hounsfield units (HU), with the fixes real CT data needs.

:func:`to_hu` applies, in this order (each rule is tested in ``tests/unit/io/test_hu.py``):

1. **Padding mask.** Pixels equal to ``PixelPaddingValue`` (or, when ``PixelPaddingRangeLimit`` is present, between
   the two values inclusive) are remembered *on the stored values* and set to air at the end.
2. **Corrupted intercept (RSNA 2019).** Some RSNA files store 12-bit unsigned values (``BitsStored == 12``,
   ``PixelRepresentation == 0``) with a ``RescaleIntercept`` greater than -100 (typically 1): an unsigned stored value
   with such an intercept cannot represent air, so the header is wrong. The stored values hold HU modulo 4096.
   The fix, the one used in the RSNA challenge (J. Howard's "cleaning the data" notebook, also the
   "corrupted Rescale Intercept set to -1000" of Danilov et al.), is exactly::

       p = stored + 1000
       p[p >= 4096] -= 4096          # values that wrapped around come back below zero
       HU = p * RescaleSlope - 1000  # the intercept is replaced by -1000

   It recovers HU in [-1000, 3095]. :func:`has_corrupted_intercept` is the condition.
3. **MONOCHROME1.** Stored values are inverted within the stored range (``min + max - p``: ``2**BitsStored - 1 - p``
   unsigned, ``-1 - p`` signed) before the rescale, so HU always increase with attenuation. This assumes a
   MONOCHROME1 CT stores display-inverted values; a warning says the inversion happened.
4. **Rescale.** ``HU = p * RescaleSlope + RescaleIntercept`` (slope 1, intercept 0 when absent), in float32.
5. **Air.** Padding pixels and anything below :data:`OUT_OF_FOV_HU` (the -2000/-3024 circle outside the
   reconstruction field of view) become :data:`ichd.constants.AIR_HU` (-1024).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ichd.constants import AIR_HU

#: Rescaled values below this are outside the field of view (no real tissue is below air at about -1000 HU).
OUT_OF_FOV_HU: float = -1500.0

#: Intercepts above this cannot be right for unsigned CT data (the stored minimum 0 must be able to reach air).
CORRUPT_INTERCEPT_MIN: float = -100.0


@dataclass(frozen=True)
class PixelEncoding:
    """The header facts needed to turn stored values into HU (all plain Python values, picklable)."""

    slope: float = 1.0
    intercept: float = 0.0
    bits_stored: int = 16
    pixel_representation: int = 1
    photometric: str = "MONOCHROME2"
    padding_value: int | None = None
    padding_limit: int | None = None


@dataclass(frozen=True)
class HuFixes:
    """What :func:`to_hu` changed on one image: counts, for warnings and tests."""

    corrupted_intercept: bool = False
    inverted_monochrome1: bool = False
    n_padding: int = 0
    n_out_of_fov: int = 0


def has_corrupted_intercept(enc: PixelEncoding) -> bool:
    """True for the RSNA corrupted-intercept pattern: BitsStored 12, unsigned, RescaleIntercept > -100."""
    return enc.bits_stored == 12 and enc.pixel_representation == 0 and enc.intercept > CORRUPT_INTERCEPT_MIN


def implausible_intercept(enc: PixelEncoding) -> bool:
    """Unsigned data whose intercept cannot reach air, but not the 12-bit pattern we know how to fix."""
    return enc.pixel_representation == 0 and enc.intercept > CORRUPT_INTERCEPT_MIN and not has_corrupted_intercept(enc)


def signed_padding(value: int | None, bits_allocated: int, pixel_representation: int) -> int | None:
    """``PixelPaddingValue`` as the stored pixel type sees it.

    The tag's VR is US or SS depending on the writer; a signed image may carry ``63536`` for ``-2000``.
    """
    if value is None:
        return None
    value = int(value)
    if pixel_representation == 1 and value >= 2 ** (bits_allocated - 1):
        value -= 2**bits_allocated
    return value


def to_hu(stored: np.ndarray, enc: PixelEncoding, out: np.ndarray | None = None) -> tuple[np.ndarray, HuFixes]:
    """Convert one image of stored values to float32 HU following the rules in the module docstring.

    ``out``: a float32 array of the image's shape to write into (e.g. the slice of a preallocated volume), saving
    a copy; it is returned. By default a new array is returned.
    """
    p = np.asarray(stored)
    padding: np.ndarray | None = None
    if enc.padding_value is not None:
        if enc.padding_limit is not None:
            lo, hi = sorted((enc.padding_value, enc.padding_limit))
            padding = (p >= lo) & (p <= hi)
        else:
            padding = p == enc.padding_value
    intercept, slope = float(enc.intercept), float(enc.slope)
    corrupted = has_corrupted_intercept(enc)
    if corrupted:
        shifted = p.astype(np.int32) + 1000
        shifted[shifted >= 4096] -= 4096
        p = shifted
        intercept = -1000.0
    if out is None:
        hu = p.astype(np.float32)  # a new array: every step below works in place on it
    else:
        if out.shape != p.shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 of shape {p.shape}, got {out.dtype} {out.shape}")
        hu = out
        np.copyto(hu, p, casting="unsafe")
    inverted = enc.photometric.upper() == "MONOCHROME1"
    if inverted:
        top = 2**enc.bits_stored - 1 if enc.pixel_representation == 0 else -1
        np.subtract(np.float32(top), hu, out=hu)
    if slope != 1.0:
        hu *= np.float32(slope)
    if intercept != 0.0:
        hu += np.float32(intercept)
    air = hu < OUT_OF_FOV_HU
    n_fov = int(np.count_nonzero(air))
    n_pad = 0
    if padding is not None:
        n_pad = int(np.count_nonzero(padding))
        n_fov -= int(np.count_nonzero(air & padding))
        air |= padding
    np.copyto(hu, np.float32(AIR_HU), where=air)
    return hu, HuFixes(corrupted, inverted, n_pad, n_fov)
