"""Unit tests for ichd.io.dicom through read_ct, on synthetic DICOM from tests/factories.py."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from ichd.constants import AIR_HU
from ichd.errors import DependencyError, InputError
from ichd.io import read_ct
from ichd.io.decode import MIN_SLICES_FOR_POOL
from ichd.io.dicom import read_dicom
from ichd.io.sources import folder_sources
from ichd.io.summary import series_summary
from ichd.testing.factories import (
    SECONDARY_CAPTURE_STORAGE,
    expected_hu,
    make_ct_series,
    make_ct_slice,
    make_multiframe_ct,
    phantom_hu,
    to_bytes,
    write_series,
)

ROWS = 32


def series_hu(n: int, spacing: float = 2.5, z0: float = -10.0, tilt_deg: float = 0.0, skip: int | None = None
              ) -> np.ndarray:
    """The HU volume make_ct_series(n, ...) must read back as (inferior -> superior)."""
    step = spacing / math.cos(math.radians(tilt_deg))
    return np.stack([expected_hu(phantom_hu(ROWS, ROWS, z0 + k * step)) for k in range(n) if k != skip])


def codes(series) -> list[str]:
    return [w.code for w in series.warnings]


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                                RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1],
                         ids=lambda t: t.name)
def test_transfer_syntaxes_round_trip_exactly(tmp_path: Path, ts: str) -> None:
    write_series(tmp_path, make_ct_series(5, transfer_syntax=ts, reverse_instance_numbers=True), shuffle_seed=3)
    (series,) = read_ct(tmp_path)
    assert series.hu.dtype == np.float32 and series.hu.shape == (5, ROWS, ROWS)
    np.testing.assert_array_equal(series.hu, series_hu(5))
    assert series.spacing_mm == pytest.approx((2.5, 0.5, 0.5))
    assert np.all(np.diff(series.positions_mm) > 0)
    assert series.meta["transfer_syntaxes"] == [ts]
    assert series.warnings == []


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_pooled_and_serial_decode_agree(tmp_path: Path, pool: str, caplog: pytest.LogCaptureFixture) -> None:
    n = MIN_SLICES_FOR_POOL + 4
    write_series(tmp_path, make_ct_series(n, transfer_syntax=RLELossless), shuffle_seed=1)
    (a,) = read_ct(tmp_path, workers=1)
    with caplog.at_level("DEBUG", logger="ichd.io.decode"):
        (b,) = read_dicom(folder_sources(tmp_path)[0], workers=2, pool=pool).series  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.hu, series_hu(n))
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.sop_instance_uids == b.sop_instance_uids
    if pool == "process":
        from ichd.io.decode import start_method

        # forked workers write straight into the shared volume; when other threads run in this process (e.g. a
        # Dask client's, left by an earlier test) ichd uses forkserver and the slices come back through the pool
        expected = "writing into shared memory" if start_method() == "fork" else "slices sent back through the pool"
        assert expected in caplog.text
    b.hu[0, 0, 0] = 123.0  # the returned volume is an ordinary writable array
    assert b.hu.flags.writeable


def test_decode_failure_in_worker_process_is_a_skip(tmp_path: Path) -> None:
    datasets = make_ct_series(MIN_SLICES_FOR_POOL + 2)
    paths = write_series(tmp_path, datasets)
    paths[3].write_bytes(paths[3].read_bytes()[:-300])
    (s,) = read_ct(tmp_path, workers=2)
    assert s.n_slices == len(datasets) - 1
    assert any(w.code == "skipped_files" and "could not be decoded" in w.message for w in s.warnings)
    with pytest.raises(InputError, match="could not be decoded"):
        read_ct(tmp_path, workers=2, strict=True)


def test_tilt_from_tag_and_from_orientation(tmp_path: Path) -> None:
    write_series(tmp_path / "tag", make_ct_series(6, tilt_deg=15.0))
    (s,) = read_ct(tmp_path / "tag")
    assert s.tilt_deg == pytest.approx(15.0)
    assert s.meta["tilt_source"] == "GantryDetectorTilt"
    assert s.spacing_mm[0] == pytest.approx(2.5)  # along the normal, not along z
    np.testing.assert_array_equal(s.hu, series_hu(6, tilt_deg=15.0))
    assert codes(s) == ["gantry_tilt"]

    write_series(tmp_path / "ori", make_ct_series(6, tilt_deg=12.0, drop_tags=("GantryDetectorTilt",)))
    (s,) = read_ct(tmp_path / "ori")
    assert s.tilt_deg == pytest.approx(12.0, abs=1e-4)
    assert s.meta["tilt_source"] == "ImageOrientationPatient"


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    write_series(tmp_path, make_ct_series(4, monochrome1=True))
    (s,) = read_ct(tmp_path)
    np.testing.assert_array_equal(s.hu, series_hu(4))
    assert "monochrome1_inverted" in codes(s)


def test_rsna_bad_intercept_is_fixed(tmp_path: Path) -> None:
    datasets = make_ct_series(4, bad_intercept=True)
    assert datasets[0].BitsStored == 12 and datasets[0].PixelRepresentation == 0
    assert float(datasets[0].RescaleIntercept) == 1.0
    write_series(tmp_path, datasets)
    (s,) = read_ct(tmp_path)
    np.testing.assert_array_equal(s.hu, series_hu(4))
    assert "bad_intercept_fixed" in codes(s)
    assert float(s.hu.min()) == -1000.0  # air survives the wrap-around


def test_padding_and_out_of_fov_become_air(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:ROWS, 0:ROWS]
    corners = (yy - ROWS / 2) ** 2 + (xx - ROWS / 2) ** 2 > (ROWS / 2) ** 2
    write_series(tmp_path, make_ct_series(3, padding_value=-2000, padding_mask=corners))
    (s,) = read_ct(tmp_path)
    assert np.all(s.hu[:, corners] == AIR_HU)
    assert s.meta["air_fill"]["padding"] == 3 * int(corners.sum())


def test_duplicate_position_kept_once(tmp_path: Path) -> None:
    write_series(tmp_path, make_ct_series(6, duplicate=2))
    (s,) = read_ct(tmp_path)
    assert s.n_slices == 6
    assert "duplicate_position" in codes(s)
    assert len(s.meta["duplicates"]) == 1
    np.testing.assert_array_equal(s.hu, series_hu(6))


def test_repeated_file_is_a_duplicate_instance(tmp_path: Path) -> None:
    datasets = make_ct_series(4)
    write_series(tmp_path, [*datasets, datasets[1]])
    (s,) = read_ct(tmp_path)
    assert s.n_slices == 4 and "duplicate_instance" in codes(s)


def test_gap_is_reported(tmp_path: Path) -> None:
    write_series(tmp_path, make_ct_series(8, gap_at=3))
    (s,) = read_ct(tmp_path)
    assert s.n_slices == 7
    assert s.meta["gaps"] == [{"after_index": 3, "step_mm": 5.0, "expected_mm": 2.5}]
    assert codes(s) == ["gap"]
    np.testing.assert_array_equal(s.hu, series_hu(8, skip=4))


def test_instance_number_fallback_when_positions_missing(tmp_path: Path) -> None:
    datasets = make_ct_series(4, reverse_instance_numbers=True, drop_tags=("ImagePositionPatient",))
    write_series(tmp_path, datasets)
    (s,) = read_ct(tmp_path)
    assert codes(s) == ["instance_number_order"]
    assert np.isnan(s.positions_mm).all()
    np.testing.assert_array_equal(s.hu, series_hu(4)[::-1])  # instance numbers run superior -> inferior


def test_groups_by_study_and_series(tmp_path: Path) -> None:
    write_series(tmp_path / "a", make_ct_series(3, patient_id="P1"))
    write_series(tmp_path / "b", make_ct_series(4, patient_id="P2"))
    write_series(tmp_path / "c", make_ct_series(2, patient_id="P2", series_uid="1.2.3.4.5"))
    series = read_ct(tmp_path)
    assert sorted(s.n_slices for s in series) == [2, 3, 4]
    assert len({s.study_instance_uid for s in series}) == 2


def test_non_image_objects_are_skipped_with_counts(tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    good = make_ct_series(4, study_uid=study)
    others = [
        make_ct_slice(study_uid=study, series_uid="1.2.9.1", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                      orientation=(1, 0, 0, 0, 0, -1)),
        make_ct_slice(study_uid=study, series_uid="1.2.9.2", sop_class=SECONDARY_CAPTURE_STORAGE,
                      series_description="Dose Report", image_type=None),
        make_ct_slice(study_uid=study, series_uid="1.2.9.3", sop_class=SECONDARY_CAPTURE_STORAGE, modality="OT"),
        make_ct_slice(study_uid=study, series_uid="1.2.9.4", sop_class="1.2.840.10008.5.1.4.1.1.4", modality="MR"),
        make_ct_slice(study_uid=study, series_uid="1.2.9.5", orientation=(0, 1, 0, 0, 0, -1)),
    ]
    write_series(tmp_path, good + others)
    (s,) = read_ct(tmp_path, strict=True)  # non-images are not problems, even in strict mode
    assert s.n_slices == 4
    (w,) = [w for w in s.warnings if w.code == "skipped_non_image"]
    for text in ("skipped 5 file(s)", "1 localizer/scout", "1 dose report", "1 secondary capture", "1 not CT",
                 "1 not axial"):
        assert text in w.message


def test_secondary_capture_read_when_allowed(tmp_path: Path) -> None:
    hu = phantom_hu(ROWS, ROWS)
    write_series(tmp_path, [make_ct_slice(hu, sop_class=SECONDARY_CAPTURE_STORAGE, modality="OT",
                                          drop_tags=("ImagePositionPatient", "ImageOrientationPatient",
                                                     "PixelSpacing", "RescaleIntercept", "RescaleSlope",
                                                     "SliceThickness"),
                                          intercept=0.0)])
    with pytest.raises(InputError, match="allow-secondary-capture"):
        read_ct(tmp_path)
    (s,) = read_ct(tmp_path, allow_secondary_capture=True)
    np.testing.assert_array_equal(s.hu[0], expected_hu(hu))
    assert "secondary_capture" in codes(s)
    assert all(math.isnan(v) for v in s.spacing_mm)


def test_bad_files_skipped_in_lenient_mode_and_fatal_in_strict(tmp_path: Path) -> None:
    datasets = make_ct_series(5)
    paths = write_series(tmp_path, datasets)
    (tmp_path / "garbage.dcm").write_bytes(b"this is not DICOM at all" * 20)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(to_bytes(make_ct_slice(rows=ROWS, columns=ROWS, z=100.0, study_uid=datasets[0].StudyInstanceUID,
                                                 series_uid=datasets[0].SeriesInstanceUID))[:600])
    pixels_cut = tmp_path / "pixels_cut.dcm"
    pixels_cut.write_bytes(to_bytes(make_ct_slice(rows=ROWS, columns=ROWS, z=110.0,
                                                  study_uid=datasets[0].StudyInstanceUID,
                                                  series_uid=datasets[0].SeriesInstanceUID))[:-200])
    (tmp_path / "notes.txt").write_text("ignored by name, never a warning")
    (s,) = read_ct(tmp_path)
    assert s.n_slices == 5
    (w,) = [w for w in s.warnings if w.code == "skipped_files"]
    assert "skipped 3 file(s)" in w.message
    assert "1 not DICOM" in w.message and "1 missing required tags" in w.message
    assert "1 pixel data could not be decoded" in w.message
    assert {Path(f).name for f in w.files} == {"garbage.dcm", "truncated.dcm", "pixels_cut.dcm"}
    with pytest.raises(InputError, match=r"garbage\.dcm: not a DICOM file"):
        read_ct(tmp_path, strict=True)
    (tmp_path / "garbage.dcm").unlink()
    # the cut pixel data is found in the header pass (ichd.io.pixel_checks), so in file order: pixels_cut first
    with pytest.raises(InputError, match=r"pixels_cut\.dcm: pixel data could not be decoded \(the file is truncated"):
        read_ct(tmp_path, strict=True)
    pixels_cut.unlink()
    with pytest.raises(InputError, match=r"truncated\.dcm: image tag Rows is missing \(truncated file\?\)"):
        read_ct(tmp_path, strict=True)
    assert paths  # the good files were untouched


def test_geometry_describes_the_slices_that_decoded(tmp_path: Path) -> None:
    """A file whose pixels fail to decode is dropped before spacing, gaps and positions are reported: a middle
    slice lost leaves a gap, and a lost outlier leaves no uneven-spacing report behind."""
    datasets = make_ct_series(6, spacing=2.0)
    names = [f"s{i}.dcm" for i in range(6)]
    write_series(tmp_path, datasets, names=names)
    (tmp_path / "s2.dcm").write_bytes(to_bytes(datasets[2])[:-200])  # pixel data cut
    (s,) = read_ct(tmp_path, workers=1)
    assert s.n_slices == 5 and "gap" in codes(s)
    assert [g["after_index"] for g in s.meta["gaps"]] == [1]
    np.testing.assert_allclose(np.diff(s.positions_mm), [2.0, 4.0, 2.0, 2.0])
    assert [Path(f).name for f in s.meta["files"]] == ["s0.dcm", "s1.dcm", "s3.dcm", "s4.dcm", "s5.dcm"]
    np.testing.assert_array_equal(s.hu[2], read_ct(tmp_path / "s3.dcm", workers=1)[0].hu[0])

    (tmp_path / "s2.dcm").write_bytes(to_bytes(datasets[2]))  # restored
    far = make_ct_slice(rows=ROWS, columns=ROWS, z=float(datasets[-1].ImagePositionPatient[2]) + 7.0,
                        study_uid=datasets[0].StudyInstanceUID, series_uid=datasets[0].SeriesInstanceUID)
    (tmp_path / "far.dcm").write_bytes(to_bytes(far)[:-200])
    (s,) = read_ct(tmp_path, workers=1)
    assert s.n_slices == 6
    assert not {"gap", "uneven_spacing"} & set(codes(s))
    assert s.spacing_mm[0] == pytest.approx(2.0)


def test_missing_and_inconsistent_tags_name_file_and_tag(tmp_path: Path) -> None:
    datasets = make_ct_series(4)
    bad_missing = make_ct_slice(z=50.0, study_uid=datasets[0].StudyInstanceUID,
                                series_uid=datasets[0].SeriesInstanceUID, drop_tags=("PixelRepresentation",))
    bad_orient = make_ct_slice(z=60.0, study_uid=datasets[0].StudyInstanceUID,
                               series_uid=datasets[0].SeriesInstanceUID, extra={"ImageOrientationPatient": [1, 0, 0, 0, 1]})
    write_series(tmp_path, [*datasets, bad_missing, bad_orient], names=[*(f"ok{k}.dcm" for k in range(4)),
                                                                       "missing.dcm", "orient.dcm"])
    (s,) = read_ct(tmp_path)
    assert s.n_slices == 4
    (w,) = [w for w in s.warnings if w.code == "skipped_files"]
    assert "1 missing required tags" in w.message and "1 inconsistent tags" in w.message
    with pytest.raises(InputError, match=r"missing\.dcm: required tag PixelRepresentation is missing"):
        read_ct(tmp_path, strict=True)
    (tmp_path / "missing.dcm").unlink()
    with pytest.raises(InputError, match=r"orient\.dcm: ImageOrientationPatient must have 6"):
        read_ct(tmp_path, strict=True)


def test_mixed_matrix_sizes_keep_majority(tmp_path: Path) -> None:
    datasets = make_ct_series(5)
    odd = make_ct_slice(phantom_hu(16, 16), z=100.0, study_uid=datasets[0].StudyInstanceUID,
                        series_uid=datasets[0].SeriesInstanceUID)
    write_series(tmp_path, [*datasets, odd])
    (s,) = read_ct(tmp_path)
    assert s.hu.shape == (5, ROWS, ROWS)
    assert "mixed_matrix_size" in codes(s)
    assert any(w.code == "skipped_files" and "matrix size" in w.message for w in s.warnings)
    with pytest.raises(InputError, match="mixes matrix sizes"):
        read_ct(tmp_path, strict=True)


def test_multiframe_enhanced_ct(tmp_path: Path) -> None:
    ds, expected = make_multiframe_ct(6, per_frame_rescale=True)
    path = tmp_path / "enhanced.dcm"
    path.write_bytes(to_bytes(ds))
    (s,) = read_ct(path)
    np.testing.assert_array_equal(s.hu, expected)
    np.testing.assert_allclose(s.positions_mm, np.arange(6) * 2.0)
    assert s.sop_instance_uids[0] == f"{ds.SOPInstanceUID}#6"  # frames were stored superior -> inferior
    assert s.spacing_mm == pytest.approx((2.0, 0.6, 0.6))
    assert s.meta["multiframe"] is True


def test_multiframe_compressed(tmp_path: Path) -> None:
    ds, expected = make_multiframe_ct(4, transfer_syntax=RLELossless)
    (tmp_path / "mf.dcm").write_bytes(to_bytes(ds))
    (s,) = read_ct(tmp_path / "mf.dcm")
    np.testing.assert_array_equal(s.hu, expected)


def test_zip_equals_folder(tmp_path: Path) -> None:
    datasets = make_ct_series(MIN_SLICES_FOR_POOL + 1, transfer_syntax=RLELossless)  # decoded by worker processes
    folder = tmp_path / "series"
    paths = write_series(folder, datasets, shuffle_seed=2)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in paths:
            zf.write(p, f"nested/{p.name}")
        zf.writestr("README.txt", "not DICOM")
    (a,) = read_ct(folder)
    (b,) = read_ct(archive)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.sop_instance_uids == b.sop_instance_uids
    assert b.source == str(archive)


def test_missing_decoder_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels.decoders.base import Decoder

    write_series(tmp_path, make_ct_series(3, transfer_syntax=JPEG2000Lossless))
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(DependencyError, match=r"JPEG 2000 .*IM0000\.dcm.* pip install pylibjpeg pylibjpeg-openjpeg"):
        read_ct(tmp_path)


def test_independent_slices(tmp_path: Path) -> None:
    datasets = make_ct_series(3)
    write_series(tmp_path, datasets)
    series = read_ct(tmp_path, independent=True)
    assert [s.n_slices for s in series] == [1, 1, 1]
    assert {s.series_instance_uid for s in series} == {str(d.SOPInstanceUID) for d in datasets}
    assert {s.meta["source_series_instance_uid"] for s in series} == {str(datasets[0].SeriesInstanceUID)}


def test_no_patient_identifiers_in_series_or_summary(tmp_path: Path) -> None:
    write_series(tmp_path, make_ct_series(3, patient_id="SECRET-ID-42"))
    (s,) = read_ct(tmp_path)
    text = json.dumps(series_summary(s)) + repr(s.meta)
    assert "SECRET-ID-42" not in text and "Test^Patient" not in text
    assert len(s.meta["patient_id"]) == 12  # sha1 prefix, for patient-level folds
    assert s.meta["patient_id"] not in json.dumps(series_summary(s))


def test_folder_with_only_broken_files_says_why(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"\x00" * 10)
    (tmp_path / "b").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"no axial CT series .* 2 not DICOM"):
        read_ct(tmp_path)


def test_forkserver_used_when_other_threads_run(tmp_path: Path) -> None:
    import threading

    from ichd.io.decode import start_method

    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="busy-elsewhere")
    worker.start()
    try:
        assert start_method() == "forkserver"
        n = MIN_SLICES_FOR_POOL
        write_series(tmp_path, make_ct_series(n))
        (s,) = read_ct(tmp_path, workers=2)
        np.testing.assert_array_equal(s.hu, series_hu(n))
    finally:
        stop.set()
        worker.join()


def test_meta_files_orientation_and_reference_dataset(tmp_path: Path) -> None:
    from ichd.io.dicom import reference_dataset

    datasets = make_ct_series(3, tilt_deg=10.0)
    paths = write_series(tmp_path / "f", datasets, shuffle_seed=4)
    (s,) = read_ct(tmp_path / "f")
    assert s.meta["files"] == [str(p) for p in paths]  # datasets are inferior -> superior
    assert s.meta["image_orientation"] == pytest.approx(list(datasets[0].ImageOrientationPatient))
    assert s.meta["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2"
    assert reference_dataset(s, 1).SOPInstanceUID == s.sop_instance_uids[1]

    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in paths:
            zf.write(p, f"a/{p.name}")
    (z,) = read_ct(archive)
    assert z.meta["files"][0] == f"{archive}:a/{paths[0].name}"
    assert reference_dataset(z, 2).SOPInstanceUID == z.sop_instance_uids[2]


def test_many_files_headers_read_by_worker_processes(tmp_path: Path) -> None:
    from ichd.io.decode import MIN_ITEMS_FOR_MAP

    n = MIN_ITEMS_FOR_MAP + 6
    datasets = make_ct_series(n, rows=8, columns=8, spacing=1.0)
    write_series(tmp_path, datasets, shuffle_seed=5)
    (tmp_path / "zz_garbage.dcm").write_bytes(b"garbage" * 30)
    (s,) = read_ct(tmp_path, workers=2)
    assert s.n_slices == n and np.all(np.diff(s.positions_mm) > 0)
    assert any(w.code == "skipped_files" and "zz_garbage.dcm" in w.message for w in s.warnings)
    with pytest.raises(InputError, match=r"zz_garbage\.dcm: not a DICOM file"):
        read_ct(tmp_path, workers=2, strict=True)


def _read_in_daemon(folder: str) -> int:
    (s,) = read_ct(folder, workers=2)
    return s.n_slices


def test_read_inside_a_daemonic_pool_worker_decodes_in_process(tmp_path: Path) -> None:
    import multiprocessing

    n = MIN_SLICES_FOR_POOL + 2
    write_series(tmp_path, make_ct_series(n))
    with multiprocessing.get_context("fork").Pool(1) as pool:  # Pool workers are daemonic
        assert pool.apply(_read_in_daemon, (str(tmp_path),)) == n


def test_crashed_worker_process_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ichd.io import decode

    write_series(tmp_path, make_ct_series(MIN_SLICES_FOR_POOL))
    monkeypatch.setattr(decode, "start_method", lambda: "fork")  # the patch below must reach the forked workers
    monkeypatch.setattr(decode, "decode_to_hu", lambda job, out=None: os._exit(1))
    with pytest.raises(InputError, match="decoding worker process died"):
        read_ct(tmp_path, workers=2)


def test_a_known_syntax_without_any_decoder_is_an_input_error_whatever_was_imported(tmp_path: Path) -> None:
    """pynetdicom teaches pydicom newer UIDs (JPEG XL): the error must not depend on whether it was imported."""
    import pynetdicom  # noqa: F401 - registers the JPEG XL transfer syntaxes with pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    jpeg_xl = UID("1.2.840.10008.1.2.4.110")
    datasets = make_ct_series(3)
    for ds in datasets:
        ds.file_meta.TransferSyntaxUID = jpeg_xl
        ds.PixelData = encapsulate([b"\xff\x0a" + bytes(100)])
        ds["PixelData"].VR = "OB"
    write_series(tmp_path, datasets)
    with pytest.raises(InputError, match="is not supported: no decoder exists"):
        read_ct(tmp_path, workers=1)
