"""The imagecodecs plugin against pydicom's own plugins on real scanner series: every pixel identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder, pixel_array

from ichd.io import codecs


def _files(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert files, f"no files in {folder}"
    return files[:n]


@pytest.mark.parametrize("series", ["cq500/CQ500-CT-0/series-6_4cc-sec-150cc-D3D-on",
                                    "rsna-series/dicom/ID_7518324893"], ids=["cq500-jpeg-lossless", "rsna-jpeg-ls"])
def test_plugin_matches_pydicom_plugins_on_real_series(data_root: Path, series: str) -> None:
    files = _files(data_root / series, 12)
    ts = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert codecs.preferred_plugin(ts) == codecs.PLUGIN
    others = [p for p in get_decoder(ts).available_plugins if p != codecs.PLUGIN]
    assert others, f"no pure plugin for {ts.name} to compare with"
    for f in files:
        ours = pixel_array(f, decoding_plugin=codecs.PLUGIN)
        for other in others:
            theirs = pixel_array(f, decoding_plugin=other)
            assert ours.dtype == theirs.dtype, (f.name, other)
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{f.name}: {codecs.PLUGIN} vs {other}")


@pytest.mark.parametrize("series", ["rsna-series/dicom/ID_7518324893", "rsna-series/dicom/ID_3d2ee1643b",
                                    "cq500/CQ500-CT-0/series-6_4cc-sec-150cc-D3D-on"])
def test_direct_decode_matches_pydicom_on_real_series(data_root: Path, series: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The unsigned RSNA JPEG-LS slices and the signed 16-bit CQ500 JPEG lossless ones skip pydicom's pixel
    pipeline (ichd.io.decode.decode_direct): the same volume as through pydicom, pixel for pixel."""
    from ichd.io import decode, read_ct

    calls: list[bool] = []
    real = decode.decode_direct

    def spy(job: decode.DecodeJob) -> np.ndarray | None:
        got = real(job)
        calls.append(got is not None and job.pixel_offset is not None)  # read at the offset the header pass found
        return got

    monkeypatch.setattr(decode, "decode_direct", spy)
    (fast,) = read_ct(data_root / series, workers=1)
    assert calls == [True] * fast.hu.shape[0]
    monkeypatch.setattr(decode, "decode_direct", lambda job: None)
    (slow,) = read_ct(data_root / series, workers=1)
    np.testing.assert_array_equal(fast.hu, slow.hu)
