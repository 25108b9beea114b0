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
