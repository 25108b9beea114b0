"""Unit tests for ``ichd ingest``: JSON output, readable output, exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ichd.cli.main import run
from ichd.testing.factories import make_ct_series, write_series


def test_ingest_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(tmp_path / "s", make_ct_series(6, tilt_deg=10.0, gap_at=2))
    assert run(["-q", "ingest", str(tmp_path / "s"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (series,) = out["series"]
    assert out["n_series"] == 1
    assert series["n_slices"] == 5
    assert series["tilt_deg"] == 10.0
    assert len(series["gaps"]) == 1
    assert {w["code"] for w in series["warnings"]} == {"gap", "gantry_tilt"}
    for key in ("study_instance_uid", "series_instance_uid", "spacing_mm", "duplicates"):
        assert key in series


def test_ingest_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(tmp_path, make_ct_series(3))
    assert run(["-q", "ingest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "slices: 3" in out and "1 series, 3 slices from 1 input(s)" in out


@pytest.mark.parametrize("args", [["ingest", "/definitely/not/here"], ["ingest"], ["ingest", "--window", "40"]])
def test_bad_input_exits_2_with_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ichd: error:") and len(err.splitlines()) == 1 and "Traceback" not in err


def test_strict_fails_on_garbage_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(tmp_path, make_ct_series(3))
    (tmp_path / "junk.dcm").write_bytes(b"junk" * 50)
    assert run(["-q", "ingest", str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    assert run(["-q", "ingest", str(tmp_path), "--strict"]) == 2
    assert "junk.dcm: not a DICOM file" in capsys.readouterr().err


def test_help() -> None:
    assert run(["ingest", "--help"]) == 0


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-q", "ingest", "--demo", "--json"]) == 0
    (series,) = json.loads(capsys.readouterr().out)["series"]
    assert series["source_kind"] == "ctich" and series["n_slices"] > 10
    assert run(["-q", "ingest", "--demo", "somewhere"]) == 2
    assert "not both" in capsys.readouterr().err


def test_missing_decoder_is_one_line_naming_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from pydicom.pixels.decoders.base import Decoder
    from pydicom.uid import RLELossless

    write_series(tmp_path, make_ct_series(2, transfer_syntax=RLELossless))
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    assert run(["-q", "ingest", str(tmp_path)]) == 3  # DependencyError's exit code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install pylibjpeg pylibjpeg-rle" in err
