"""preprocess_series: windows -> pad -> resize -> cache dtype."""

from __future__ import annotations

import numpy as np

from ichd.preprocessing.config import PreprocessConfig
from ichd.preprocessing.pipeline import from_cache_dtype, preprocess_hu, preprocess_series, to_cache_dtype
from ichd.types import CTSeries


def _series(hu: np.ndarray) -> CTSeries:
    n = hu.shape[0]
    return CTSeries(hu=hu.astype(np.float32), spacing_mm=(5.0, 0.5, 0.5), positions_mm=np.arange(n) * 5.0,
                    sop_instance_uids=[f"s{i}" for i in range(n)], study_instance_uid="st", series_instance_uid="se")


def test_uint8_output_values() -> None:
    hu = np.full((3, 40, 40), 80.0)
    out = preprocess_series(_series(hu), PreprocessConfig(image_size=20))
    assert out.shape == (3, 3, 20, 20) and out.dtype == np.uint8
    assert out[0, 0, 5, 5] == 255 and out[0, 1, 5, 5] == 128 and out[0, 2, 5, 5] == round(230 / 380 * 255)


def test_float16_output_and_chunking_consistent() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-200, 200, (11, 32, 32)).astype(np.float32)
    cfg = PreprocessConfig(image_size=16, cache_dtype="float16")
    a = preprocess_hu(hu, cfg, chunk=3)
    b = preprocess_hu(hu, cfg, chunk=16)
    assert a.dtype == np.float16 and a.shape == (11, 3, 16, 16)
    np.testing.assert_array_equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_cache_dtype_round_trip() -> None:
    x = np.linspace(0, 1, 256, dtype=np.float32)
    np.testing.assert_allclose(from_cache_dtype(to_cache_dtype(x, "uint8")), x, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(from_cache_dtype(to_cache_dtype(x, "float16")), x, atol=1e-3)
    assert to_cache_dtype(np.array([-1.0, 2.0]), "uint8").tolist() == [0, 255]


def test_crop_to_the_head_frames_the_head_the_same_in_chunks_and_at_once():
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.preprocessing.head_mask import head_crop_box, head_mask
    from ichd.preprocessing.pipeline import input_crop_box, preprocess_hu
    from ichd.testing.factories import phantom_hu

    vol = np.stack([phantom_hu(128, 160), phantom_hu(128, 160, z=3.0), np.full((128, 160), -1000.0, np.float32)])
    cfg = PreprocessConfig(image_size=32, crop="head")
    whole = preprocess_hu(vol, cfg, pixel_spacing=(1.0, 1.0))
    box = input_crop_box(vol, cfg, (1.0, 1.0))
    assert box == head_crop_box(head_mask(vol, (1.0, 1.0)))
    chunks = np.concatenate([preprocess_hu(vol[i:i + 1], cfg, crop_box=box) for i in range(3)])
    np.testing.assert_array_equal(whole, chunks)
    plain = preprocess_hu(vol, PreprocessConfig(image_size=32))
    assert not np.array_equal(whole, plain)  # the crop changes the framing
    assert whole[0].mean() > plain[0].mean()  # the head fills more of the image
    assert PreprocessConfig().cache_key() == {k: v for k, v in PreprocessConfig().to_dict().items()
                                              if k not in ("normalization", "crop", "simulate_window")}  # old caches still match
    assert cfg.cache_key()["crop"] == "head"


def test_simulate_window_renders_the_slices_as_a_windowed_export_would():
    from ichd.preprocessing.windows import simulate_display_window
    from ichd.testing.factories import phantom_hu

    vol = np.stack([phantom_hu(64, 64), phantom_hu(64, 64, z=3.0)])
    cfg = PreprocessConfig(image_size=32, simulate_window=(40, 80))
    np.testing.assert_array_equal(preprocess_hu(vol, cfg),
                                  preprocess_hu(simulate_display_window(vol, 40, 80), PreprocessConfig(image_size=32)))
    assert not np.array_equal(preprocess_hu(vol, cfg), preprocess_hu(vol, PreprocessConfig(image_size=32)))
    assert cfg.cache_key()["simulate_window"] == [40.0, 80.0]  # a cache of it never resumes a plain one
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
