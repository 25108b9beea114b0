"""Train-time augmentation (the seed's transforms, plus scanner/reconstruction domain transforms) and a
class-balanced sampler.

Burduja et al. (2020) augment with Albumentations: horizontal flip, shift, scale, rotation and brightness. The paper
names the transforms but not their ranges, so :class:`AugmentConfig` defaults to Albumentations' own defaults for
them (shift +-6.25 %, scale +-10 %, rotation +-45 degrees as in ``ShiftScaleRotate``; brightness/contrast +-0.2),
each applied with probability 0.5. Out-of-image pixels after the affine warp are filled with 0 (air).

**Domain transforms** (all off by default). The training data mixes two kinds of HU images: real scanner DICOM
(RSNA) and CT-ICH, whose HU are reconstructed from 8-bit JPEG exports of a brain (L40/W120) and a bone
(L700/W3200) window (:func:`ichd.io.images.ctich_to_hu`). They differ in calibration, noise, reconstruction kernel
and quantisation/JPEG artefacts, which a model can learn as a shortcut. The domain transforms imitate these
differences in HU, so they run before the seed's transforms on the HU recovered from the cached windows
(:func:`windows_to_hu`), and the result is windowed back to 8 bits:

* calibration: ``HU' = HU * g + d`` with ``g ~ U(1 - hu_gain, 1 + hu_gain)`` (about water, 0 HU) and
  ``d ~ U(-hu_offset, hu_offset)`` HU;
* noise: additive Gaussian noise, ``sigma ~ U(0, noise_hu)`` HU (gain, offset and noise each with probability
  ``hu_p``);
* reconstruction kernel (probability ``kernel_p``): half the time a softer kernel (Gaussian blur,
  ``sigma ~ U(0.3, blur_sigma)`` px), half the time a sharper one (unsharp mask
  ``HU + a * (HU - blur(HU, 1 px))``, ``a ~ U(0, sharpen)``);
* CT-ICH export round trip (probability ``jpeg_p``): brain and bone windows as 8-bit JPEG (quality
  ``U(jpeg_quality_min, 95)``), decoded and merged back with :func:`~ichd.io.images.ctich_to_hu`.

The cached windows only hold HU inside the widest window's range (``[-150, 230]`` HU for the seed's windows);
pixels saturated in every window (air, bone) are unknown beyond that and are kept saturated by the domain
transforms (a shifted or noisy air pixel is still air in a scanner image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichd.constants import LABELS
from ichd.errors import ConfigError


@dataclass
class AugmentConfig:
    """Augmentation ranges and probabilities (0 disables a transform)."""

    hflip_p: float = 0.5
    affine_p: float = 0.5
    shift: float = 0.0625
    scale: float = 0.1
    rotate_deg: float = 45.0
    brightness_contrast_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    # Domain transforms, in HU (see the module docstring); all off by default.
    hu_p: float = 0.0
    hu_gain: float = 0.0
    hu_offset: float = 0.0
    noise_hu: float = 0.0
    kernel_p: float = 0.0
    blur_sigma: float = 1.0
    sharpen: float = 1.0
    jpeg_p: float = 0.0
    jpeg_quality_min: int = 75

    def __post_init__(self) -> None:
        for name in ("hflip_p", "affine_p", "brightness_contrast_p", "hu_p", "kernel_p", "jpeg_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augmentation {name} must be a probability in [0, 1], got {v}")
        for name in ("shift", "scale", "rotate_deg", "brightness", "contrast", "hu_offset", "noise_hu",
                     "sharpen"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hu_gain < 1.0:
            raise ConfigError(f"augmentation hu_gain must be in [0, 1) (gain 1 +- hu_gain), got {self.hu_gain}")
        if not self.blur_sigma >= _MIN_BLUR_SIGMA:
            raise ConfigError(f"augmentation blur_sigma must be >= {_MIN_BLUR_SIGMA} px (blur sigma ~ "
                              f"U({_MIN_BLUR_SIGMA}, blur_sigma)), got {self.blur_sigma}")
        q = self.jpeg_quality_min
        if (isinstance(q, bool) or not isinstance(q, int | float | np.integer) or int(q) != q
                or not 1 <= q <= _MAX_JPEG_QUALITY):
            raise ConfigError(f"augmentation jpeg_quality_min must be an integer in [1, {_MAX_JPEG_QUALITY}], "
                              f"got {q!r}")
        self.jpeg_quality_min = int(self.jpeg_quality_min)

    @property
    def domain_enabled(self) -> bool:
        """Whether any HU domain transform can fire (otherwise the image never leaves 8 bits)."""
        hu = self.hu_p > 0 and (self.hu_gain > 0 or self.hu_offset > 0 or self.noise_hu > 0)
        return bool(hu or self.kernel_p > 0 or self.jpeg_p > 0)


#: Lower end of the blur sigma range of the "softer kernel" transform, px.
_MIN_BLUR_SIGMA = 0.3
#: Upper end of the JPEG quality range of the CT-ICH export round trip.
_MAX_JPEG_QUALITY = 95
#: Sigma (px) of the blur inside the unsharp mask of the "sharper kernel" transform.
_SHARPEN_SIGMA = 1.0
#: Extra seed word mixed into the domain transforms' generator so its stream differs from Albumentations'.
_DOMAIN_SEED_SALT = 0x1C4D


def _window_order(windows: list[tuple[float, float]]) -> list[int]:
    return sorted(range(len(windows)), key=lambda c: windows[c][1])


def _windows_to_hu(img_u8: np.ndarray, windows: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`windows_to_hu` and the mask of pixels saturated in every window."""
    from ichd.io.images import window_to_hu

    img = np.asarray(img_u8)
    if img.ndim != 3 or img.shape[0] != len(windows):
        raise ValueError(f"expected a ({len(windows)}, H, W) image (one channel per window), got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"windows_to_hu needs a uint8 image, got dtype {img.dtype}")
    order = _window_order(windows)
    widest = order[-1]
    hu = window_to_hu(img[widest], *windows[widest])
    saturated = (img[widest] == 0) | (img[widest] == 255)
    for c in reversed(order[:-1]):  # wide to narrow: the narrowest unsaturated window is written last
        inside = (img[c] != 0) & (img[c] != 255)
        if inside.any():
            np.copyto(hu, window_to_hu(img[c], *windows[c]), where=inside)
            saturated &= ~inside
    return hu, saturated


def windows_to_hu(img_u8: np.ndarray, windows: Any) -> np.ndarray:
    """Hounsfield units back from a cached windowed slice: uint8 ``(C, H, W)`` -> float32 ``(H, W)``.

    ``windows`` are the ``C`` ``(level, width)`` pairs in channel order (a list, or a name -> window dict). Each
    pixel takes its value from the narrowest window in which it is unsaturated (gray level 1..254), which is
    exact up to that window's quantisation step (``width / 255`` HU); a pixel saturated in every window takes
    the widest window's value, i.e. that window's end. HU outside the widest window's range (``[-150, 230]``
    for the seed's windows: air, bone) are saturated in the cache and stay so. The inverse is
    :func:`ichd.preprocessing.windows.window_channels` followed by ``rint(x * 255)`` as uint8.
    """
    from ichd.preprocessing.windows import window_list

    return _windows_to_hu(img_u8, window_list(windows))[0]


def _blur(hu: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(hu, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma))


def ctich_round_trip(hu: np.ndarray, quality: int) -> np.ndarray:
    """The CT-ICH export and reading: ``hu`` (H, W) as 8-bit brain (L40/W120) and bone (L700/W3200) windows,
    JPEG-encoded at ``quality`` and decoded, merged back with :func:`~ichd.io.images.ctich_to_hu`."""
    import cv2

    from ichd.constants import CTICH_BONE_WINDOW, CTICH_BRAIN_WINDOW
    from ichd.io.images import ctich_to_hu
    from ichd.preprocessing.windows import apply_window

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    decoded = []
    for window in (CTICH_BRAIN_WINDOW, CTICH_BONE_WINDOW):
        u8 = np.rint(apply_window(hu, *window) * 255.0).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8, params)
        if not ok:
            raise RuntimeError("cv2.imencode failed to write a JPEG")
        decoded.append(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
    return ctich_to_hu(decoded[0], decoded[1])


def domain_transform(hu: np.ndarray, *, gain: float = 1.0, offset: float = 0.0, noise_sigma: float = 0.0,
                     blur_sigma: float = 0.0, sharpen: float = 0.0, jpeg_quality: int | None = None,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Apply the scanner/reconstruction transforms with fixed parameters to an HU image ``(H, W)``, in order:
    ``HU * gain + offset``, Gaussian noise (``noise_sigma`` HU, drawn from ``rng``), a softer kernel (Gaussian
    blur, ``blur_sigma`` px) or a sharper one (unsharp mask of strength ``sharpen``), and the CT-ICH JPEG round
    trip at ``jpeg_quality`` (``None``: none). Returns float32; each step with its neutral value is skipped."""
    out = np.array(hu, dtype=np.float32)
    if gain != 1.0:
        out *= np.float32(gain)
    if offset != 0.0:
        out += np.float32(offset)
    if noise_sigma > 0:
        if rng is None:
            rng = np.random.default_rng()
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_sigma)
    if blur_sigma > 0:
        out = _blur(out, blur_sigma)
    if sharpen > 0:
        out += np.float32(sharpen) * (out - _blur(out, _SHARPEN_SIGMA))
    if jpeg_quality is not None:
        out = ctich_round_trip(out, jpeg_quality)
    return out


class Augmentation:
    """Callable on a float32 ``(C, H, W)`` image in [0, 1]; returns the augmented image, same shape, clipped.

    The image is augmented as 8-bit (``round(x * 255)``): Albumentations' brightness/contrast is ~70x faster on
    uint8 (a lookup table) than on float32 (3.6 ms vs 0.05 ms per 256 x 256 x 3 slice on the 2-core VM). For images
    from a ``uint8`` cache this quantisation is lossless; ``float16`` caches lose at most 0.5/255. A ``uint8``
    ``(C, H, W)`` input (0..255) is taken as is, which :class:`~ichd.data.datasets.SliceDataset` does for
    transforms with ``accepts_uint8 = True`` to skip a float round trip.

    When a domain transform is enabled (:attr:`AugmentConfig.domain_enabled`), it runs first: the 8-bit windows
    (``windows``, the cache's ``(level, width)`` pairs in channel order; default the seed's) go back to HU
    (:func:`windows_to_hu`), through :func:`domain_transform` with parameters drawn from :attr:`rng` (a numpy
    generator seeded from ``seed``, re-seeded by :meth:`reseed`), and back to 8-bit windows. Otherwise the image
    never leaves 8 bits.
    """

    #: Tells datasets that the raw uint8 cache slice may be passed in directly.
    accepts_uint8 = True

    def __init__(self, cfg: AugmentConfig, seed: int | None = None, windows: Any = None) -> None:
        import os

        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A

        from ichd.preprocessing.windows import window_list

        self.cfg = cfg
        self.domain = cfg.domain_enabled
        #: The cache's windows (level, width) in channel order; used only by the domain transforms.
        self.windows = window_list(windows)
        self.rng = self._domain_rng(seed)
        steps: list[Any] = []
        if cfg.hflip_p > 0:
            steps.append(A.HorizontalFlip(p=cfg.hflip_p))
        if cfg.affine_p > 0:
            steps.append(A.Affine(translate_percent=(-cfg.shift, cfg.shift), scale=(1 - cfg.scale, 1 + cfg.scale),
                                  rotate=(-cfg.rotate_deg, cfg.rotate_deg), border_mode=0, fill=0,
                                  p=cfg.affine_p))
        if cfg.brightness_contrast_p > 0:
            steps.append(A.RandomBrightnessContrast(brightness_limit=cfg.brightness, contrast_limit=cfg.contrast,
                                                    p=cfg.brightness_contrast_p))
        self.pipeline = A.Compose(steps, seed=seed) if seed is not None else A.Compose(steps)

    @staticmethod
    def _domain_rng(seed: int | None) -> np.random.Generator:
        if seed is None:
            return np.random.default_rng()
        return np.random.default_rng([int(seed) % 2**32, _DOMAIN_SEED_SALT])

    def reseed(self, seed: int) -> None:
        """Reset the random streams (Albumentations 2 ignores numpy/random seeding): call it from a DataLoader
        ``worker_init_fn`` with the worker's seed so augmented runs are reproducible and resumable."""
        self.pipeline.set_random_seed(int(seed) % 2**32)
        self.rng = self._domain_rng(seed)

    def draw_domain_params(self) -> dict[str, Any]:
        """Draw the parameters of :func:`domain_transform` for one image (empty: no transform fires)."""
        cfg, rng = self.cfg, self.rng
        params: dict[str, Any] = {}
        if cfg.hu_p > 0:
            if cfg.hu_gain > 0 and rng.random() < cfg.hu_p:
                params["gain"] = float(rng.uniform(1.0 - cfg.hu_gain, 1.0 + cfg.hu_gain))
            if cfg.hu_offset > 0 and rng.random() < cfg.hu_p:
                params["offset"] = float(rng.uniform(-cfg.hu_offset, cfg.hu_offset))
            if cfg.noise_hu > 0 and rng.random() < cfg.hu_p:
                params["noise_sigma"] = float(rng.uniform(0.0, cfg.noise_hu))
        if cfg.kernel_p > 0 and rng.random() < cfg.kernel_p:
            if rng.random() < 0.5:
                params["blur_sigma"] = float(rng.uniform(_MIN_BLUR_SIGMA, cfg.blur_sigma))
            else:
                params["sharpen"] = float(rng.uniform(0.0, cfg.sharpen))
        if cfg.jpeg_p > 0 and rng.random() < cfg.jpeg_p:
            params["jpeg_quality"] = int(rng.integers(cfg.jpeg_quality_min, _MAX_JPEG_QUALITY + 1))
        return params

    def apply_domain(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """uint8 ``(C, H, W)`` windows -> HU -> :func:`domain_transform` with ``params`` -> windows, uint8.

        Pixels saturated in every window (unknown HU beyond the widest window: air, bone) keep their value."""
        from ichd.preprocessing.windows import window_channels

        hu, saturated = _windows_to_hu(x, self.windows)
        out = domain_transform(hu, rng=self.rng, **params)
        np.copyto(out, hu, where=saturated)
        return np.rint(window_channels(out, self.windows) * np.float32(255.0)).astype(np.uint8)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self._augment(image, None)[0]

    def augment_with_mask(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Augment ``image`` and its segmentation ``mask`` (H, W) together: the spatial transforms (flip,
        affine) move both alike (the mask with nearest-neighbour interpolation); the intensity and domain
        transforms touch the image only. Returns ``(image, mask)``, the mask as float32."""
        if mask.shape != image.shape[-2:]:
            raise ValueError(f"mask shape {mask.shape} differs from the image's {image.shape[-2:]}")
        out, warped = self._augment(image, np.asarray(mask, dtype=np.float32))
        return out, np.asarray(warped, dtype=np.float32)

    def _augment(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if image.ndim != 3:
            raise ValueError(f"augmentation expects a (C, H, W) image, got shape {image.shape}")
        x = np.asarray(image)
        if x.dtype != np.uint8:
            x = np.rint(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
        if self.domain:
            params = self.draw_domain_params()
            if params:
                x = self.apply_domain(x, params)
        inputs: dict[str, np.ndarray] = {"image": np.ascontiguousarray(np.moveaxis(x, 0, -1))}
        if mask is not None:
            inputs["mask"] = np.ascontiguousarray(mask)
        result = self.pipeline(**inputs)
        out = np.moveaxis(result["image"], -1, 0).astype(np.float32) * np.float32(1.0 / 255.0)
        return out, (result["mask"] if mask is not None else None)

    def __repr__(self) -> str:
        return f"Augmentation({self.cfg})"


def train_augmentation(cfg: AugmentConfig | dict[str, Any] | None = None, *, seed: int | None = None,
                       windows: Any = None) -> Augmentation:
    """The train-time transform for :class:`~ichd.data.datasets.SliceDataset` (``transform=``).

    ``windows``: the cache's ``(level, width)`` windows in channel order (``cache.config.windows``), needed by the
    domain transforms to go back to HU; default :data:`~ichd.constants.SEED_WINDOWS`."""
    if isinstance(cfg, dict):
        from ichd.config import config_from_dict

        cfg = config_from_dict(AugmentConfig, cfg, where="augment")
    return Augmentation(cfg or AugmentConfig(), seed=seed, windows=windows)


def balanced_sampler(labels: Any, *, positive_fraction: float = 0.5, num_samples: int | None = None,
                     label: str = "any", seed: int | None = None):  # -> torch.utils.data.WeightedRandomSampler
    """A sampler that draws positive slices (``label`` = 1) with probability ``positive_fraction``.

    ``labels`` is a label table (DataFrame with a ``label`` column), an ``(n, 6)`` array in
    :data:`~ichd.constants.LABELS` order, or an ``(n,)`` 0/1 vector, in the dataset's item order. Samples with
    replacement, ``num_samples`` per epoch (default: the dataset size). The single-source case of
    :func:`ichd.data.sampling.training_sampler`, which it calls.
    """
    import pandas as pd

    from ichd.data.sampling import training_sampler

    if not hasattr(labels, "columns"):
        arr = np.asarray(labels)
        labels = pd.DataFrame({label: arr[:, LABELS.index(label)] if arr.ndim == 2 else arr})
    return training_sampler(labels, positive_fraction=positive_fraction, num_samples=num_samples, label=label,
                            seed=seed)


def sampler_positive_share(sampler: Any, labels: Sequence[int]) -> float:
    """Fraction of positives among the indices ``sampler`` yields once (for checks and logging)."""
    idx = list(iter(sampler))
    y = np.asarray(labels)
    return float(y[idx].mean()) if idx else 0.0
