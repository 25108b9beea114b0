"""Pixel Data checked against the image tags in the header pass (ichd.io.pixel_checks): native length (one pad byte
legal, a short or frame-sized excess skipped, a few trailing bytes a warning) and the end-of-image marker of
encapsulated JPEG-family frames (a cut JPEG-LS stream, which CharLS decodes silently, is skipped)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from ichd.io.dicom import Skipped, read_dicom, read_header
from ichd.io.pixel_checks import OK, PixelDataCheck, native_length_check
from ichd.io.sources import DicomSource, folder_sources
from ichd.testing.factories import make_ct_series, make_ct_slice, write_series


def test_native_length_rules() -> None:
    assert native_length_check(32 * 32 * 2, 32, 32, 16) is OK
    assert native_length_check(3 * 3, 3, 3, 8) is OK and native_length_check(3 * 3 + 1, 3, 3, 8) is OK  # one pad
    assert native_length_check(32 * 32 * 2 * 3, 32, 32, 16, frames=3) is OK
    short = native_length_check(100, 32, 32, 16).problem
    assert short is not None and short.reason == "bad_tags" and "need 2048" in short.detail
    double = native_length_check(32 * 32 * 2, 32, 32, 8).problem  # BitsAllocated 8 on 16-bit data
    assert double is not None and "do not describe the data" in double.detail
    assert native_length_check(32 * 32 * 2 + 64, 32, 32, 16) == PixelDataCheck(excess_bytes=64)


def _header(path: Path):
    return read_header(DicomSource(str(path)))


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, "1.2.840.10008.1.2.1"])
def test_native_pixel_data_against_tags(tmp_path: Path, syntax: str) -> None:
    cases = {"ok": {}, "bits8": {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}}
    for name, tags in cases.items():
        ds = make_ct_slice(rows=32, columns=32, transfer_syntax=syntax)
        for k, v in tags.items():
            setattr(ds, k, v)
        write_series(tmp_path / name, [ds])
    assert not isinstance(_header(next((tmp_path / "ok").iterdir())), Skipped)
    skipped = _header(next((tmp_path / "bits8").iterdir()))
    assert isinstance(skipped, Skipped) and skipped.reason == "bad_tags" and "BitsAllocated 8" in skipped.detail

    long = make_ct_slice(rows=32, columns=32, transfer_syntax=syntax)
    long.PixelData = long.PixelData * 2
    short = make_ct_slice(rows=32, columns=32, transfer_syntax=syntax)
    short.PixelData = short.PixelData[:1000]
    write_series(tmp_path / "long", [long])
    write_series(tmp_path / "short", [short])
    for name in ("long", "short"):
        got = _header(next((tmp_path / name).iterdir()))
        assert isinstance(got, Skipped) and got.reason == "bad_tags", name


def test_a_few_trailing_bytes_are_read_with_a_warning(tmp_path: Path) -> None:
    dss = make_ct_series(3, rows=32, columns=32)
    dss[1].PixelData = dss[1].PixelData + bytes(6)
    write_series(tmp_path / "in", dss)
    sources, _ = folder_sources(tmp_path / "in")
    result = read_dicom(sources, workers=1)
    (series,) = result.series
    assert series.hu.shape == (3, 32, 32) and not result.skipped
    (warning,) = [w for w in series.warnings if w.code == "excess_pixel_data"]
    assert "6 byte(s)" in warning.message and len(warning.files) == 1


@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEG2000Lossless])
def test_compressed_frame_without_end_marker_is_skipped(tmp_path: Path, syntax: str) -> None:
    dss = make_ct_series(3, rows=32, columns=32, transfer_syntax=syntax)
    frame = b"".join(next(generate_fragmented_frames(dss[2].PixelData)))
    assert frame.rstrip(b"\x00").endswith(b"\xff\xd9")
    dss[2].PixelData = encapsulate([frame[: len(frame) // 3]])
    dss[1].PixelData = encapsulate([frame], fragments_per_frame=3)  # several fragments: the last one ends the frame
    write_series(tmp_path / "in", dss)
    names = sorted((tmp_path / "in").iterdir())
    assert not isinstance(_header(names[0]), Skipped) and not isinstance(_header(names[1]), Skipped)
    cut = _header(names[2])
    assert isinstance(cut, Skipped) and cut.reason == "decode_failed"
    assert "cut short" in cut.detail and "FFD9" in cut.detail
    sources, _ = folder_sources(tmp_path / "in")
    result = read_dicom(sources, workers=1)
    assert result.series[0].hu.shape[0] == 2 and [s.reason for s in result.skipped] == ["decode_failed"]


def test_rle_has_no_end_marker_rule(tmp_path: Path) -> None:
    (ds,) = make_ct_series(1, rows=32, columns=32, transfer_syntax=RLELossless)
    write_series(tmp_path / "in", [ds])
    assert not isinstance(_header(next((tmp_path / "in").iterdir())), Skipped)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", JPEGLSLossless, RLELossless])
def test_truncated_file_is_skipped_not_decoded(tmp_path: Path, syntax: str) -> None:
    """A file cut inside its pixel data: some decoders (CharLS) would decode the part that is there."""
    (ds,) = make_ct_series(1, rows=64, columns=64, transfer_syntax=syntax)
    write_series(tmp_path / "in", [ds])
    path = next((tmp_path / "in").iterdir())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    got = _header(path)
    assert isinstance(got, Skipped) and got.reason == "decode_failed" and "the file is truncated" in got.detail, got


def test_missing_sequence_delimiter_after_a_whole_fragment_is_read(tmp_path: Path) -> None:
    (ds,) = make_ct_series(1, rows=32, columns=32, transfer_syntax=JPEGLSLossless)
    write_series(tmp_path / "in", [ds])
    path = next((tmp_path / "in").iterdir())
    data = path.read_bytes()
    assert data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    path.write_bytes(data[:-8])
    assert not isinstance(_header(path), Skipped)
