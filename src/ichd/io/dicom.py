"""Read DICOM CT files (single files, folders, zip members, multi-frame) into :class:`~ichd.types.CTSeries`.

Two passes, so non-image objects cost almost nothing:

1. **Headers** (:func:`scan_headers`): every file is read with ``stop_before_pixels``. Each image becomes a
   :class:`FrameHeader` (one per frame for multi-frame files) or the file becomes a :class:`Skipped` with a reason:
   ``not_dicom``, ``unreadable``, ``missing_tags``, ``bad_tags`` (problems: fatal in strict mode), or
   ``localizer``, ``dose_report``, ``secondary_capture``, ``not_ct``, ``no_pixel_data``, ``not_axial`` (objects that
   are not axial CT slices: skipped in both modes). :func:`skipped_warnings` counts them in ``skipped_files`` and
   ``skipped_non_image`` warnings.
2. **Pixels** (:func:`read_dicom`): images are grouped by StudyInstanceUID/SeriesInstanceUID, the majority matrix
   size is kept, slices are ordered along the normal (:mod:`ichd.io.geometry`), and only the kept slices are
   decoded (:mod:`ichd.io.decode`, a process pool for big series) straight into a preallocated float32 volume
   (:func:`ichd.io.hu.to_hu`).

Files come from :mod:`ichd.io.sources` (folders, zips); a missing decoder plugin raises
:class:`~ichd.errors.DependencyError` naming the package before anything is decoded. Nothing identifying is
copied from the files: only UIDs, a SHA-1 prefix of PatientID (``meta["patient_id"]``) and technical facts
(modality, manufacturer, kVp, transfer syntaxes, BodyPartExamined as ``meta["body_part"]``, upper case, None when
absent).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import statistics
import struct
import warnings as pywarnings
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ichd.errors import InputError, describe_exception
from ichd.io.decode import (
    DecodeJob,
    DecodeOutcome,
    FrameDecoder,
    PoolKind,
    check_decoders,
    missing_decoder_error,
)
from ichd.io.geometry import (
    MAX_FILES_LISTED,
    TILT_MIN_DEG,
    SliceGeometry,
    is_axial,
    oblique_angle_deg,
    order_slices,
    slice_normal,
)
from ichd.io.hu import (
    PixelEncoding,
    has_corrupted_intercept,
    implausible_intercept,
    signed_padding,
)
from ichd.io.pixel_checks import check_pixel_data
from ichd.io.sources import DicomSource, close_zip_handles
from ichd.types import CTSeries, IngestWarning
from ichd.utils.logging import get_logger
from ichd.utils.progress import progress_bar

log = get_logger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = frozenset({CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_ENHANCED_CT_IMAGE_STORAGE})
#: Largest Rows/Columns accepted (CT is 512-1024); larger values are corrupt tags that would allocate gigabytes.
MAX_MATRIX = 8192
#: Secondary Capture Image Storage and its multi-frame variants share this prefix.
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
#: Structured reports (dose SRs among them) share this prefix; they have no pixels.
STRUCTURED_REPORT_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
DOSE_SR_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.68"})

#: Skip reasons that mean a broken file (strict mode raises on them), and their descriptions.
PROBLEM_REASONS: dict[str, str] = {
    "not_dicom": "not DICOM",
    "unreadable": "unreadable (truncated or corrupt)",
    "missing_tags": "missing required tags",
    "bad_tags": "inconsistent tags",
    "decode_failed": "pixel data could not be decoded",
    "matrix_size": "matrix size differs from the series' majority",
}
#: Skip reasons for objects that are simply not axial CT slices.
NON_IMAGE_REASONS: dict[str, str] = {
    "localizer": "localizer/scout",
    "dose_report": "dose report",
    "secondary_capture": "secondary capture (pass allow_secondary_capture / --allow-secondary-capture to read as HU)",
    "not_ct": "not CT",
    "no_pixel_data": "no pixel data (report or other non-image object)",
    "not_axial": "not axial (reformat)",
}

#: Lossy transfer syntaxes (JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, HTJ2K lossy).
LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                            "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"})


@dataclass(frozen=True)
class FrameHeader:
    """Everything needed to place and decode one image (a single-frame file or one frame of a multi-frame file)."""

    source: DicomSource
    frame: int | None
    study_uid: str
    series_uid: str
    sop_uid: str
    geometry: SliceGeometry
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    encoding: PixelEncoding
    transfer_syntax: str
    tilt_tag: float | None
    slice_thickness: float | None
    secondary_capture: bool
    invalid_uids: tuple[str, ...] = ()
    facts: tuple[tuple[str, Any], ...] = ()
    #: Bytes of native pixel data beyond the image (less than a frame; ignored), see :mod:`ichd.io.pixel_checks`.
    excess_pixel_bytes: int = 0
    #: File offset of the encapsulated Pixel Data value (single-frame files), for :func:`ichd.io.decode.decode_direct`.
    pixel_offset: int | None = None

    @property
    def slice_id(self) -> str:
        """The SOPInstanceUID, with ``#<frame number>`` (1-based) for frames of a multi-frame file."""
        return self.sop_uid if self.frame is None else f"{self.sop_uid}#{self.frame + 1}"

    @property
    def name(self) -> str:
        return self.source.name if self.frame is None else f"{self.source.name}[frame {self.frame + 1}]"

    @property
    def job(self) -> DecodeJob:
        """What a decoding worker needs for this image."""
        return DecodeJob(self.name, self.source, self.frame, self.transfer_syntax, self.encoding,
                         (self.rows, self.columns), self.pixel_offset)


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, with a reason code (see :data:`PROBLEM_REASONS`, :data:`NON_IMAGE_REASONS`)."""

    name: str
    reason: str
    detail: str = ""
    study_uid: str | None = None

    @property
    def is_problem(self) -> bool:
        return self.reason in PROBLEM_REASONS

    def message(self) -> str:
        return f"{self.name}: {self.detail or PROBLEM_REASONS.get(self.reason) or NON_IMAGE_REASONS[self.reason]}"


class _TagError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """True for a syntactically valid DICOM UID (digits and dots, no leading zeros, at most 64 characters)."""
    return len(value) <= 64 and bool(_UID_RE.match(value))


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    value = ds.get(keyword, default)
    return default if value is None or value == "" else value


def _floats(value: Any, n: int, tag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in (value if isinstance(value, Iterable) and not isinstance(value, str)
                                          else [value]))
    except (TypeError, ValueError) as e:
        raise _TagError("bad_tags", f"{tag} {value!r} is not numeric") from e
    if len(values) != n or not all(np.isfinite(values)):
        raise _TagError("bad_tags", f"{tag} must have {n} finite values, got {value!r}")
    return values


def _number(value: Any, tag: str) -> float:
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        value = next(iter(value), None)
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise _TagError("bad_tags", f"{tag} {value!r} is not a number") from e


def _require(ds: Any, keyword: str) -> Any:
    value = _get(ds, keyword)
    if value is None:
        raise _TagError("missing_tags", f"required tag {keyword} is missing or empty")
    return value


def _sop_class(ds: Any) -> str:
    uid = _get(ds, "SOPClassUID")
    if uid is None and getattr(ds, "file_meta", None) is not None:
        uid = _get(ds.file_meta, "MediaStorageSOPClassUID")
    return str(uid or "")


def _upper_list(value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).upper() for v in values]


def _image_type(ds: Any) -> list[str]:
    return _upper_list(_get(ds, "ImageType", []))


def _functional(ds: Any, frame: int, sequence: str) -> Any:
    """The first item of a functional-group ``sequence`` for ``frame``: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = _get(ds, groups)
        if items is not None and len(items) > index:
            inner = _get(items[index], sequence)
            if inner:
                return inner[0]
    return None


def classify(ds: Any, *, allow_secondary_capture: bool) -> tuple[str, str] | None:
    """Why a dataset is not an axial CT image (``(reason, detail)``), or ``None`` when it is one."""
    sop_class = _sop_class(ds)
    modality = str(_get(ds, "Modality", "")).upper()
    image_type = _image_type(ds)
    description = str(_get(ds, "SeriesDescription", "")).upper()
    if sop_class in DOSE_SR_SOP_CLASSES or "DOSE" in description or any("DOSE" in t for t in image_type):
        return "dose_report", ""
    if sop_class.startswith(STRUCTURED_REPORT_PREFIX) or (
            _get(ds, "Rows") is None and sop_class not in CT_SOP_CLASSES
            and not sop_class.startswith(SECONDARY_CAPTURE_PREFIX)):
        return "no_pixel_data", f"SOP class {sop_class or 'unknown'} has no image"
    if "LOCALIZER" in image_type or "SCOUT" in image_type or "SCOUT" in description:
        return "localizer", ""
    is_sc = sop_class.startswith(SECONDARY_CAPTURE_PREFIX)
    if is_sc and not allow_secondary_capture:
        return "secondary_capture", ""
    if not is_sc and sop_class not in CT_SOP_CLASSES and modality != "CT":
        return "not_ct", f"Modality {modality or 'missing'}, SOP class {sop_class or 'missing'}"
    if is_sc and modality not in ("CT", "OT", ""):
        return "not_ct", f"secondary capture of Modality {modality}"
    return None


def _encoding(ds: Any, frame_ds: Any | None) -> PixelEncoding:
    bits_allocated = int(_require(ds, "BitsAllocated"))
    bits_stored = int(_get(ds, "BitsStored", bits_allocated))
    pixel_rep = int(_require(ds, "PixelRepresentation"))
    photometric = str(_require(ds, "PhotometricInterpretation")).upper()
    samples = int(_get(ds, "SamplesPerPixel", 1))
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise _TagError("bad_tags", f"PhotometricInterpretation {photometric} with SamplesPerPixel {samples} is a "
                                    "colour image, not CT")
    if bits_allocated not in (8, 16, 32) or not 1 <= bits_stored <= bits_allocated:
        raise _TagError("bad_tags", f"BitsStored {bits_stored} / BitsAllocated {bits_allocated} are inconsistent")
    source = frame_ds if frame_ds is not None else ds
    slope = _number(_get(source, "RescaleSlope", 1.0), "RescaleSlope")
    intercept = _number(_get(source, "RescaleIntercept", 0.0), "RescaleIntercept")
    if slope == 0 or not np.isfinite(slope) or not np.isfinite(intercept):
        raise _TagError("bad_tags", f"RescaleSlope {slope} / RescaleIntercept {intercept} are unusable")
    padding = signed_padding(_get(ds, "PixelPaddingValue"), bits_allocated, pixel_rep)
    limit = signed_padding(_get(ds, "PixelPaddingRangeLimit"), bits_allocated, pixel_rep)
    return PixelEncoding(slope=slope, intercept=intercept, bits_stored=bits_stored, pixel_representation=pixel_rep,
                         photometric=photometric, padding_value=padding, padding_limit=limit)


def _pseudonym(ds: Any) -> str | None:
    patient_id = _get(ds, "PatientID")
    if patient_id is None:
        return None
    return hashlib.sha1(str(patient_id).encode("utf-8")).hexdigest()[:12]


def _facts(ds: Any, transfer_syntax: str, sop_class: str) -> tuple[tuple[str, Any], ...]:
    kvp = _get(ds, "KVP")
    facts: dict[str, Any] = {
        "modality": str(_get(ds, "Modality", "")),
        "manufacturer": str(_get(ds, "Manufacturer", "")),
        "sop_class_uid": sop_class,
        "transfer_syntax": transfer_syntax,
        "kvp": float(kvp) if kvp is not None else None,
        "patient_id": _pseudonym(ds),
        "body_part": str(_get(ds, "BodyPartExamined", "") or "").strip().upper() or None,
    }
    return tuple(facts.items())


def headers_from_dataset(ds: Any, source: DicomSource, *, allow_secondary_capture: bool = False
                         ) -> list[FrameHeader] | Skipped:
    """Turn one header-only dataset into frame headers, or say why it is skipped."""
    study_hint = str(_get(ds, "StudyInstanceUID", "")) or None
    why = classify(ds, allow_secondary_capture=allow_secondary_capture)
    if why is not None:
        return Skipped(source.name, why[0], why[1], study_hint)
    try:
        return _frame_headers(ds, source)
    except _TagError as e:
        return Skipped(source.name, e.reason, e.detail, study_hint)


def _frame_headers(ds: Any, source: DicomSource) -> list[FrameHeader]:
    sop_class = _sop_class(ds)
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(_get(file_meta, "TransferSyntaxUID", "")) if file_meta is not None else ""
    if not transfer_syntax:
        transfer_syntax = "1.2.840.10008.1.2"  # files without a meta header are Implicit VR Little Endian
    study = str(_require(ds, "StudyInstanceUID"))
    series = str(_require(ds, "SeriesInstanceUID"))
    sop = str(_get(ds, "SOPInstanceUID") or (file_meta is not None and _get(file_meta, "MediaStorageSOPInstanceUID"))
              or "")
    if not sop:
        raise _TagError("missing_tags", "required tag SOPInstanceUID is missing or empty")
    invalid_uids = tuple(f"{kw} {value!r}" for kw, value in (("StudyInstanceUID", study),
                                                            ("SeriesInstanceUID", series), ("SOPInstanceUID", sop))
                         if not is_valid_uid(value))
    if _get(ds, "Rows") is None:
        raise _TagError("missing_tags", "image tag Rows is missing (truncated file?)")
    rows, columns = int(_require(ds, "Rows")), int(_require(ds, "Columns"))
    if rows < 1 or columns < 1:
        raise _TagError("bad_tags", f"Rows {rows} / Columns {columns} must be positive")
    if rows > MAX_MATRIX or columns > MAX_MATRIX:
        raise _TagError("bad_tags", f"Rows {rows} / Columns {columns} exceed {MAX_MATRIX} (not a CT slice)")
    n_frames = int(_number(_get(ds, "NumberOfFrames", 1), "NumberOfFrames"))
    if n_frames < 1:
        raise _TagError("bad_tags", f"NumberOfFrames {n_frames} must be positive")
    tilt = _get(ds, "GantryDetectorTilt")
    tilt_tag = _number(tilt, "GantryDetectorTilt") if tilt is not None else None
    thickness = _get(ds, "SliceThickness")
    instance = _get(ds, "InstanceNumber")
    facts = _facts(ds, transfer_syntax, sop_class)
    is_sc = sop_class.startswith(SECONDARY_CAPTURE_PREFIX)
    lossy = str(_get(ds, "LossyImageCompression", "")).strip() == "01" or transfer_syntax in LOSSY_SYNTAXES
    out: list[FrameHeader] = []
    for frame in range(n_frames):
        position_ds = _functional(ds, frame, "PlanePositionSequence") if n_frames > 1 else None
        orient_ds = _functional(ds, frame, "PlaneOrientationSequence") if n_frames > 1 else None
        measures_ds = _functional(ds, frame, "PixelMeasuresSequence") if n_frames > 1 else None
        rescale_ds = _functional(ds, frame, "PixelValueTransformationSequence") if n_frames > 1 else None
        frame_type_ds = _functional(ds, frame, "CTImageFrameTypeSequence") if n_frames > 1 else None
        if frame_type_ds is not None and "LOCALIZER" in _upper_list(_get(frame_type_ds, "FrameType", [])):
            continue
        pos_value = _get(position_ds, "ImagePositionPatient") if position_ds is not None else None
        if pos_value is None and (n_frames == 1 or frame == 0):
            pos_value = _get(ds, "ImagePositionPatient")
        ori_value = _get(orient_ds, "ImageOrientationPatient") if orient_ds is not None else None
        if ori_value is None:
            ori_value = _get(ds, "ImageOrientationPatient")
        position = _floats(pos_value, 3, "ImagePositionPatient") if pos_value is not None else None
        orientation = _floats(ori_value, 6, "ImageOrientationPatient") if ori_value is not None else None
        if orientation is not None:
            try:
                axial = is_axial(orientation)
            except ValueError as e:
                raise _TagError("bad_tags", str(e)) from e
            if not axial:
                raise _TagError("not_axial", f"ImageOrientationPatient {list(orientation)} is not axial")
        spacing_value = _get(measures_ds, "PixelSpacing") if measures_ds is not None else None
        if spacing_value is None:
            spacing_value = _get(ds, "PixelSpacing")
        spacing = _floats(spacing_value, 2, "PixelSpacing") if spacing_value is not None else None
        if spacing is not None and min(spacing) <= 0:
            raise _TagError("bad_tags", f"PixelSpacing {list(spacing)} must be positive")
        frame_thickness = _get(measures_ds, "SliceThickness") if measures_ds is not None else None
        thick = frame_thickness if frame_thickness is not None else thickness
        inst = int(_number(instance, "InstanceNumber")) if (n_frames == 1 and instance is not None) else (
            frame + 1 if n_frames > 1 else None)
        name = source.name if n_frames == 1 else f"{source.name}[frame {frame + 1}]"
        out.append(FrameHeader(
            source=source, frame=None if n_frames == 1 else frame, study_uid=study, series_uid=series, sop_uid=sop,
            geometry=SliceGeometry(name, position, orientation, inst, int(lossy)), rows=rows, columns=columns,
            pixel_spacing=spacing, encoding=_encoding(ds, rescale_ds), transfer_syntax=transfer_syntax,
            tilt_tag=tilt_tag, slice_thickness=float(thick) if thick is not None else None,
            secondary_capture=is_sc, invalid_uids=invalid_uids, facts=facts))
    if not out:
        raise _TagError("localizer", "every frame is a localizer")
    return out


#: What parsing a broken header can raise (found by the reader's fuzzing, ``fuzz/fuzz_readers.py``): a value
#: that is not what its VR says, an unknown VR (``NotImplementedError``), a truncated or corrupt deflate stream
#: (``zlib.error``), lengths past the end of the file, a corrupt zip member (``BadZipFile``: bad CRC, bad local
#: header); plus pydicom's ``BytesLengthException`` (imported lazily).
HEADER_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, struct.error, zlib.error,
    NotImplementedError, OverflowError, EOFError, zipfile.BadZipFile)


def read_header(source: DicomSource, *, allow_secondary_capture: bool = False) -> list[FrameHeader] | Skipped:
    """Read one file's header (no pixels) and classify it. Never raises for bad files: returns :class:`Skipped`.

    pydicom's own warnings (e.g. "Invalid value for VR UI") are recorded and logged at debug level with the file
    name; the problems that matter become :class:`IngestWarning` s (e.g. ``invalid_uid``).
    """
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    with pywarnings.catch_warnings(record=True) as caught, contextlib.ExitStack() as files:
        pywarnings.simplefilter("always")
        try:
            opened = source.open()
            fp = files.enter_context(open(opened, "rb")) if isinstance(opened, str) else opened
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError:
                # some writers omit the 128-byte preamble; accept such files only if they look like images
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
                if _get(ds, "SOPInstanceUID") is None and _get(ds, "Rows") is None:
                    return Skipped(source.name, "not_dicom", "not a DICOM file (no DICM preamble, no image tags)")
            headers = headers_from_dataset(ds, source, allow_secondary_capture=allow_secondary_capture)
            if isinstance(headers, Skipped):
                return headers
            return _check_pixel_data(fp, ds, headers)  # fp is at the Pixel Data element now
        except (InvalidDicomError, EOFError) as e:
            return Skipped(source.name, "not_dicom", f"not a DICOM file ({e})")
        except (*HEADER_PARSE_ERRORS, BytesLengthException) as e:
            return Skipped(source.name, "unreadable", f"header could not be read ({describe_exception(e)})")
        finally:
            for w in caught:
                log.debug("%s: %s", source.name, w.message)


def _check_pixel_data(fp: Any, ds: Any, headers: list[FrameHeader]) -> list[FrameHeader] | Skipped:
    """Skip a file whose Pixel Data contradicts its tags or whose compressed frames are cut short (see
    :mod:`ichd.io.pixel_checks`); record harmless trailing bytes on its frame headers."""
    first = headers[0]
    check = check_pixel_data(fp, first.transfer_syntax, rows=first.rows, columns=first.columns,
                             bits_allocated=int(_get(ds, "BitsAllocated", 16)),
                             samples=int(_get(ds, "SamplesPerPixel", 1) or 1),
                             frames=int(_number(_get(ds, "NumberOfFrames", 1), "NumberOfFrames")))
    if check.problem is not None:
        return Skipped(first.source.name, check.problem.reason, check.problem.detail, first.study_uid)
    if check.excess_bytes:
        headers = [replace(h, excess_pixel_bytes=check.excess_bytes) for h in headers]
    if check.value_offset is not None and len(headers) == 1 and headers[0].frame is None \
            and first.source.member is None:
        headers = [replace(headers[0], pixel_offset=check.value_offset)]
    return headers


# --------------------------------------------------------------------------------------------------------------
# the reader


@dataclass
class DicomReadResult:
    """Series read from a set of DICOM sources, plus files that were not used (for the caller's warnings)."""

    series: list[CTSeries] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def scan_headers(sources: Sequence[DicomSource], *, strict: bool = False, allow_secondary_capture: bool = False,
                 decoder: FrameDecoder | None = None) -> tuple[list[FrameHeader], list[Skipped]]:
    """Read every header; in strict mode the first broken file (in ``sources`` order) raises :class:`InputError`.

    With a process-pool ``decoder``, big folders are read by its worker processes (header parsing is pure Python).
    """
    headers: list[FrameHeader] = []
    skipped: list[Skipped] = []
    read = functools.partial(read_header, allow_secondary_capture=allow_secondary_capture)
    results = decoder.map(read, sources) if decoder is not None else iter(map(read, sources))
    bar = progress_bar(desc="reading DICOM headers", total=len(sources), unit="file")
    try:
        for result in results:
            bar.update(1)
            if isinstance(result, Skipped):
                if strict and result.is_problem:
                    raise InputError(result.message(), hint="fix or remove the file, or read without --strict")
                skipped.append(result)
            else:
                headers.extend(result)
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()  # shuts the header pool down even when strict mode stopped early
    return headers, skipped


def _dedupe_sop(frames: list[FrameHeader]) -> tuple[list[FrameHeader], list[str]]:
    seen: dict[str, FrameHeader] = {}
    dropped: list[str] = []
    for f in sorted(frames, key=lambda f: (f.geometry.preference, f.name)):
        if f.slice_id in seen:
            dropped.append(f.name)
        else:
            seen[f.slice_id] = f
    return list(seen.values()), dropped


def _majority_matrix(frames: list[FrameHeader], strict: bool) -> tuple[list[FrameHeader], list[Skipped], str | None]:
    sizes = Counter((f.rows, f.columns) for f in frames)
    if len(sizes) == 1:
        return frames, [], None
    (rows, cols), _ = sizes.most_common(1)[0]
    odd = [f for f in frames if (f.rows, f.columns) != (rows, cols)]
    desc = ", ".join(f"{r}×{c}: {n}" for (r, c), n in sizes.most_common())
    if strict:
        raise InputError(f"series {frames[0].series_uid} mixes matrix sizes ({desc}), e.g. {odd[0].name}",
                         hint="remove the odd files, or read without --strict to keep the majority size")
    skipped = [Skipped(f.name, "matrix_size", f"{f.rows}×{f.columns} instead of {rows}×{cols}", f.study_uid)
               for f in odd]
    return [f for f in frames if (f.rows, f.columns) == (rows, cols)], skipped, desc


def _tilt(frames: Sequence[FrameHeader]) -> tuple[float, str | None]:
    tags = [f.tilt_tag for f in frames if f.tilt_tag is not None]
    if tags and abs(float(statistics.median(tags))) >= TILT_MIN_DEG:
        return float(statistics.median(tags)), "GantryDetectorTilt"
    orientations = [f.geometry.orientation for f in frames if f.geometry.orientation is not None]
    if orientations:
        angle = oblique_angle_deg(Counter(orientations).most_common(1)[0][0])
        if angle >= TILT_MIN_DEG:
            return angle, "ImageOrientationPatient"
    return 0.0, None


def _most_common(values: Iterable[Any]) -> Any:
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def _plan_series(frames: list[FrameHeader], strict: bool) -> tuple[list[FrameHeader], dict[str, Any], list[Skipped]]:
    """Order one series' frames and collect its warnings; returns the frames to decode, in order."""
    warnings: list[IngestWarning] = []
    frames, dup_sop = _dedupe_sop(frames)
    if dup_sop:
        warnings.append(IngestWarning("duplicate_instance",
                                      f"{len(dup_sop)} file(s) repeat a SOPInstanceUID already read; kept one "
                                      "(lossless before lossy, then by file name)",
                                      tuple(dup_sop[:MAX_FILES_LISTED])))
    frames, odd, sizes = _majority_matrix(frames, strict)
    if sizes:
        warnings.append(IngestWarning("mixed_matrix_size",
                                      f"slices have different matrix sizes ({sizes}); kept the majority size, "
                                      f"skipped {len(odd)} slice(s)", tuple(s.name for s in odd[:MAX_FILES_LISTED])))
    ordering = order_slices([f.geometry for f in frames])
    warnings.extend(ordering.warnings)
    ordered = [frames[i] for i in ordering.order]
    tilt, tilt_source = _tilt(ordered)
    if tilt_source is not None:
        warnings.append(IngestWarning(
            "gantry_tilt",
            f"gantry tilt {tilt:.1f}° (from {tilt_source}): slices are stacked as acquired, so the volume is "
            "sheared along y; it is not resampled"))
    spacings = Counter(f.pixel_spacing for f in ordered if f.pixel_spacing is not None)
    if len(spacings) > 1:
        warnings.append(IngestWarning("mixed_pixel_spacing",
                                      f"slices have different PixelSpacing values {sorted(spacings)}; "
                                      "the most common one is reported"))
    pixel_spacing = _most_common(f.pixel_spacing for f in ordered) or (float("nan"), float("nan"))
    dz = ordering.spacing_mm
    if len(ordered) == 1 and not np.isfinite(dz):
        thickness = ordered[0].slice_thickness
        dz = float(thickness) if thickness else float("nan")
    encodings = [f.encoding for f in ordered]
    if any(has_corrupted_intercept(e) for e in encodings):
        n = sum(has_corrupted_intercept(e) for e in encodings)
        warnings.append(IngestWarning(
            "bad_intercept_fixed",
            f"{n} slice(s) have the RSNA corrupted-intercept pattern (BitsStored 12, unsigned, RescaleIntercept > "
            "-100): stored values re-centred (p + 1000, minus 4096 where >= 4096) and intercept set to -1000"))
    if any(implausible_intercept(e) for e in encodings):
        warnings.append(IngestWarning(
            "implausible_intercept",
            "unsigned pixel data with RescaleIntercept > -100 cannot represent air; HU values are probably wrong "
            "(no known fix for this BitsStored)"))
    if any(e.photometric == "MONOCHROME1" for e in encodings):
        warnings.append(IngestWarning("monochrome1_inverted",
                                      "MONOCHROME1 images: stored values were inverted before the rescale"))
    invalid = sorted({u for f in ordered for u in f.invalid_uids})
    if invalid:
        warnings.append(IngestWarning(
            "invalid_uid",
            f"not valid DICOM UIDs (pseudo-IDs?), kept as given: {', '.join(invalid[:3])}"
            f"{' ...' if len(invalid) > 3 else ''}; DICOM files written from this series need real UIDs"))
    excess = [f for f in ordered if f.excess_pixel_bytes]
    if excess:
        warnings.append(IngestWarning(
            "excess_pixel_data",
            f"{len(excess)} slice(s) hold up to {max(f.excess_pixel_bytes for f in excess)} byte(s) of pixel data "
            "beyond the image their tags describe (not DICOM-conformant padding); the extra bytes were ignored",
            tuple(f.name for f in excess[:MAX_FILES_LISTED])))
    if any(f.secondary_capture for f in ordered):
        warnings.append(IngestWarning(
            "secondary_capture",
            "read from Secondary Capture images: stored values (after any rescale) are taken as HU; "
            "geometry tags may be missing"))
    facts = [dict(f.facts) for f in ordered]
    orientation = _most_common(f.geometry.orientation for f in ordered)
    plan = {
        "spacing_mm": (dz, float(pixel_spacing[0]), float(pixel_spacing[1])),
        "positions_mm": ordering.positions_mm,
        "tilt_deg": tilt,
        "warnings": warnings,
        "meta": {
            "modality": _most_common(f["modality"] for f in facts) or "",
            "manufacturer": _most_common(f["manufacturer"] for f in facts) or "",
            "kvp": _most_common(f["kvp"] for f in facts),
            "sop_class_uid": _most_common(f["sop_class_uid"] for f in facts),
            "transfer_syntaxes": sorted({f.transfer_syntax for f in ordered}),
            "patient_id": _most_common(f["patient_id"] for f in facts) or ordered[0].study_uid,
            "body_part": _most_common(f["body_part"] for f in facts),
            "ordering": ordering.method,
            "tilt_source": tilt_source,
            "gaps": [{"after_index": k, "step_mm": round(step, 4), "expected_mm": round(ordering.spacing_mm, 4)}
                     for k, step in ordering.gaps],
            "duplicates": [frames[d].name for d in ordering.duplicates] + dup_sop,
            "uneven_spacing": ordering.uneven,
            "slice_thickness_mm": _most_common(f.slice_thickness for f in ordered),
            "multiframe": any(f.frame is not None for f in ordered),
            "image_orientation": list(orientation) if orientation is not None else None,
            "normal": [round(float(v), 6) for v in slice_normal(orientation)] if orientation is not None else None,
        },
    }
    return ordered, plan, odd


def read_dicom(sources: Sequence[DicomSource], *, strict: bool = False, workers: int | None = None,
               allow_secondary_capture: bool = False, independent: bool = False,
               pool: PoolKind = "process") -> DicomReadResult:
    """Read DICOM sources into one :class:`CTSeries` per StudyInstanceUID/SeriesInstanceUID.

    Args:
        sources: files or zip members (see :func:`ichd.io.sources.folder_sources` / ``zip_sources``).
        strict: raise :class:`InputError` on the first broken file (unreadable, missing/inconsistent tags, failed
            decode, odd matrix size) instead of skipping it with a warning.
        workers: decoding workers (default ``min(2, cpu_count)``; 1 decodes in this process).
        allow_secondary_capture: read Secondary Capture images (Modality CT/OT) as CT in HU.
        independent: every image becomes its own one-slice series (``series_instance_uid`` is then the
            image's SOPInstanceUID; the real one is in ``meta["source_series_instance_uid"]``).
        pool: ``"process"`` (default) or ``"thread"`` workers (see :mod:`ichd.io.decode`).
    """
    with FrameDecoder(workers, pool) as decoder:
        return _read_dicom(sources, decoder, strict=strict, allow_secondary_capture=allow_secondary_capture,
                           independent=independent)


def _read_dicom(sources: Sequence[DicomSource], decoder: FrameDecoder, *, strict: bool,
                allow_secondary_capture: bool, independent: bool) -> DicomReadResult:
    headers, skipped = scan_headers(sources, strict=strict, allow_secondary_capture=allow_secondary_capture,
                                    decoder=decoder)
    if headers:
        check_decoders({h.transfer_syntax: h.name for h in reversed(headers)})  # reversed: the first file wins
    groups: dict[tuple[str, str], list[FrameHeader]] = defaultdict(list)
    for h in headers:
        if independent:
            h = replace(h, series_uid=h.slice_id, facts=(*h.facts, ("source_series_instance_uid", h.series_uid)))
        groups[(h.study_uid, h.series_uid)].append(h)

    plans = []
    for (study, series), frames in groups.items():
        ordered, plan, odd = _plan_series(frames, strict)
        skipped.extend(odd)
        plans.append((study, series, ordered, plan))

    result = DicomReadResult(skipped=skipped)
    bar = progress_bar(desc="decoding DICOM", total=sum(len(p[2]) for p in plans), unit="slice")
    try:
        for study, series, ordered, plan in plans:
            built = _decode_series(decoder, study, series, ordered, plan, strict=strict, bar=bar, skipped=skipped)
            if built is not None:
                result.series.append(built)
    finally:
        bar.close()
        close_zip_handles()
    return result


def _decode_series(decoder: FrameDecoder, study: str, series: str, ordered: list[FrameHeader],
                   plan: dict[str, Any], *, strict: bool, bar: Any, skipped: list[Skipped]) -> CTSeries | None:
    """Decode one planned series into a :class:`CTSeries` (``None`` when no slice could be decoded)."""
    volume = decoder.new_volume((len(ordered), ordered[0].rows, ordered[0].columns))
    failed: set[int] = set()
    air = Counter[str]()

    def on_outcome(k: int, outcome: DecodeOutcome) -> None:
        bar.update(1)
        header = ordered[k]
        if outcome.error is not None:
            if outcome.missing_decoder:
                raise missing_decoder_error(header.job, outcome.error)
            skip = Skipped(header.name, "decode_failed", f"pixel data could not be decoded ({outcome.error})",
                           header.study_uid)
            if strict:
                raise InputError(skip.message(), hint="fix or remove the file, or read without --strict")
            failed.add(k)
            skipped.append(skip)
            return
        assert outcome.fixes is not None
        air["padding"] += outcome.fixes.n_padding
        air["out_of_fov"] += outcome.fixes.n_out_of_fov

    decoder.decode_into([h.job for h in ordered], volume, on_outcome)
    keep = [k for k in range(len(ordered)) if k not in failed]
    if not keep:
        return None
    if failed:
        ordered, volume, plan = _replan_survivors(ordered, keep, volume, plan, strict)
        keep = list(range(len(ordered)))
    meta = plan["meta"]
    if air["padding"] or air["out_of_fov"]:
        meta["air_fill"] = {"padding": int(air["padding"]), "out_of_fov": int(air["out_of_fov"])}
    source_series = dict(ordered[0].facts).get("source_series_instance_uid")
    if source_series is not None:
        meta["source_series_instance_uid"] = source_series
    meta["n_files"] = len({ordered[k].source for k in keep})
    meta["files"] = [ordered[k].source.name for k in keep]
    return CTSeries(
        hu=volume,
        spacing_mm=plan["spacing_mm"],
        positions_mm=np.asarray(plan["positions_mm"], dtype=np.float64)[keep],
        sop_instance_uids=[ordered[k].slice_id for k in keep],
        study_instance_uid=study,
        series_instance_uid=series,
        tilt_deg=plan["tilt_deg"],
        warnings=list(plan["warnings"]),
        source=_common_source([ordered[k].source for k in keep]),
        source_kind="dicom",
        meta=meta,
        source_files=list(meta["files"]),
    )


def _replan_survivors(ordered: list[FrameHeader], keep: list[int], volume: np.ndarray, plan: dict[str, Any],
                      strict: bool) -> tuple[list[FrameHeader], np.ndarray, dict[str, Any]]:
    """Geometry of the slices that decoded: spacing, gaps, positions and their warnings are recomputed without the
    failed ones (a skipped file must not leave a gap or uneven-spacing report behind). What was decided before
    decoding (SOP and position duplicates, matrix-size outliers) is carried over."""
    survivors = [ordered[k] for k in keep]
    order, replan, _ = _plan_series(survivors, strict)
    index = {id(f): i for i, f in enumerate(survivors)}
    rows = [index[id(f)] for f in order]
    carried = [w for w in plan["warnings"] if w.code in ("duplicate_instance", "mixed_matrix_size",
                                                        "duplicate_position")]
    replan["warnings"] = carried + [w for w in replan["warnings"] if w.code not in {c.code for c in carried}]
    replan["meta"]["duplicates"] = plan["meta"]["duplicates"]
    return order, volume[keep][rows], replan


def reference_dataset(series: CTSeries, index: int = 0) -> Any:
    """Re-read the header (no pixels) of slice ``index`` of a DICOM :class:`CTSeries` (e.g. to copy the patient and
    study modules into a derived object). Works for files and zip members (``meta["files"]`` names them)."""
    import pydicom

    files = series.meta.get("files")
    if series.source_kind != "dicom" or not files:
        raise InputError(f"series {series.series_instance_uid} was not read from DICOM files",
                         hint="reference_dataset needs a series returned by read_ct on DICOM input")
    name = files[index]
    prefix = series.source + ":"
    if series.source.lower().endswith(".zip") and name.startswith(prefix):
        source = DicomSource(series.source, name[len(prefix):])
    else:
        source = DicomSource(name)
    try:
        return pydicom.dcmread(source.open(), stop_before_pixels=True)
    except (OSError, ValueError) as e:
        raise InputError(f"{name}: could not re-read the DICOM header ({e})", hint="was the file moved?") from e
    finally:
        close_zip_handles()


def _common_source(sources: Sequence[DicomSource]) -> str:
    if len(sources) == 1:
        return sources[0].name
    if all(s.member is not None for s in sources):
        return sources[0].path
    try:
        return os.path.commonpath([s.path for s in sources])
    except ValueError:
        return sources[0].path


def skipped_warnings(skipped: Sequence[Skipped]) -> list[IngestWarning]:
    """Summarise skipped files as warnings: one ``skipped_files`` warning per reason kind (problems / non-images)."""
    out: list[IngestWarning] = []
    for code, table in (("skipped_files", PROBLEM_REASONS), ("skipped_non_image", NON_IMAGE_REASONS)):
        chosen = [s for s in skipped if s.reason in table]
        if not chosen:
            continue
        counts = Counter(s.reason for s in chosen)
        desc = ", ".join(f"{n} {table[r]}" for r, n in counts.most_common())
        first = chosen[0].message()
        out.append(IngestWarning(code, f"skipped {len(chosen)} file(s): {desc} (first: {first})",
                                 tuple(s.name for s in chosen[:MAX_FILES_LISTED])))
    return out
