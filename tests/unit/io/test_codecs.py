"""ichd's imagecodecs decoder plugin (ichd.io.codecs): used first for JPEG Lossless and JPEG-LS, exact, with
pydicom's own plugins as the fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from ichd.io import codecs, read_ct
from ichd.testing.factories import expected_hu, make_ct_series, phantom_hu, write_series

ROWS = 32


def _expected(n: int) -> np.ndarray:
    return np.stack([expected_hu(phantom_hu(ROWS, ROWS, -10.0 + k * 2.5)) for k in range(n)])


@pytest.fixture
def plugin_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Transfer syntaxes the imagecodecs plugin decoded (spies on the codecs it calls)."""
    import imagecodecs

    calls: list[str] = []
    for name in ("jpeg8_decode", "jpegls_decode"):
        real = getattr(imagecodecs, name)

        def spy(src: bytes, *args: object, _real=real, _name=name, **kwargs: object) -> np.ndarray:
            calls.append(_name)
            return _real(src, *args, **kwargs)

        monkeypatch.setattr(imagecodecs, name, spy)
    return calls


@pytest.mark.parametrize(("ts", "codec"), [(JPEGLosslessSV1, "jpeg8_decode"), (JPEGLSLossless, "jpegls_decode")],
                         ids=["jpeg-lossless", "jpeg-ls"])
@pytest.mark.parametrize("pixel_representation", [0, 1], ids=["unsigned", "signed"])
def test_plugin_decodes_exactly_and_is_used_first(tmp_path: Path, ts: str, codec: str, pixel_representation: int,
                                                  plugin_calls: list[str]) -> None:
    intercept = -1024.0 if pixel_representation == 0 else 0.0
    write_series(tmp_path, make_ct_series(4, transfer_syntax=ts, pixel_representation=pixel_representation,
                                          intercept=intercept))
    (series,) = read_ct(tmp_path, workers=1)
    np.testing.assert_array_equal(series.hu, _expected(4))
    assert plugin_calls == [codec] * 4
    assert codecs.preferred_plugin(ts) == codecs.PLUGIN


@pytest.mark.parametrize("ts", [JPEGLosslessSV1, JPEGLSLossless], ids=["jpeg-lossless", "jpeg-ls"])
def test_pydicom_plugins_take_over_when_the_fast_plugin_fails(tmp_path: Path, ts: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import imagecodecs

    def broken(src: bytes, *args: object, **kwargs: object) -> np.ndarray:
        raise imagecodecs.DelayedImportError("simulated codec failure")

    monkeypatch.setattr(imagecodecs, "jpeg8_decode", broken)
    monkeypatch.setattr(imagecodecs, "jpegls_decode", broken)
    write_series(tmp_path, make_ct_series(3, transfer_syntax=ts))
    (series,) = read_ct(tmp_path, workers=1)
    np.testing.assert_array_equal(series.hu, _expected(3))
    assert series.warnings == []


def test_plugin_is_unavailable_without_imagecodecs(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imagecodecs" else real(name, *a))
    assert not codecs.is_available(JPEGLSLossless)
    assert not codecs.is_available(JPEGLosslessSV1)


def test_other_syntaxes_keep_pydicoms_plugins() -> None:
    for ts in (RLELossless, JPEG2000Lossless, "1.2.840.10008.1.2.1"):
        assert codecs.preferred_plugin(ts) is None
        assert codecs.decode_options(ts) == {}
        assert not codecs.is_available(ts)


def test_gil_free_series_decode_in_threads_and_agree_with_serial(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from ichd.io import decode

    n = decode.MIN_SLICES_FOR_THREADS + 4
    write_series(tmp_path, make_ct_series(n, transfer_syntax=JPEGLSLossless), shuffle_seed=2)
    (serial,) = read_ct(tmp_path, workers=1)

    def no_processes(self: decode.FrameDecoder) -> None:
        raise AssertionError("a GIL-free series must not start worker processes")

    pools: list[int] = []

    class CountingThreads(decode.ThreadPoolExecutor):
        def __init__(self, workers: int, **kwargs: object) -> None:
            pools.append(workers)
            super().__init__(workers, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decode.FrameDecoder, "_process_pool", no_processes)
    monkeypatch.setattr(decode, "ThreadPoolExecutor", CountingThreads)
    (threaded,) = read_ct(tmp_path, workers=2)
    assert pools == [2]
    np.testing.assert_array_equal(threaded.hu, serial.hu)
    np.testing.assert_array_equal(serial.hu, _expected(n))
    # a smaller series is decoded in the calling process: no thread pool to start
    small = tmp_path / "small"
    write_series(small, make_ct_series(decode.MIN_SLICES_FOR_THREADS - 1, transfer_syntax=JPEGLSLossless))
    (in_process,) = read_ct(small, workers=2)
    assert pools == [2] and in_process.hu.shape[0] == decode.MIN_SLICES_FOR_THREADS - 1
    assert decode.releases_gil([decode.DecodeJob("x", None, None, JPEGLSLossless, None, (1, 1))])  # type: ignore[arg-type]
    assert not decode.releases_gil([decode.DecodeJob("x", None, None, RLELossless, None, (1, 1))])  # type: ignore[arg-type]


@pytest.mark.parametrize("ts", [JPEGLosslessSV1, JPEGLSLossless], ids=["jpeg-lossless", "jpeg-ls"])
@pytest.mark.parametrize("pixel_representation", [0, 1], ids=["unsigned", "signed"])
@pytest.mark.parametrize("bits_stored", [12, 16])
def test_direct_decode_equals_pydicoms_pipeline(tmp_path: Path, ts: str, pixel_representation: int,
                                                bits_stored: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsigned single-frame images, and signed ones with 16 bits stored, skip pydicom's pixel pipeline
    (decode.decode_direct) with the same result; other signed ones go through pydicom (its sign handling)."""
    from ichd.io import decode

    intercept = -1024.0 if pixel_representation == 0 else 0.0
    write_series(tmp_path, make_ct_series(4, transfer_syntax=ts, pixel_representation=pixel_representation,
                                          intercept=intercept, bits_stored=bits_stored))
    direct_calls: list[bool] = []
    real = decode.decode_direct

    offsets: list[bool] = []

    def spy(job: decode.DecodeJob) -> np.ndarray | None:
        got = real(job)
        direct_calls.append(got is not None)
        offsets.append(job.pixel_offset is not None)  # found by the header pass: the data set is not parsed again
        return got

    monkeypatch.setattr(decode, "decode_direct", spy)
    (fast,) = read_ct(tmp_path, workers=1)
    assert direct_calls == [pixel_representation == 0 or bits_stored == 16] * 4
    assert offsets == [True] * 4
    monkeypatch.setattr(decode, "decode_direct", lambda job: None)
    (through_pydicom,) = read_ct(tmp_path, workers=1)
    np.testing.assert_array_equal(fast.hu, through_pydicom.hu)
    np.testing.assert_array_equal(fast.hu, _expected(4))
