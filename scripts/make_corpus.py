"""Generate the bad-input corpus: ``python scripts/make_corpus.py OUT``.

Every case is a folder ``OUT/<case>/`` holding the input (``OUT/<case>/input`` — a folder, a file or a zip; the
path is in ``OUT/<case>/case.json``) and ``OUT/index.json`` lists every case with what ichd must do:

* ``error``: exit 2 and one line on stderr;
* ``warning``: exit 0, and at least one warning in the result (a partial result);
* ``ok``: exit 0 (a valid but unusual input; warnings allowed).

Nothing is hand-placed: DICOM comes from ichd.testing.factories (the synthetic CT factory), the rest from pydicom,
nibabel, numpy, zipfile and PIL. See tests/corpus/README.md for the table of cases.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from ichd.testing.factories import make_ct_series, make_ct_slice, to_bytes, uid, write_series

#: Cases that only ``ingest`` runs on (big; predict would be slow without telling more).
INGEST_ONLY = {"many_files_10000", "series_2000_slices"}

CASES: dict[str, tuple[str, str, Callable[[Path], Path]]] = {}


CASE_ARGS: dict[str, tuple[str, ...]] = {}


def case(name: str, expect: str, what: str, args: tuple[str, ...] = ()):
    """Register a generator ``fn(case_dir) -> input path`` under ``name`` with its expectation; ``args``: input
    options every command gets for this case (e.g. ``--window`` for PNG slices)."""
    assert expect in ("error", "warning", "ok")

    def deco(fn: Callable[[Path], Path]) -> Callable[[Path], Path]:
        CASES[name] = (expect, what, fn)
        if args:
            CASE_ARGS[name] = tuple(args)
        return fn

    return deco


def good(folder: Path, n: int = 4, **kw) -> list[Path]:
    """``n`` valid 32x32 CT slices."""
    return write_series(folder, make_ct_series(n, **kw))


def one_slice_bytes(**kw) -> bytes:
    return to_bytes(make_ct_slice(rows=32, columns=32, **kw))


# --- broken files -------------------------------------------------------------------------------------------------

@case("truncated_dicom_only", "error", "one DICOM file cut in half, alone in the folder")
def _(d: Path) -> Path:
    (d / "in").mkdir()
    data = one_slice_bytes()
    (d / "in" / "IM0.dcm").write_bytes(data[: len(data) // 2])
    return d / "in"


@case("truncated_dicom_in_series", "warning", "4 good slices and one truncated (header cut)")
def _(d: Path) -> Path:
    good(d / "in")
    (d / "in" / "BAD.dcm").write_bytes(one_slice_bytes(z=99.0, instance_number=99)[:300])
    return d / "in"


@case("truncated_single_file", "error", "a single truncated DICOM file given as the input")
def _(d: Path) -> Path:
    data = one_slice_bytes()
    (d / "IM0.dcm").write_bytes(data[: len(data) - 700])
    return d / "IM0.dcm"


@case("not_dicom_named_dcm", "error", "text files named .dcm")
def _(d: Path) -> Path:
    (d / "in").mkdir()
    for k in range(3):
        (d / "in" / f"IM{k}.dcm").write_text("this is not DICOM\n" * 10)
    return d / "in"


@case("not_dicom_in_series", "warning", "good slices plus a PNG-bytes file named .dcm")
def _(d: Path) -> Path:
    from PIL import Image

    good(d / "in")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "in" / "x.png")
    (d / "in" / "x.png").rename(d / "in" / "IMX.dcm")
    return d / "in"


@case("empty_file_dcm", "error", "a 0-byte .dcm file")
def _(d: Path) -> Path:
    (d / "in").mkdir()
    (d / "in" / "IM0.dcm").write_bytes(b"")
    return d / "in"


@case("empty_folder", "error", "an empty folder")
def _(d: Path) -> Path:
    (d / "in").mkdir()
    return d / "in"


@case("no_pixel_data", "error", "CT slices with PixelData removed")
def _(d: Path) -> Path:
    write_series(d / "in", make_ct_series(3, drop_tags=("PixelData",)))
    return d / "in"


@case("no_pixel_data_in_series", "warning", "good slices plus one without PixelData")
def _(d: Path) -> Path:
    good(d / "in")
    write_series(d / "in", [make_ct_slice(rows=32, columns=32, z=50.0, instance_number=50,
                                          study_uid=uid("study", "PAT-0001", "series-factory"),
                                          drop_tags=("PixelData",))], names=["NOPIX.dcm"])
    return d / "in"


@case("missing_position", "warning", "slices without ImagePositionPatient/ImageOrientationPatient (ordered by "
                                        "InstanceNumber)")
def _(d: Path) -> Path:
    write_series(d / "in", make_ct_series(3, drop_tags=("ImagePositionPatient", "ImageOrientationPatient")))
    return d / "in"


# --- wrong modality -----------------------------------------------------------------------------------------------

def _modality(d: Path, modality: str, sop_class: str) -> Path:
    write_series(d / "in", make_ct_series(3, modality=modality, sop_class=sop_class, patient_id=modality))
    return d / "in"


@case("modality_mr", "error", "MR Image Storage")
def _(d: Path) -> Path:
    return _modality(d, "MR", "1.2.840.10008.5.1.4.1.1.4")


@case("modality_cr", "error", "Computed Radiography")
def _(d: Path) -> Path:
    return _modality(d, "CR", "1.2.840.10008.5.1.4.1.1.1")


@case("modality_sr", "error", "a Structured Report (no pixels)")
def _(d: Path) -> Path:
    ds = make_ct_slice(rows=8, columns=8, modality="SR", sop_class="1.2.840.10008.5.1.4.1.1.88.22",
                       drop_tags=("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                                  "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
                                  "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))
    write_series(d / "in", [ds])
    return d / "in"


@case("modality_seg", "error", "a Segmentation object")
def _(d: Path) -> Path:
    return _modality(d, "SEG", "1.2.840.10008.5.1.4.1.1.66.4")


@case("mr_mixed_with_ct", "warning", "a CT series plus MR slices in the same study")
def _(d: Path) -> Path:
    good(d / "in")
    write_series(d / "in", make_ct_series(2, modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4",
                                          series_uid=uid("mr-series")), names=["MR0.dcm", "MR1.dcm"])
    return d / "in"


# --- bad image tags -----------------------------------------------------------------------------------------------

def _tweak(d: Path, n: int = 3, **tags) -> Path:
    dss = make_ct_series(n)
    for ds in dss:
        for k, v in tags.items():
            setattr(ds, k, v)
    write_series(d / "in", dss)
    return d / "in"


@case("rows_zero", "error", "Rows = Columns = 0")
def _(d: Path) -> Path:
    return _tweak(d, Rows=0, Columns=0)


@case("rows_huge", "error", "Rows = Columns = 65535 with 32x32 pixel data")
def _(d: Path) -> Path:
    return _tweak(d, Rows=65535, Columns=65535)


@case("bits_allocated_8", "error", "BitsAllocated 8 but 16-bit pixel data (PixelData twice as long as the tags say)")
def _(d: Path) -> Path:
    return _tweak(d, BitsAllocated=8, BitsStored=8, HighBit=7)


@case("bits_stored_gt_allocated", "error", "BitsStored 24 > BitsAllocated 16")
def _(d: Path) -> Path:
    return _tweak(d, BitsStored=24, HighBit=23)


@case("bits_allocated_odd", "error", "BitsAllocated 12")
def _(d: Path) -> Path:
    return _tweak(d, BitsAllocated=12, BitsStored=12, HighBit=11)


@case("pixel_data_short", "error", "PixelData half as long as Rows*Columns*2")
def _(d: Path) -> Path:
    dss = make_ct_series(3)
    for ds in dss:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    write_series(d / "in", dss)
    return d / "in"


@case("pixel_data_long", "error", "PixelData twice as long as needed (a whole extra frame's bytes)")
def _(d: Path) -> Path:
    dss = make_ct_series(3)
    for ds in dss:
        ds.PixelData = ds.PixelData * 2
    write_series(d / "in", dss)
    return d / "in"


@case("samples_per_pixel_3", "error", "SamplesPerPixel 3 (RGB) with grey data")
def _(d: Path) -> Path:
    return _tweak(d, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0)


@case("zero_pixel_spacing", "error", "PixelSpacing 0\\0")
def _(d: Path) -> Path:
    return _tweak(d, PixelSpacing=[0.0, 0.0])


@case("rescale_slope_zero", "error", "RescaleSlope 0")
def _(d: Path) -> Path:
    return _tweak(d, RescaleSlope=0)


# --- compressed pixel data ----------------------------------------------------------------------------------------

def _with_ts(d: Path, ts: str, frames: list[bytes]) -> Path:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    (d / "in").mkdir()
    for k, (ds, frame) in enumerate(zip(make_ct_series(len(frames)), frames, strict=True)):
        ds.file_meta.TransferSyntaxUID = ts  # pydicom's dcmwrite refuses syntaxes it does not know: write by hand
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        fp = DicomBytesIO()
        fp.write(bytes(128) + b"DICM")
        write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, ds)
        (d / "in" / f"IM{k:04d}.dcm").write_bytes(fp.getvalue())
    return d / "in"


@case("ts_jpeg_xl_no_decoder", "error", "JPEG XL transfer syntax (1.2.840.10008.1.2.4.110): no decoder installed")
def _(d: Path) -> Path:
    return _with_ts(d, "1.2.840.10008.1.2.4.110", [b"\xff\x0a" + bytes(100)] * 3)


@case("ts_made_up_uid", "error", "an unknown transfer syntax UID (1.2.3.4.5.6.7) with encapsulated data")
def _(d: Path) -> Path:
    return _with_ts(d, "1.2.3.4.5.6.7", [bytes(range(256))] * 3)


def _corrupt(d: Path, ts: str, how: str) -> Path:
    dss = make_ct_series(3, transfer_syntax=ts)
    from pydicom.encaps import generate_fragmented_frames

    for ds in dss:
        frame = b"".join(next(generate_fragmented_frames(ds.PixelData)))
        if how == "cut":
            frame = frame[: len(frame) // 3]
        else:
            arr = bytearray(frame)
            rng = np.random.default_rng(len(arr))
            for i in rng.integers(len(arr) // 4, len(arr), 40):
                arr[i] ^= 0xFF
            arr[: min(16, len(arr))] = bytes(min(16, len(arr)))  # break the stream header too
            frame = bytes(arr)
        ds.PixelData = encapsulate([frame])
    write_series(d / "in", dss)
    return d / "in"


for _ts_name, _ts in (("jpegls", JPEGLSLossless), ("j2k", JPEG2000Lossless), ("rle", RLELossless)):
    for _how in ("flip", "cut"):
        # CharLS decodes a JPEG-LS stream cut at 1/3 without an error: the missing end-of-image marker (FFD9) tells
        CASES[f"corrupt_{_ts_name}_{_how}"] = (
            "error", f"{_ts_name} stream with {'bytes flipped' if _how == 'flip' else 'the end cut off'}",
            functools.partial(_corrupt, ts=_ts, how=_how))


@case("corrupt_rle_one_in_series", "warning", "good RLE slices plus one with a cut stream")
def _(d: Path) -> Path:
    dss = make_ct_series(4, transfer_syntax=RLELossless)
    from pydicom.encaps import generate_fragmented_frames

    frame = b"".join(next(generate_fragmented_frames(dss[-1].PixelData)))
    dss[-1].PixelData = encapsulate([frame[:20]])
    write_series(d / "in", dss)
    return d / "in"


# --- series structure ---------------------------------------------------------------------------------------------

@case("two_studies", "ok", "two studies (two patients) in one folder")
def _(d: Path) -> Path:
    write_series(d / "in" / "a", make_ct_series(3, patient_id="A"))
    write_series(d / "in" / "b", make_ct_series(3, patient_id="B"))
    return d / "in"


@case("mixed_matrix_sizes", "warning", "one series: 4 slices 32x32 and 1 slice 48x48")
def _(d: Path) -> Path:
    dss = make_ct_series(4)
    odd = make_ct_series(5, rows=48, columns=48, series_uid=dss[0].SeriesInstanceUID)[-1]
    write_series(d / "in", [*dss, odd])
    return d / "in"


@case("duplicate_positions", "warning", "a second slice at an existing position")
def _(d: Path) -> Path:
    write_series(d / "in", make_ct_series(5, duplicate=2))
    return d / "in"


@case("all_same_position", "warning", "every slice at the same position")
def _(d: Path) -> Path:
    write_series(d / "in", make_ct_series(4, spacing=0.0))
    return d / "in"


@case("single_slice", "ok", "a one-slice series")
def _(d: Path) -> Path:
    write_series(d / "in", make_ct_series(1))
    return d / "in"


@case("constant_pixels", "ok", "all pixels -1024 HU")
def _(d: Path) -> Path:
    write_series(d / "in", [make_ct_slice(np.full((32, 32), -1000.0, np.float32), z=k * 2.5, instance_number=k + 1,
                                          sop_uid=uid("const", k)) for k in range(3)])
    return d / "in"


# --- NIfTI ----------------------------------------------------------------------------------------------------------

def _nifti(path: Path, data: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 5.0, 1.0])), str(path))
    return path


@case("nifti_nan", "error", "NIfTI volume with NaN voxels")
def _(d: Path) -> Path:
    v = np.full((32, 32, 4), 30.0, np.float32)
    v[4:10, 4:10, :] = np.nan
    return _nifti(d / "nan.nii.gz", v)


@case("nifti_inf", "error", "NIfTI volume with +Inf/-Inf voxels")
def _(d: Path) -> Path:
    v = np.full((32, 32, 4), 30.0, np.float32)
    v[0, 0, :] = np.inf
    v[1, 1, :] = -np.inf
    return _nifti(d / "inf.nii.gz", v)


@case("nifti_all_nan", "error", "NIfTI volume of NaN only")
def _(d: Path) -> Path:
    return _nifti(d / "allnan.nii.gz", np.full((16, 16, 3), np.nan, np.float32))


@case("nifti_4d", "error", "4-D NIfTI (x, y, z, t=3)")
def _(d: Path) -> Path:
    return _nifti(d / "4d.nii.gz", np.zeros((16, 16, 4, 3), np.float32))


@case("nifti_2d", "error", "2-D NIfTI (one slice)")
def _(d: Path) -> Path:
    return _nifti(d / "2d.nii", np.zeros((16, 16), np.float32))


@case("nifti_truncated", "error", "a .nii.gz cut in half")
def _(d: Path) -> Path:
    p = _nifti(d / "cut.nii.gz", np.random.default_rng(0).normal(size=(32, 32, 8)).astype(np.float32))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


@case("nifti_not_nifti", "error", "a text file named .nii")
def _(d: Path) -> Path:
    (d / "x.nii").write_text("not nifti\n")
    return d / "x.nii"


# --- images -------------------------------------------------------------------------------------------------------

@case("png_folder_no_window", "error", "a folder of PNG slices without --window")
def _(d: Path) -> Path:
    from PIL import Image

    (d / "in").mkdir()
    for k in range(3):
        Image.fromarray(np.full((32, 32), 10 * k, np.uint8)).save(d / "in" / f"{k:03d}.png")
    return d / "in"


# --- archives -----------------------------------------------------------------------------------------------------

@case("zip_path_traversal", "ok", "zip members named ../x.dcm, /abs/x.dcm, a/../../y.dcm (read in memory only)")
def _(d: Path) -> Path:
    dss = make_ct_series(3)
    names = ["../../escape0.dcm", "/tmp/ichd-corpus-abs/escape1.dcm", "a/../../../escape2.dcm"]
    with zipfile.ZipFile(d / "traversal.zip", "w") as zf:
        for name, ds in zip(names, dss, strict=True):
            zf.writestr(zipfile.ZipInfo(name), to_bytes(ds))
    return d / "traversal.zip"


@case("zip_bomb", "error", "one member of 1 GiB zeros, ~4.5 MiB compressed (ratio ~230)")
def _(d: Path) -> Path:
    chunk = bytes(16 << 20)
    with zipfile.ZipFile(d / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("IM0000.dcm", one_slice_bytes())
        with zf.open("IM0001.dcm", "w", force_zip64=True) as f:
            for _ in range(64):
                f.write(chunk)
    return d / "bomb.zip"


@case("zip_not_a_zip", "error", "random bytes named .zip")
def _(d: Path) -> Path:
    (d / "x.zip").write_bytes(np.random.default_rng(0).bytes(4096))
    return d / "x.zip"


@case("zip_empty", "error", "an empty zip archive")
def _(d: Path) -> Path:
    with zipfile.ZipFile(d / "empty.zip", "w"):
        pass
    return d / "empty.zip"


# --- file system oddities -----------------------------------------------------------------------------------------

@case("symlinks_outside", "warning", "good slices plus symlinks to a file/folder outside the input and a dangling "
                                     "one and a loop")
def _(d: Path) -> Path:
    good(d / "in")
    (d / "outside").mkdir()
    (d / "outside" / "secret.txt").write_text("outside\n")
    (d / "outside" / "secret.dcm").write_text("outside, not DICOM\n")
    os.symlink(d / "outside" / "secret.dcm", d / "in" / "LINK_FILE.dcm")
    os.symlink(d / "outside", d / "in" / "link_dir")
    os.symlink(d / "nowhere.dcm", d / "in" / "DANGLING.dcm")
    os.symlink(d / "in", d / "in" / "loop")
    return d / "in"


@case("non_utf8_names", "ok", "DICOM files whose names are not valid UTF-8 (Latin-1 bytes)")
def _(d: Path) -> Path:
    (d / "in").mkdir()
    base = os.fsencode(d / "in")
    for k, ds in enumerate(make_ct_series(3)):
        name = base + b"/" + b"IM\xe9\xff%d.dcm" % k
        with open(name, "wb") as f:
            f.write(to_bytes(ds))
    sub = base + b"/dir\xfe"
    os.mkdir(sub)
    with open(sub + b"/x\xff.dcm", "wb") as f:
        f.write(b"not dicom")
    return d / "in"


@case("many_files_10000", "warning", "3 good slices and 10,000 tiny non-DICOM files without a suffix")
def _(d: Path) -> Path:
    good(d / "in", 3)
    for k in range(10_000):
        with open(d / "in" / f"F{k:05d}", "wb") as f:
            f.write(b"x")
    return d / "in"


@case("series_2000_slices", "ok", "one series of 2,000 slices of 8x8 pixels")
def _(d: Path) -> Path:
    proto = make_ct_slice(rows=8, columns=8)
    folder = d / "in"
    folder.mkdir()
    series_uid = uid("big-series")
    for k in range(2000):
        proto.SOPInstanceUID = proto.file_meta.MediaStorageSOPInstanceUID = uid("big", k)
        proto.SeriesInstanceUID = series_uid
        proto.InstanceNumber = k + 1
        proto.ImagePositionPatient = [-16.0, -16.0, k * 1.0]
        (folder / f"IM{k:05d}.dcm").write_bytes(to_bytes(proto))
    return folder


# --- found by fuzzing (fuzz/fuzz_readers.py) ------------------------------------------------------------------------
# Each case rebuilds, from a valid generated file, the kind of damage a fuzzer input that crashed the reader had.

def _explicit_element(tag: tuple[int, int], vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian element with a 2-byte length (any VR code, even an unknown one)."""
    import struct

    return struct.pack("<HH", *tag) + vr + struct.pack("<H", len(value)) + value


@case("fuzz_deflate_corrupt", "error", "Deflated Explicit VR file whose deflate stream is damaged (zlib.error)")
def _(d: Path) -> Path:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    data = bytearray(one_slice_bytes(transfer_syntax=DeflatedExplicitVRLittleEndian))
    body = data.index(b"DICM") + 4
    body += 12 + int.from_bytes(data[body + 8: body + 12], "little")  # past the (0002,0000) group length
    for k in range(body + 40, body + 60):  # overwrite the deflate stream's first bytes after the meta header
        data[k] ^= 0x5A
    (d / "IM0.dcm").write_bytes(bytes(data))
    return d / "IM0.dcm"


@case("fuzz_value_length_not_multiple", "error", "the US element Rows 3 bytes long (BytesLengthException)")
def _(d: Path) -> Path:
    data = one_slice_bytes()
    at = data.index(b"\x28\x00\x10\x00US\x02\x00")  # (0028,0010) Rows, explicit VR, length 2
    (d / "IM0.dcm").write_bytes(data[:at + 6] + b"\x03\x00" + data[at + 8: at + 10] + b"\x00" + data[at + 10:])
    return d / "IM0.dcm"


@case("fuzz_unknown_vr", "error", "an element with the unknown VR 'DC' (explicit VR)")
def _(d: Path) -> Path:
    data = one_slice_bytes()
    at = data.index(b"\x28\x00\x53\x10")  # (0028,1053) RescaleSlope: make its VR unknown
    (d / "IM0.dcm").write_bytes(data[:at + 4] + b"DC" + data[at + 6:])
    return d / "IM0.dcm"


@case("fuzz_nifti_gz_corrupt", "error", "a .nii.gz whose deflate data is damaged (zlib.error, not a cut)")
def _(d: Path) -> Path:
    p = _nifti(d / "bad.nii.gz", np.random.default_rng(0).normal(size=(32, 32, 8)).astype(np.float32))
    data = bytearray(p.read_bytes())
    for k in range(40, 80):
        data[k] ^= 0xA5
    p.write_bytes(bytes(data))
    return p


@case("fuzz_nifti_bad_vox_offset", "error", "a .nii whose vox_offset is below the header size (HeaderDataError)")
def _(d: Path) -> Path:
    p = _nifti(d / "bad.nii", np.zeros((32, 32, 4), np.int16))
    data = bytearray(p.read_bytes())
    data[108:112] = np.float32(100.0).tobytes()  # vox_offset (float32 at byte 108): 100 < 352
    p.write_bytes(bytes(data))
    return p


@case("fuzz_nifti_degenerate_affine", "error", "a .nii whose affine maps two voxel axes to the same direction")
def _(d: Path) -> Path:
    p = _nifti(d / "flat.nii", np.zeros((32, 32, 4), np.int16))
    data = bytearray(p.read_bytes())
    data[252:256] = np.array([0, 1], np.int16).tobytes()  # qform_code 0, sform_code 1: the sform is the affine
    data[280:328] = np.array([0.5, 0, 0.5, 0, 0, 0, 0, 0, 0, 0, 0, 0], np.float32).tobytes()  # srow_x/y/z
    p.write_bytes(bytes(data))
    return p


@case("fuzz_nifti_zero_dims", "error", "a .nii whose header says 0 x 0 x 3 voxels (OrientationError)")
def _(d: Path) -> Path:
    p = _nifti(d / "empty.nii", np.zeros((32, 32, 3), np.int16))
    data = bytearray(p.read_bytes())
    data[40:48] = np.array([3, 0, 0, 3], np.int16).tobytes()  # dim[0..3] at byte 40
    p.write_bytes(bytes(data))
    return p


@case("fuzz_png_truncated_ihdr", "error", "a PNG whose IHDR chunk is cut short (PIL raises ValueError)",
      args=("--window", "40,80"))
def _(d: Path) -> Path:
    import io as _io

    from PIL import Image

    (d / "in").mkdir()
    buf = _io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    (d / "in" / "000.png").write_bytes(data[:8] + (5).to_bytes(4, "big") + data[12:])  # IHDR length 13 -> 5
    return d / "in"


@case("fuzz_zip_bad_crc", "warning", "a zip of 4 slices, one member's data damaged (BadZipFile: bad CRC)")
def _(d: Path) -> Path:
    p = _zip_of_good_slices(d)
    data = bytearray(p.read_bytes())
    first = data.index(b"PK\x03\x04", 10)  # the second member's local header
    data[first - 200] ^= 0xFF  # a byte of the first member's pixel data
    p.write_bytes(bytes(data))
    return p


def _zip_of_good_slices(d: Path, name: str = "s.zip", member_names: list[str] | None = None) -> Path:
    """A stored (uncompressed) zip of 4 good slices named ``series/IM000k.dcm`` (or ``member_names``)."""
    good(d / "src")
    files = sorted((d / "src").iterdir())
    names = member_names or [f"series/{f.name}" for f in files]
    with zipfile.ZipFile(d / name, "w", zipfile.ZIP_STORED) as zf:
        for f, member in zip(files, names, strict=True):
            zf.write(f, member)
    shutil.rmtree(d / "src")
    return d / name


def _patch_central(path: Path, member: int, offset: int, value: bytes) -> None:
    """Overwrite bytes at ``offset`` of central-directory record number ``member`` (0-based)."""
    data = bytearray(path.read_bytes())
    at = -1
    for _ in range(member + 1):
        at = data.index(b"PK\x01\x02", at + 1)
    data[at + offset: at + offset + len(value)] = value
    path.write_bytes(bytes(data))


@case("fuzz_zip_name_not_utf8", "error", "a zip whose member name is flagged UTF-8 but is not (UnicodeDecodeError)")
def _(d: Path) -> Path:
    names = [f"series/IM{k}\u00e9.dcm" for k in range(4)]  # stored as UTF-8 with flag bit 11
    p = _zip_of_good_slices(d, member_names=names)
    data = p.read_bytes()
    cd = data.index(b"PK\x01\x02")
    at = data.index("\u00e9".encode(), cd)
    p.write_bytes(data[:at] + b"\xf9" + data[at + 1:])  # 0xf9 cannot start a UTF-8 sequence
    return p


@case("fuzz_zip_version_too_new", "error", "a zip member needing zip version 25.5 to extract (NotImplementedError)")
def _(d: Path) -> Path:
    p = _zip_of_good_slices(d)
    _patch_central(p, 0, 6, (255).to_bytes(2, "little"))  # "version needed to extract"
    return p


@case("fuzz_zip_encrypted_member", "warning", "a zip of 4 slices, one member flagged as encrypted")
def _(d: Path) -> Path:
    p = _zip_of_good_slices(d)
    _patch_central(p, 3, 8, (0x1).to_bytes(2, "little"))  # general purpose flag bit 0: encrypted
    return p


@case("fuzz_zip_empty_member_name", "ok", "a zip of 4 slices plus a member with an empty name (IndexError)")
def _(d: Path) -> Path:
    p = _zip_of_good_slices(d)
    with zipfile.ZipFile(p, "a") as zf:
        zf.writestr(zipfile.ZipInfo(""), b"no name")
    return p


def generate(out: Path, names: list[str] | None = None) -> dict[str, dict]:
    """Write every case (or ``names``) under ``out``; return and write ``out/index.json``."""
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, dict] = {}
    for name, (expect, what, fn) in CASES.items():
        if names is not None and name not in names:
            continue
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        inp = fn(d)
        entry = {"expect": expect, "what": what, "input": os.path.relpath(inp, d),
                 "ingest_only": name in INGEST_ONLY, "args": list(CASE_ARGS.get(name, ()))}
        (d / "case.json").write_text(json.dumps(entry, indent=2))
        index[name] = entry
    (out / "index.json").write_text(json.dumps(index, indent=2))
    return index


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    index = generate(Path(argv[0]), argv[1:] or None)
    print(f"{len(index)} case(s) written to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
