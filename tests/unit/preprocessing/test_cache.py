"""build_cache / open_cache: layout, round trip, resume, refusal to mix settings, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ichd.errors import InputError
from ichd.io.images import read_ctich_patient
from ichd.preprocessing.cache import build_cache, open_cache, safe_file_stem
from ichd.preprocessing.config import PreprocessConfig
from ichd.preprocessing.pipeline import preprocess_series
from ichd.testing.factories import write_ctich_tree

CFG = PreprocessConfig(image_size=16)


def _ctich_root(root: Path, patients: dict[int, int]) -> Path:
    return write_ctich_tree(root, patients, size=24)


def test_build_and_open_round_trip(tmp_path: Path) -> None:
    root = _ctich_root(tmp_path / "ctich", {49: 4, 50: 3})
    out = tmp_path / "cache"
    summary = build_cache([root], out, CFG, workers=0)
    assert (summary.written, summary.slices_written, summary.total_slices, summary.failed) == (2, 7, 7, [])
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "series", "slices.csv"]
    cache = open_cache(out)
    assert cache.scan_ids == ["ctich-049", "ctich-050"] and len(cache) == 2 and "ctich-049" in cache
    arr = cache.array("ctich-049")
    assert arr.shape == (4, 3, 16, 16) and arr.dtype == np.uint8 and isinstance(arr, np.memmap)
    expected = preprocess_series(read_ctich_patient(root, 49), CFG)
    np.testing.assert_array_equal(arr, expected)
    np.testing.assert_array_equal(cache.slice_image("ctich-049-002"), expected[1])
    rows = cache.scan_slices("ctich-050")
    assert rows["slice_id"].tolist() == ["ctich-050-001", "ctich-050-002", "ctich-050-003"]
    assert rows["slice_index"].tolist() == [0, 1, 2] and rows["patient_id"].unique().tolist() == ["ctich-050"]
    assert rows["z_mm"].isna().all()  # JPGs carry no geometry
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocess"]["image_size"] == 16 and manifest["version"] == 1
    assert {e["file"] for e in manifest["series"]} == {"series/ctich-049.npy", "series/ctich-050.npy"}
    with pytest.raises(InputError):
        cache.array("nope")
    with pytest.raises(InputError):
        cache.slice_image("nope")


def test_resume_skips_done_and_rebuilds_lost(tmp_path: Path) -> None:
    root = _ctich_root(tmp_path / "ctich", {49: 2, 50: 2, 51: 2})
    out = tmp_path / "cache"
    first = build_cache([root], out, CFG, workers=0, patients=[49])
    assert first.written == 1
    second = build_cache([root], out, CFG, workers=0)
    assert (second.written, second.skipped_inputs, second.total_series) == (2, 1, 3)
    mtime = (out / "series" / "ctich-049.npy").stat().st_mtime_ns
    third = build_cache([root], out, CFG, workers=0)
    assert (third.written, third.skipped_inputs) == (0, 3)
    assert (out / "series" / "ctich-049.npy").stat().st_mtime_ns == mtime
    (out / "series" / "ctich-050.npy").unlink()
    fourth = build_cache([root], out, CFG, workers=0)
    assert fourth.written == 1 and len(open_cache(out).slices) == 6


def test_parallel_build_matches_serial(tmp_path: Path) -> None:
    root = _ctich_root(tmp_path / "ctich", {49: 3, 50: 2, 51: 2})
    build_cache([root], tmp_path / "a", CFG, workers=0)
    build_cache([root], tmp_path / "b", CFG, workers=2)
    a, b = open_cache(tmp_path / "a"), open_cache(tmp_path / "b")
    for scan in a.scan_ids:
        np.testing.assert_array_equal(a.array(scan), b.array(scan))
    assert sorted(a.slices.index) == sorted(b.slices.index)


def test_refuses_other_settings_and_foreign_folders(tmp_path: Path) -> None:
    root = _ctich_root(tmp_path / "ctich", {49: 2})
    out = tmp_path / "cache"
    build_cache([root], out, CFG, workers=0)
    with pytest.raises(InputError, match="different preprocessing"):
        build_cache([root], out, PreprocessConfig(image_size=32), workers=0)
    # a different normalisation preset does not change the cached arrays: resume is allowed
    assert build_cache([root], out, CFG.replace(normalization="half"), workers=0).skipped_inputs == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(InputError, match="not empty"):
        build_cache([root], foreign, CFG, workers=0)
    assert (foreign / "keep.txt").read_text() == "user data"
    with pytest.raises(InputError, match="does not exist"):
        build_cache([tmp_path / "missing"], tmp_path / "c2", CFG)


def test_failed_input_is_reported_and_others_cached(tmp_path: Path) -> None:
    root = _ctich_root(tmp_path / "ctich", {49: 2, 50: 2})
    (root / "brain" / "050" / "002.jpg").write_bytes(b"broken")
    summary = build_cache([root], tmp_path / "cache", CFG, workers=0)
    assert summary.written == 1 and len(summary.failed) == 1 and "050" in summary.failed[0][0]
    assert open_cache(tmp_path / "cache").scan_ids == ["ctich-049"]


def test_open_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not an ichd cache"):
        open_cache(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(InputError, match="not a valid"):
        open_cache(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 99, "preprocess": {}, "series": []}))
    with pytest.raises(InputError, match="version"):
        open_cache(tmp_path)


def test_safe_file_stem() -> None:
    assert safe_file_stem("1.2.840.113619") == "1.2.840.113619"
    assert safe_file_stem("a/b c") == "a_b_c"
    assert safe_file_stem("..") == "_.."


def test_multi_series_dicom_folder_is_planned_per_series(tmp_path: Path) -> None:
    from ichd.preprocessing.cache import expand_inputs
    from ichd.testing.factories import make_ct_series, write_series

    folder = tmp_path / "dicom"
    a = make_ct_series(4, patient_id="PAT-A", series_uid="1.2.3.1")
    b = make_ct_series(3, patient_id="PAT-B", series_uid="1.2.3.2")
    write_series(folder / "a", a)
    write_series(folder / "b", b)
    (folder / "notes.txt").write_text("not dicom")
    units = expand_inputs([folder])
    assert [u.kind for u in units] == ["dicom", "dicom"]
    assert sorted(len(u.sources) for u in units) == [3, 4]
    out = tmp_path / "cache"
    summary = build_cache([folder], out, CFG, workers=0)
    assert (summary.written, summary.total_slices, summary.failed) == (2, 7, [])
    cache = open_cache(out)
    assert sorted(cache.scan_ids) == ["1.2.3.1", "1.2.3.2"]
    assert cache.array("1.2.3.1").shape == (4, 3, 16, 16)
    rows = cache.scan_slices("1.2.3.1")
    assert rows["z_mm"].is_monotonic_increasing and rows["slice_index"].tolist() == [0, 1, 2, 3]
    assert rows["patient_id"].nunique() == 1 and "PAT-A" not in rows["patient_id"].iloc[0]  # pseudonymised
    assert build_cache([folder], out, CFG, workers=0).skipped_inputs == 2
    # one series only: the whole folder is one read_ct unit
    assert [u.kind for u in expand_inputs([folder / "a"])] == ["path"]


def test_crash_keeps_finished_units_and_resume_completes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ichd.preprocessing.cache as cache_mod

    root = _ctich_root(tmp_path / "ctich", {49: 2, 50: 2, 51: 2})
    out = tmp_path / "cache"
    real = cache_mod._process_input
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "FLUSH_SECONDS", 1e9)  # nothing flushed before the crash
    monkeypatch.setattr(cache_mod, "_process_input", crash_on_second)
    with pytest.raises(RuntimeError):
        build_cache([root], out, CFG, workers=0)
    assert open_cache(out).scan_ids == ["ctich-049"]  # flushed on the way out
    monkeypatch.setattr(cache_mod, "_process_input", real)
    summary = build_cache([root], out, CFG, workers=0)
    assert (summary.written, summary.skipped_inputs, summary.total_series) == (2, 1, 3)


def test_manifest_records_size_and_sha256_and_damage_is_rebuilt(tmp_path: Path) -> None:
    """A truncated or corrupted array is refused on load and rebuilt (only its unit) by the next build."""
    from ichd.utils.files import sha256_file

    root = _ctich_root(tmp_path / "ctich", {49: 3, 50: 2})
    out = tmp_path / "cache"
    build_cache([root], out, CFG, workers=0)
    entries = {e["scan_id"]: e for e in json.loads((out / "manifest.json").read_text())["series"]}
    for e in entries.values():
        path = out / e["file"]
        assert e["bytes"] == path.stat().st_size and e["sha256"] == sha256_file(path)
    good = out / entries["ctich-050"]["file"]
    good_stat = good.stat()
    damaged = out / entries["ctich-049"]["file"]
    intact = damaged.read_bytes()

    damaged.write_bytes(intact[: len(intact) // 2])  # truncated: refused on load, with a clear hint
    with pytest.raises(InputError, match="truncated or damaged") as err:
        open_cache(out).array("ctich-049")
    assert "ichd preprocess" in (err.value.hint or "")
    summary = build_cache([root], out, CFG, workers=0)
    assert (summary.written, summary.skipped_inputs, summary.total_slices) == (1, 1, 5)
    assert damaged.read_bytes() == intact and good.stat().st_ino == good_stat.st_ino  # only the damaged one redone

    flipped = bytearray(intact)  # same size, one byte changed: only the sha256 tells
    flipped[-1] ^= 0xFF
    damaged.write_bytes(bytes(flipped))
    assert open_cache(out).array("ctich-049").shape == (3, 3, 16, 16)  # the cheap size check passes
    with pytest.raises(InputError, match="sha256"):
        open_cache(out, verify=True).array("ctich-049")
    assert build_cache([root], out, CFG, workers=0).written == 0  # a resume checks sizes only ...
    assert build_cache([root], out, CFG, workers=0, verify=True).written == 1  # ... --verify every sha256
    assert damaged.read_bytes() == intact
    assert open_cache(out, verify=True).array("ctich-049").shape == (3, 3, 16, 16)


def test_killed_build_leftovers_are_cleaned_and_journal_taken_over(tmp_path: Path) -> None:
    """What ``kill -9`` can leave: temporary files, a journal with a cut last line, slices.csv rows the manifest
    does not list. The next build keeps the journaled units, ignores the rest and never reads a temporary file."""
    import ichd.preprocessing.cache as cache_mod

    root = _ctich_root(tmp_path / "ctich", {49: 2, 50: 2, 51: 2})
    out = tmp_path / "cache"
    build_cache([root], out, CFG, workers=0, patients=[49, 50])
    manifest = json.loads((out / "manifest.json").read_text())
    rows = open_cache(out).slices
    # as if the run had journaled 050 but not rewritten the manifest, and was killed writing 051
    rec50 = next(e for e in manifest["series"] if e["scan_id"] == "ctich-050")
    manifest["series"] = [e for e in manifest["series"] if e["scan_id"] != "ctich-050"]
    manifest["inputs"] = [k for k in manifest["inputs"] if not k.endswith(":050")]
    (out / "manifest.json").write_text(json.dumps(manifest))
    rows50 = rows[rows["scan_id"] == "ctich-050"].to_dict("records")
    line = json.dumps({"key": rec50["input"], "entries": [rec50], "rows": rows50})
    (out / cache_mod.JOURNAL).write_text(line + "\n" + line[: len(line) // 2])  # the last line cut by the kill
    (out / "series" / ".ctich-051.npy.x1y2.part.npy").write_bytes(b"\x93NUMPY half")
    (out / ".manifest.json.a1b2.part.json").write_text("{")
    assert len(open_cache(out).slices) == 2  # slices.csv still lists 050: hidden, the manifest does not
    mtime50 = (out / rec50["file"]).stat().st_mtime_ns

    summary = build_cache([root], out, CFG, workers=0)
    assert (summary.written, summary.skipped_inputs, summary.total_series, summary.total_slices) == (1, 2, 3, 6)
    assert (out / rec50["file"]).stat().st_mtime_ns == mtime50  # taken over from the journal, not redone
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "series", "slices.csv"]
    assert sorted(p.name for p in (out / "series").iterdir()) == ["ctich-049.npy", "ctich-050.npy", "ctich-051.npy"]
    cache = open_cache(out)
    assert cache.scan_ids == ["ctich-049", "ctich-050", "ctich-051"] and cache.slices["slice_id"].is_unique


def test_build_killed_before_its_first_unit_resumes(tmp_path: Path) -> None:
    root = _ctich_root(tmp_path / "ctich", {49: 2})
    out = tmp_path / "cache"
    (out / "series").mkdir(parents=True)
    (out / "series" / ".ctich-049.npy.q.part.npy").write_bytes(b"partial")
    assert build_cache([root], out, CFG, workers=0).written == 1
