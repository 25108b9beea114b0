"""Scanner/reconstruction domain augmentations: HU round trip from the cached windows, the HU transforms, the
CT-ICH JPEG round trip, seeding and config validation."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.constants import SEED_WINDOWS
from ichd.data import augment as augment_mod
from ichd.data.augment import (
    Augmentation,
    AugmentConfig,
    domain_transform,
    train_augmentation,
    windows_to_hu,
)
from ichd.errors import ConfigError
from ichd.preprocessing.windows import window_channels

WINDOWS = list(SEED_WINDOWS.values())
#: Seed transforms off: only the domain transforms can change the image.
NO_SEED = {"hflip_p": 0.0, "affine_p": 0.0, "brightness_contrast_p": 0.0}


def to_u8(hu: np.ndarray, windows=WINDOWS) -> np.ndarray:
    return np.rint(window_channels(hu, windows) * 255.0).astype(np.uint8)


def head(size: int = 64, seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """A synthetic head slice in HU: air outside, a bone ring, brain (30 HU) with a blood blob (70 HU)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    hu = np.full((size, size), -1000.0, np.float32)
    hu[r < 0.45 * size] = 1200.0
    hu[r < 0.40 * size] = 30.0
    hu[np.hypot(yy - 0.4 * size, xx - 0.55 * size) < 0.1 * size] = 70.0
    brain = r < 0.40 * size
    hu[brain] += (noise * rng.standard_normal(int(brain.sum()))).astype(np.float32)
    return hu


def brain_mask(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.hypot(yy - size / 2, xx - size / 2) < 0.38 * size


def domain_aug(seed: int = 0, **kw) -> Augmentation:
    return Augmentation(AugmentConfig(**NO_SEED, **kw), seed=seed)


# ----------------------------------------------------------------------------------------------- HU round trip

def test_windows_to_hu_round_trip_within_one_step() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-150.0, 230.0, size=(64, 64)).astype(np.float32)
    back = windows_to_hu(to_u8(hu), WINDOWS)
    assert back.dtype == np.float32 and back.shape == hu.shape
    widest_step = 380.0 / 255.0
    assert np.abs(back - hu).max() <= widest_step / 2 + 1e-3
    # inside the brain window the value comes from the brain channel: 80/255 HU per level
    in_brain = (hu > 1.0) & (hu < 79.0)
    assert in_brain.sum() > 100
    assert np.abs(back - hu)[in_brain].max() <= 80.0 / 255.0 / 2 + 1e-3
    # and the narrow windows are actually used (the widest alone would be ~4.7x coarser)
    assert np.abs(back - hu)[in_brain].mean() < 0.5 * widest_step / 4
    # the inverse gives back the cached image up to one gray level (re-quantising the wider windows)
    again = to_u8(back)
    assert np.abs(again.astype(int) - to_u8(hu).astype(int)).max() <= 1
    unsat = (to_u8(hu)[0] > 0) & (to_u8(hu)[0] < 255)  # the brain channel is exact where it was used
    assert np.array_equal(again[0][unsat], to_u8(hu)[0][unsat])


def test_windows_to_hu_saturated_and_channel_order() -> None:
    hu = np.array([[-1000.0, -150.0, 35.0, 230.0, 2000.0]], np.float32)
    back = windows_to_hu(to_u8(hu), SEED_WINDOWS)  # a name -> window dict works too
    assert back[0, 0] == pytest.approx(-150.0) and back[0, 4] == pytest.approx(230.0)  # saturated: window ends
    assert back[0, 2] == pytest.approx(35.0, abs=0.2)
    # channel order follows the windows list, not their widths
    rev = WINDOWS[::-1]
    assert np.allclose(windows_to_hu(to_u8(hu, rev), rev), back)
    with pytest.raises(ValueError, match="one channel per window"):
        windows_to_hu(to_u8(hu)[:2], WINDOWS)
    with pytest.raises(ValueError, match="uint8"):
        windows_to_hu(to_u8(hu).astype(np.float32), WINDOWS)


# ------------------------------------------------------------------------------------------- the HU transforms

def test_offset_shifts_brain_channel() -> None:
    hu = np.random.default_rng(1).uniform(5.0, 50.0, size=(32, 32)).astype(np.float32)
    img = to_u8(hu)
    shift = 20.0 / 80.0 * 255.0  # 63.75 gray levels per +20 HU in the brain window
    aug = domain_aug(hu_p=1.0, hu_offset=20.0)
    out = aug.apply_domain(img, {"offset": 20.0})
    assert np.array_equal(out[0].astype(int) - img[0].astype(int), np.full(img[0].shape, round(shift)))
    # through __call__ (the seed's transforms off) with the draw pinned to +20 HU
    aug.draw_domain_params = lambda: {"offset": 20.0}
    called = np.rint(aug(img) * 255.0).astype(int)
    assert np.array_equal(called, out.astype(int))
    # drawn offsets: one shift per image, |d| <= 20 HU, not always the same
    shifts = set()
    for seed in range(6):
        out = np.rint(domain_aug(seed, hu_p=1.0, hu_offset=20.0)(img) * 255.0)[0]
        unsat = (out > 0) & (out < 255)  # a negative offset pushes the lowest values out of the brain window
        assert unsat.sum() > 0.5 * unsat.size
        d = out[unsat] - img[0][unsat]
        assert d.max() - d.min() <= 1 and abs(d.mean()) <= shift + 1
        shifts.add(round(float(d.mean())))
    assert len(shifts) > 2


def test_gain_is_about_water() -> None:
    hu = np.array([[0.5, 40.0, 80.0]], np.float32)
    out = domain_transform(hu, gain=1.1)
    assert np.allclose(out, hu * 1.1)
    assert np.allclose(domain_transform(hu, gain=1.1, offset=5.0), hu * 1.1 + 5.0)  # gain before offset


def test_saturated_pixels_stay_saturated() -> None:
    hu = head()
    img = to_u8(hu)
    out = domain_aug().apply_domain(img, {"offset": 20.0, "noise_sigma": 30.0, "gain": 0.9})
    air, bone = hu < -500, hu > 500
    assert np.all(out[:, air] == 0) and np.all(out[:, bone] == 255)
    assert not np.array_equal(out[:, brain_mask()], img[:, brain_mask()])


def test_noise_raises_std_of_flat_region() -> None:
    img = to_u8(head())
    inside = brain_mask() & (to_u8(head())[0] == img[0, 32, 20])  # the flat 30 HU brain, away from the blob
    assert inside.sum() > 500
    assert img[0][inside].std() == 0
    out = domain_aug().apply_domain(img, {"noise_sigma": 10.0})
    hu_out = windows_to_hu(out, WINDOWS)
    assert 8.0 < hu_out[inside].std() < 12.0
    assert abs(float(hu_out[inside].mean()) - 30.0) < 1.5
    # drawn: sigma ~ U(0, noise_hu)
    drawn = domain_aug(3, hu_p=1.0, noise_hu=20.0)(img)
    assert drawn[0][inside].std() > 0


def test_blur_lowers_and_sharpen_raises_std_of_noisy_image() -> None:
    hu = 40.0 + 12.0 * np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32)
    img = to_u8(hu)
    inside = np.zeros(hu.shape, bool)
    inside[4:-4, 4:-4] = True  # away from the border handling
    std0 = windows_to_hu(img, WINDOWS)[inside].std()
    aug = domain_aug()
    blurred = windows_to_hu(aug.apply_domain(img, {"blur_sigma": 1.0}), WINDOWS)[inside].std()
    sharpened = windows_to_hu(aug.apply_domain(img, {"sharpen": 1.0}), WINDOWS)[inside].std()
    assert blurred < 0.6 * std0
    assert sharpened > 1.2 * std0
    # drawn with kernel_p = 1: every image changes
    for seed in range(4):
        assert not np.array_equal(np.rint(domain_aug(seed, kernel_p=1.0)(img) * 255.0), img)


def test_jpeg_round_trip_changes_image_but_keeps_hu(monkeypatch: pytest.MonkeyPatch) -> None:
    from ichd.io import images

    calls = []
    real = images.ctich_to_hu

    def spy(brain, bone=None, **kw):
        calls.append((brain.dtype, bone.dtype, brain.shape))
        return real(brain, bone, **kw)

    monkeypatch.setattr(images, "ctich_to_hu", spy)
    hu = head(noise=8.0)
    img = to_u8(hu)
    out = domain_aug().apply_domain(img, {"jpeg_quality": 75})
    assert calls == [(np.uint8, np.uint8, hu.shape)]  # merged back by ichd.io.images.ctich_to_hu
    assert not np.array_equal(out, img)
    hu_in, hu_out = windows_to_hu(img, WINDOWS), windows_to_hu(out, WINDOWS)
    window = (hu_in > -20) & (hu_in < 100) & brain_mask()
    assert window.sum() > 500
    err = np.abs(hu_out - hu_in)[window]
    assert np.median(err) < 15.0 and np.median(err) > 0
    assert np.mean(err) < 8.0
    # drawn with jpeg_p = 1
    calls.clear()
    domain_aug(jpeg_p=1.0)(img)
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------ off, seeding, config

def test_all_domain_off_is_the_old_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    img = to_u8(head(noise=5.0))
    cfg = AugmentConfig(**NO_SEED)
    assert not cfg.domain_enabled
    assert not AugmentConfig().domain_enabled
    assert not AugmentConfig(hu_p=1.0).domain_enabled  # no magnitude: nothing to do
    assert not AugmentConfig(hu_offset=20.0).domain_enabled  # hu_p = 0

    def boom(*a, **kw):
        raise AssertionError("the HU round trip ran with every domain transform off")

    monkeypatch.setattr(augment_mod, "_windows_to_hu", boom)
    out = Augmentation(cfg, seed=0)(img)
    assert out.dtype == np.float32
    assert np.array_equal(out, img.astype(np.float32) * np.float32(1.0 / 255.0))
    # the seed's transforms alone: same as before (default config, seeded)
    assert np.array_equal(train_augmentation(seed=4)(img), train_augmentation(seed=4)(img))


def test_domain_on_does_the_round_trip() -> None:
    img = to_u8(head(noise=5.0))
    aug = domain_aug(hu_p=1.0, hu_offset=10.0, noise_hu=5.0, kernel_p=1.0, jpeg_p=1.0)
    assert aug.domain
    assert not np.array_equal(np.rint(aug(img) * 255.0), img)


def test_same_seed_same_output_and_reseed_reproduces() -> None:
    img = to_u8(head(noise=5.0))
    cfg = AugmentConfig(hu_p=0.7, hu_gain=0.05, hu_offset=10.0, noise_hu=8.0, kernel_p=0.5, jpeg_p=0.5)
    a, b = Augmentation(cfg, seed=11), Augmentation(cfg, seed=11)
    first = [a(img) for _ in range(4)]
    assert all(np.array_equal(x, b(img)) for x in first)
    a.reseed(11)
    assert all(np.array_equal(x, a(img)) for x in first)
    c = Augmentation(cfg, seed=12)
    assert not all(np.array_equal(x, c(img)) for x in first)
    # the domain draws alone are reproducible through reseed too
    d = Augmentation(AugmentConfig(**NO_SEED, hu_p=1.0, noise_hu=8.0), seed=1)
    x1 = d(img)
    d.reseed(1)
    assert np.array_equal(x1, d(img))
    d.reseed(2)
    assert not np.array_equal(x1, d(img))


def test_train_augmentation_passes_windows() -> None:
    windows = [(40.0, 80.0), (40.0, 380.0)]
    aug = train_augmentation({**NO_SEED, "hu_p": 1.0, "hu_offset": 20.0}, seed=0, windows=windows)
    assert aug.windows == windows
    hu = np.random.default_rng(2).uniform(5.0, 50.0, size=(16, 16)).astype(np.float32)
    img = to_u8(hu, windows)
    out = aug.apply_domain(img, {"offset": 20.0})
    assert np.array_equal(out[0].astype(int) - img[0], np.full(img[0].shape, 64))
    with pytest.raises(ValueError, match="one channel per window"):
        aug(to_u8(hu))  # three channels, two windows
    assert train_augmentation().windows == WINDOWS


@pytest.mark.parametrize("field, value", [
    ("hu_p", 1.5), ("hu_p", -0.1), ("kernel_p", 2.0), ("kernel_p", -1.0), ("jpeg_p", 1.01),
    ("hu_offset", -1.0), ("noise_hu", -0.5), ("hu_gain", -0.1), ("hu_gain", 1.0), ("sharpen", -1.0),
    ("blur_sigma", 0.1), ("jpeg_quality_min", 0), ("jpeg_quality_min", 96), ("jpeg_quality_min", 80.5),
    ("noise_hu", float("nan")),
])
def test_config_validation(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        AugmentConfig(**{field: value})
    with pytest.raises(ConfigError):
        train_augmentation({field: value})
