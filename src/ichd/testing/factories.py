"""Synthetic DICOM CT factory for tests: pydicom datasets built in memory, no files from the shared data.

* :func:`phantom_hu` — a small head-like HU image (air, skull ring, brain, a z-dependent blob).
* :func:`make_ct_slice` — one CT Image Storage dataset with any transfer syntax, rescale, pixel encoding,
  MONOCHROME1, RSNA corrupted intercept, padding, tilt, missing tags, ...
* :func:`make_ct_series` — ``n`` slices of one series with tilt, duplicates, gaps, shuffled instance order.
* :func:`make_multiframe_ct` — one Enhanced CT (multi-frame) dataset with per-frame functional groups.
* :func:`write_series` / :func:`to_bytes` — to disk or bytes.

What the reader must return for an image is :func:`expected_hu` of the HU that was written (padding and values
below -1500 HU become -1024).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
JPEG_LOSSLESS = UID("1.2.840.10008.1.2.4.57")
JPEG_LOSSLESS_SV1 = UID("1.2.840.10008.1.2.4.70")
UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}


def uid(*parts: object) -> str:
    """A deterministic valid UID from ``parts`` (``2.25.`` + a 128-bit hash, the UUID-derived UID form)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:32]
    return f"2.25.{int(digest, 16)}"


def phantom_hu(rows: int = 64, cols: int = 64, z: float = 0.0) -> np.ndarray:
    """Head-like float32 HU image: air -1000, skull ring 1000, brain 30, a 70 HU blob that moves with ``z``."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    r = np.sqrt(((yy - cy) / (rows * 0.42)) ** 2 + ((xx - cx) / (cols * 0.36)) ** 2)
    hu = np.full((rows, cols), -1000.0, dtype=np.float32)
    hu[r < 1.0] = 1000.0
    hu[r < 0.85] = 30.0
    by = cy + (rows * 0.2) * math.sin(z / 7.0)
    blob = ((yy - by) ** 2 + (xx - cx) ** 2) < (rows * 0.08) ** 2
    hu[blob & (r < 0.85)] = 70.0
    return hu


def _stored_dtype(bits_allocated: int, pixel_representation: int) -> np.dtype:
    return np.dtype(f"{'i' if pixel_representation else 'u'}{bits_allocated // 8}")


def encode_stored(hu: np.ndarray, *, slope: float = 1.0, intercept: float = -1024.0, bits_stored: int = 16,
                  bits_allocated: int = 16, pixel_representation: int = 1, monochrome1: bool = False,
                  bad_intercept: bool = False) -> np.ndarray:
    """Stored values that :func:`ichd.io.hu.to_hu` must turn back into ``hu``.

    ``bad_intercept`` writes the RSNA corrupted pattern: HU modulo 4096 as 12-bit unsigned (HU clipped to
    [-1000, 3095], the range the fix recovers); the caller must then write BitsStored 12, unsigned, intercept 1.
    """
    hu = np.asarray(hu, dtype=np.float64)
    if bad_intercept:
        stored = np.mod(np.round(np.clip(hu, -1000, 3095)), 4096)
        pixel_representation, bits_stored = 0, 12
    else:
        stored = np.round((hu - intercept) / slope)
    if monochrome1:
        if pixel_representation == 0:
            stored = (2**bits_stored - 1) - stored
        else:
            stored = -1 - stored
    lo = 0 if pixel_representation == 0 else -(2 ** (bits_stored - 1))
    hi = 2**bits_stored - 1 if pixel_representation == 0 else 2 ** (bits_stored - 1) - 1
    if stored.min() < lo or stored.max() > hi:
        raise ValueError(f"HU range does not fit {bits_stored} stored bits with this rescale")
    return stored.astype(_stored_dtype(bits_allocated, pixel_representation))


def make_ct_slice(
    hu: np.ndarray | None = None,
    *,
    rows: int = 64,
    columns: int = 64,
    z: float = 0.0,
    position: Sequence[float] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: Sequence[float] = (0.5, 0.5),
    slice_thickness: float | None = 2.5,
    instance_number: int | None = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "PAT-0001",
    modality: str = "CT",
    sop_class: str = CT_IMAGE_STORAGE,
    image_type: Sequence[str] | None = ("ORIGINAL", "PRIMARY", "AXIAL"),
    series_description: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    slope: float = 1.0,
    intercept: float = -1024.0,
    bits_stored: int = 16,
    pixel_representation: int = 1,
    monochrome1: bool = False,
    bad_intercept: bool = False,
    padding_value: int | None = None,
    padding_mask: np.ndarray | None = None,
    gantry_tilt: float | None = None,
    drop_tags: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """One CT slice as a pydicom :class:`Dataset` (with file meta) holding ``hu`` (default :func:`phantom_hu`).

    ``position`` defaults to ``(-16, -16, z)``. ``padding_mask`` pixels are stored as ``padding_value``.
    ``drop_tags`` removes keywords after building (to test missing tags); ``extra`` sets more keywords.
    """
    if hu is None:
        hu = phantom_hu(rows, columns, z)
    rows, columns = hu.shape
    if bad_intercept:
        bits_stored, pixel_representation, intercept = 12, 0, 1.0
    stored = encode_stored(hu, slope=slope, intercept=intercept, bits_stored=bits_stored,
                           pixel_representation=pixel_representation, monochrome1=monochrome1,
                           bad_intercept=bad_intercept)
    if padding_value is not None and padding_mask is not None:
        stored = stored.copy()
        stored[padding_mask] = padding_value
    study_uid = study_uid or uid("study", patient_id)
    series_uid = series_uid or uid("series", study_uid)
    sop_uid = sop_uid or uid("sop", series_uid, z, instance_number)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.Manufacturer = "ichd-factory"
    ds.KVP = 120
    if image_type is not None:
        ds.ImageType = list(image_type)
    if series_description is not None:
        ds.SeriesDescription = series_description
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [float(v) for v in (position if position is not None else (-16.0, -16.0, z))]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if slice_thickness is not None:
        ds.SliceThickness = slice_thickness
    if gantry_tilt is not None:
        ds.GantryDetectorTilt = gantry_tilt
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_representation
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    if padding_value is not None:
        ds.PixelPaddingValue = padding_value
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    _set_pixels(ds, stored, transfer_syntax)
    for key in drop_tags:
        if key in ds:
            delattr(ds, key)
    return ds


def _set_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: str) -> None:
    ts = UID(transfer_syntax)
    if ts in UNCOMPRESSED:
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = ts
    elif ts in (JPEG_LOSSLESS, JPEG_LOSSLESS_SV1):
        # pydicom has no JPEG lossless encoder: libjpeg-turbo (imagecodecs) writes process 14, selection value 1,
        # at 16-bit precision; signed values are stored as their two's complement bit pattern, as scanners do
        import imagecodecs
        from pydicom.encaps import encapsulate

        bits = np.ascontiguousarray(stored).astype(np.int16 if ds.PixelRepresentation else np.uint16)
        frame = imagecodecs.jpeg8_encode(bits.view(np.uint16), lossless=True, predictor=1)
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
    else:
        # pydicom's encoders: RLE (built in), JPEG-LS (pyjpegls), JPEG 2000 (pylibjpeg-openjpeg)
        ds.compress(ts, arr=stored, generate_instance_uid=False)


def expected_hu(hu: np.ndarray, *, padding_mask: np.ndarray | None = None) -> np.ndarray:
    """What the reader must return for ``hu`` written by :func:`make_ct_slice` (padding -> -1024)."""
    out = np.asarray(hu, dtype=np.float32).copy()
    if padding_mask is not None:
        out[padding_mask] = -1024.0
    out[out < -1500] = -1024.0
    return out


def make_ct_series(
    n: int = 8,
    *,
    spacing: float = 2.5,
    z0: float = -10.0,
    tilt_deg: float = 0.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    monochrome1: bool = False,
    bad_intercept: bool = False,
    duplicate: int | None = None,
    gap_at: int | None = None,
    reverse_instance_numbers: bool = False,
    rows: int = 32,
    columns: int = 32,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "PAT-0001",
    **slice_kwargs: Any,
) -> list[Dataset]:
    """``n`` slices of one series, inferior -> superior in list order, ``spacing`` mm apart along the normal.

    Args:
        tilt_deg: gantry tilt: orientation ``[1,0,0, 0,cos t,-sin t]``, ``GantryDetectorTilt`` set, positions move
            along z only by ``spacing / cos t`` (as scanners write tilted series).
        duplicate: also emit a second slice (new SOPInstanceUID, later InstanceNumber) at slice ``duplicate``'s
            position, appended at the end of the list.
        gap_at: leave out the slice after index ``gap_at`` (the list then has ``n - 1`` slices and a 2× step).
        reverse_instance_numbers: InstanceNumber runs superior -> inferior (order must come from positions).
        slice_kwargs: passed to :func:`make_ct_slice` (e.g. ``padding_value``, ``pixel_representation``).
    """
    t = math.radians(tilt_deg)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))
    study_uid = study_uid or uid("study", patient_id, "series-factory")
    series_uid = series_uid or uid("series", study_uid, n, tilt_deg, transfer_syntax, monochrome1, bad_intercept)
    out: list[Dataset] = []
    for k in range(n):
        if gap_at is not None and k == gap_at + 1:
            continue
        z = z0 + k * spacing / math.cos(t)
        inst = (n - k) if reverse_instance_numbers else k + 1
        out.append(make_ct_slice(
            rows=rows, columns=columns, z=z, orientation=orientation, instance_number=inst, study_uid=study_uid,
            series_uid=series_uid, sop_uid=uid(series_uid, "slice", k), patient_id=patient_id,
            transfer_syntax=transfer_syntax, monochrome1=monochrome1, bad_intercept=bad_intercept,
            gantry_tilt=tilt_deg if tilt_deg else None, slice_thickness=spacing, **slice_kwargs))
    if duplicate is not None:
        z = z0 + duplicate * spacing / math.cos(t)
        out.append(make_ct_slice(
            rows=rows, columns=columns, z=z, orientation=orientation, instance_number=n + 100,
            study_uid=study_uid, series_uid=series_uid, sop_uid=uid(series_uid, "duplicate", duplicate),
            patient_id=patient_id, transfer_syntax=transfer_syntax, monochrome1=monochrome1,
            bad_intercept=bad_intercept, gantry_tilt=tilt_deg if tilt_deg else None, slice_thickness=spacing,
            **slice_kwargs))
    return out


def make_multiframe_ct(n: int = 6, *, spacing: float = 2.0, z0: float = 0.0, rows: int = 32, columns: int = 32,
                       intercept: float = -1024.0, per_frame_rescale: bool = False,
                       transfer_syntax: str = ExplicitVRLittleEndian) -> tuple[Dataset, np.ndarray]:
    """One Enhanced CT dataset with ``n`` frames; frames are stored superior -> inferior (reader must reverse).

    Returns the dataset and the expected HU volume, inferior -> superior. With ``per_frame_rescale`` each frame
    has its own PixelValueTransformationSequence (intercepts -1024 - k); otherwise it is shared.
    """
    hus = [phantom_hu(rows, columns, z0 + k * spacing) for k in range(n)]
    frame_order = list(reversed(range(n)))
    stored_frames = []
    per_frame = []
    for k in frame_order:
        icpt = intercept - k if per_frame_rescale else intercept
        stored_frames.append(encode_stored(hus[k], intercept=icpt))
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [-8.0, -8.0, float(z0 + k * spacing)]
        item.PlanePositionSequence = DicomSequence([pos])
        if per_frame_rescale:
            rescale = Dataset()
            rescale.RescaleIntercept = icpt
            rescale.RescaleSlope = 1
            rescale.RescaleType = "HU"
            item.PixelValueTransformationSequence = DicomSequence([rescale])
        per_frame.append(item)
    shared = Dataset()
    ori = Dataset()
    ori.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = DicomSequence([ori])
    measures = Dataset()
    measures.PixelSpacing = [0.6, 0.6]
    measures.SliceThickness = spacing
    shared.PixelMeasuresSequence = DicomSequence([measures])
    if not per_frame_rescale:
        rescale = Dataset()
        rescale.RescaleIntercept = intercept
        rescale.RescaleSlope = 1
        rescale.RescaleType = "HU"
        shared.PixelValueTransformationSequence = DicomSequence([rescale])

    study = uid("mf-study", n)
    series = uid("mf-series", n, per_frame_rescale)
    sop = uid("mf-sop", n, per_frame_rescale)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = n
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    _set_pixels(ds, np.stack(stored_frames), transfer_syntax)
    return ds, np.stack([expected_hu(h) for h in hus])


def to_bytes(ds: Dataset) -> bytes:
    """The dataset as DICOM file bytes (Part 10, with preamble), in its file meta's transfer syntax."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def write_series(folder: str | Path, datasets: Sequence[Dataset], *, names: Sequence[str] | None = None,
                 shuffle_seed: int | None = None) -> list[Path]:
    """Write datasets to ``folder`` as ``IM0000.dcm``, ... (or ``names``); ``shuffle_seed`` shuffles the names.

    Returns the paths in the order of ``datasets``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if names is None:
        names = [f"IM{k:04d}.dcm" for k in range(len(datasets))]
        if shuffle_seed is not None:
            names = list(np.random.default_rng(shuffle_seed).permutation(names))
    paths = []
    for ds, name in zip(datasets, names, strict=True):
        path = folder / name
        path.write_bytes(to_bytes(ds))
        paths.append(path)
    return paths


def write_ctich_tree(root: str | Path, patients: dict[int, int], *, size: int, seed: int = 0) -> Path:
    """Write a CT-ICH-layout tree of random 8-bit JPGs: ``root/{brain,bone}/<ppp>/<sss>.jpg``.

    ``patients`` maps patient number -> slice count (slices numbered from 1). Returns ``root``.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for p, n in patients.items():
        for window in ("brain", "bone"):
            d = root / window / f"{p:03d}"
            d.mkdir(parents=True)
            for s in range(1, n + 1):
                Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(d / f"{s:03d}.jpg")
    return root
