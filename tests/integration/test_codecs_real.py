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
