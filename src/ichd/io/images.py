"""Read windowed 8-bit CT images (PNG/JPG) back into Hounsfield units.

Two inputs are supported:

* **CT-ICH roots** (PhysioNet *Computed Tomography Images for Intracranial Hemorrhage Detection and
  Segmentation*, JPG export): ``ROOT/brain/<ppp>/<sss>.jpg`` (window L40/W120) and ``ROOT/bone/<ppp>/<sss>.jpg``
  (window L700/W3200). :func:`ctich_to_hu` merges the two windows into one HU image, :func:`read_ctich_patient`
  reads one patient as a :class:`~ichd.types.CTSeries`, :func:`read_ctich` reads many.
* **Any folder of windowed slices** exported with one known window: :func:`read_image_folder`.

A windowed 8-bit image only keeps the HU range of its window: values below ``L - W/2`` are black and values
above ``L + W/2`` white. The HU read back is therefore exact only up to the window's quantisation step
(``W / 255`` HU per gray level) and saturated outside the window. These readers never invent spacing: JPG/PNG
carry none, so ``spacing_mm`` is ``nan`` and ``positions_mm`` is the slice index (0, 1, 2, ... in the order
read), which keeps slice order usable by sequence models without claiming millimetres.
"""

from __future__ import annotations

import csv
import hashlib
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ichd.constants import AIR_HU, CTICH_BONE_WINDOW, CTICH_BRAIN_WINDOW
from ichd.errors import InputError
from ichd.types import CTSeries, IngestWarning
from ichd.utils.logging import get_logger

log = get_logger(__name__)

#: File name endings read as image slices.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Gray levels of the CT-ICH brain JPG treated as saturated (outside L40/W120). The JPGs' black level is 1,
#: not 0 (88 % of air pixels in ``brain/071/014.jpg`` are 1, with JPEG ringing up to ~10 beside edges), so a strict
#: ``0 < g < 255`` test would read air as -19.5 HU. With this margin, levels ``<= 2`` and ``>= 253`` come from the
#: bone window instead: on ``hu-slices/071_14`` the mean absolute HU error over the whole slice drops from 506 to
#: 68 HU while inside the brain it stays at 2.8 HU (correlation 0.92 with the real HU values).
CTICH_SATURATION_MARGIN: int = 2

#: Bone-window slice offsets known for CT-ICH v1.0.0 (``bone/<s + offset>`` shows ``brain/<s>``), used when the
#: root has no ``known_issues.csv``.
CTICH_DEFAULT_BONE_OFFSETS: dict[int, int] = {81: 2}

_SHIFT_RE = re.compile(r"<s\s*\+\s*(\d+)>")


def window_to_hu(gray: np.ndarray, level: float, width: float) -> np.ndarray:
    """Invert an 8-bit display window: gray level ``g`` (0..255) -> ``level - width/2 + g * width / 255`` HU."""
    g = np.asarray(gray, dtype=np.float32)
    return (np.float32(level - width / 2.0) + g * np.float32(width / 255.0)).astype(np.float32)


def ctich_to_hu(brain_u8: np.ndarray, bone_u8: np.ndarray | None = None, *,
                margin: int = CTICH_SATURATION_MARGIN) -> np.ndarray:
    """Merge a CT-ICH brain-window JPG and its bone-window JPG into one float32 HU image.

    The brain JPG is window L40/W120: ``HU = -20 + g * 120 / 255``, about **0.47 HU per gray level**, exact
    inside [-20, 100] HU. The bone JPG is window L700/W3200: ``HU = -900 + g * 3200 / 255``, about
    **12.5 HU per gray level**, covering [-900, 2300] HU. The brain value is used wherever the brain image is not
    saturated (``margin < g < 255 - margin``; see :data:`CTICH_SATURATION_MARGIN` for why the margin is 2, not 0);
    elsewhere (air, fat, bone) the coarser bone value is used.

    Without a bone image (a missing bone file), saturated black pixels become air (:data:`AIR_HU`, the usual
    content below -20 HU in a head CT: it keeps the background dark in wide windows) and saturated white pixels
    stay at the top of the brain window (100 HU), which is all the brain JPG can tell.

    Args:
        brain_u8: brain-window image, (..., H, W) uint8.
        bone_u8: bone-window image of the same shape, or ``None``.
        margin: gray levels at each end of the brain window treated as saturated.
    """
    brain = np.asarray(brain_u8)
    if brain.dtype != np.uint8:
        raise InputError(f"CT-ICH brain image must be 8-bit, got dtype {brain.dtype}")
    hu_brain = window_to_hu(brain, *CTICH_BRAIN_WINDOW)
    inside = (brain > margin) & (brain < 255 - margin)
    if bone_u8 is None:
        low = np.float32(AIR_HU)
        high = np.float32(CTICH_BRAIN_WINDOW[0] + CTICH_BRAIN_WINDOW[1] / 2)
        outside = np.where(brain <= margin, low, high)
        return np.where(inside, hu_brain, outside).astype(np.float32)
    bone = np.asarray(bone_u8)
    if bone.shape != brain.shape:
        raise InputError(f"CT-ICH bone image shape {bone.shape} differs from brain image shape {brain.shape}")
    if bone.dtype != np.uint8:
        raise InputError(f"CT-ICH bone image must be 8-bit, got dtype {bone.dtype}")
    return np.where(inside, hu_brain, window_to_hu(bone, *CTICH_BONE_WINDOW)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# CT-ICH
# --------------------------------------------------------------------------------------------------------------

def ctich_scan_id(patient: int) -> str:
    """Scan, series and patient id of CT-ICH patient ``patient``: ``ctich-049``."""
    return f"ctich-{int(patient):03d}"


def ctich_slice_id(patient: int, slice_number: int) -> str:
    """Slice id of CT-ICH slice ``slice_number`` (the file number) of ``patient``: ``ctich-049-011``."""
    return f"ctich-{int(patient):03d}-{int(slice_number):03d}"


def _numbered_jpgs(folder: Path) -> dict[int, Path]:
    out: dict[int, Path] = {}
    if not folder.is_dir():
        return out
    for p in folder.iterdir():
        if p.suffix.lower() in (".jpg", ".jpeg") and p.stem.isdigit():
            out[int(p.stem)] = p
    return out


def is_ctich_root(path: str | Path) -> bool:
    """True when ``path`` is a folder laid out like CT-ICH: ``brain/<number>/<number>.jpg`` (bone/ optional)."""
    brain = Path(path) / "brain"
    if not brain.is_dir():
        return False
    for sub in brain.iterdir():
        if sub.is_dir() and sub.name.isdigit() and _numbered_jpgs(sub):
            return True
    return False


def ctich_patients(root: str | Path) -> list[int]:
    """Patient numbers present under ``root/brain`` (sorted)."""
    brain = Path(root) / "brain"
    if not brain.is_dir():
        raise InputError(f"{str(root)!r} is not a CT-ICH folder: it has no brain/ sub-folder",
                         hint="pass the folder that holds brain/<patient>/<slice>.jpg and bone/...")
    return sorted(int(p.name) for p in brain.iterdir() if p.is_dir() and p.name.isdigit() and _numbered_jpgs(p))


def ctich_bone_offsets(root: str | Path) -> dict[int, int]:
    """Per-patient bone slice offsets: parsed from ``root/known_issues.csv`` when present, else the defaults.

    A row ``patient=81, window=bone`` whose ``issue`` says ``bone/081/<s+2>.jpg ...`` gives offset 2.
    """
    path = Path(root) / "known_issues.csv"
    if not path.is_file():
        return dict(CTICH_DEFAULT_BONE_OFFSETS)
    offsets: dict[int, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"patient", "window", "issue"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"{path}: missing column(s) {sorted(missing)}",
                             hint="expected columns patient,window,issue")
        for i, row in enumerate(reader, start=2):
            if (row.get("window") or "").strip() != "bone":
                continue
            m = _SHIFT_RE.search(row.get("issue") or "")
            if m:
                try:
                    offsets[int(row["patient"])] = int(m.group(1))
                except ValueError as e:
                    raise InputError(f"{path} line {i}: patient {row['patient']!r} is not a number") from e
    return offsets


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, dtype=np.uint8)


def read_ctich_patient(root: str | Path, patient: int, *,
                       bone_offsets: dict[int, int] | None = None) -> CTSeries:
    """Read CT-ICH patient ``patient`` from ``root`` as one HU :class:`CTSeries`.

    Slices are the brain JPGs sorted by number (CT-ICH numbers run inferior -> superior). Each is merged with the
    bone JPG of the same number plus the patient's bone offset (patient 081: +2, from ``known_issues.csv`` or
    :data:`CTICH_DEFAULT_BONE_OFFSETS`). A missing or unreadable bone JPG leaves that slice brain-only (see
    :func:`ctich_to_hu`) and adds a ``missing_bone_window`` warning.

    Ids: series/study/scan id ``ctich-049``, slice ids ``ctich-049-011`` (file number), ``meta["patient_id"]``
    ``ctich-049``. ``spacing_mm`` is ``(nan, nan, nan)`` (the JPGs carry no geometry) and ``positions_mm`` is the
    slice index.
    """
    root = Path(root)
    patient = int(patient)
    brain_files = _numbered_jpgs(root / "brain" / f"{patient:03d}")
    if not brain_files:
        raise InputError(f"CT-ICH patient {patient:03d} has no brain JPGs under {root / 'brain'}",
                         hint=f"available patients: {', '.join(f'{p:03d}' for p in ctich_patients(root)) or 'none'}")
    bone_files = _numbered_jpgs(root / "bone" / f"{patient:03d}")
    offsets = ctich_bone_offsets(root) if bone_offsets is None else bone_offsets
    offset = offsets.get(patient, 0)
    scan_id = ctich_scan_id(patient)
    series_warnings: list[IngestWarning] = []
    if offset:
        series_warnings.append(IngestWarning(
            "bone_offset", f"{scan_id}: bone window slices are shifted by {offset:+d}; bone/<s{offset:+d}> is used "
                           f"for brain/<s> (CT-ICH known issue)"))
    numbers = sorted(brain_files)
    slices: list[np.ndarray] = []
    missing: list[str] = []
    shape: tuple[int, ...] | None = None
    for n in numbers:
        try:
            brain = _read_gray(brain_files[n])
        except OSError as e:
            raise InputError(f"cannot read CT-ICH image {brain_files[n]}: {e}",
                             hint="the file is damaged; restore it from the dataset") from e
        if shape is None:
            shape = brain.shape
        elif brain.shape != shape:
            raise InputError(f"{brain_files[n]} is {brain.shape[1]}x{brain.shape[0]} but the other slices of "
                             f"{scan_id} are {shape[1]}x{shape[0]}", hint="all slices of a scan must share one size")
        bone = None
        bone_path = bone_files.get(n + offset)
        if bone_path is not None:
            try:
                bone = _read_gray(bone_path)
            except OSError:
                bone = None
            if bone is not None and bone.shape != brain.shape:
                bone = None
        if bone is None:
            missing.append(str(root / "bone" / f"{patient:03d}" / f"{n + offset:03d}.jpg"))
        slices.append(ctich_to_hu(brain, bone))
    if missing:
        msg = (f"{scan_id}: {len(missing)} slice(s) have no usable bone-window JPG; HU outside [-20, 100] "
               f"there comes from the brain window only (air below, 100 HU above)")
        series_warnings.append(IngestWarning("missing_bone_window", msg, tuple(missing[:20])))
        log.warning(msg)
    hu = np.stack(slices).astype(np.float32)
    return CTSeries(
        hu=hu,
        spacing_mm=(float("nan"), float("nan"), float("nan")),
        positions_mm=np.arange(len(numbers), dtype=np.float64),
        sop_instance_uids=[ctich_slice_id(patient, n) for n in numbers],
        study_instance_uid=scan_id,
        series_instance_uid=scan_id,
        tilt_deg=0.0,
        warnings=series_warnings,
        source=str(root),
        source_kind="ctich",
        source_files=[str(brain_files[n]) for n in numbers],
        meta={"patient_id": scan_id, "ctich_patient": patient, "slice_numbers": numbers,
              "windows": {"brain": list(CTICH_BRAIN_WINDOW), "bone": list(CTICH_BONE_WINDOW)},
              "bone_offset": offset},
    )


def read_ctich(root: str | Path, patients: Iterable[int] | None = None) -> list[CTSeries]:
    """Read CT-ICH patients (all when ``patients`` is None) from ``root``, one :class:`CTSeries` each."""
    from ichd.utils.progress import progress

    root = Path(root)
    available = ctich_patients(root)
    wanted = available if patients is None else [int(p) for p in patients]
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise InputError(f"CT-ICH patient(s) {', '.join(f'{p:03d}' for p in unknown)} not found under {root}",
                         hint=f"{len(available)} patients are available")
    offsets = ctich_bone_offsets(root)
    return [read_ctich_patient(root, p, bone_offsets=offsets)
            for p in progress(wanted, desc="reading CT-ICH", unit="scan")]


# --------------------------------------------------------------------------------------------------------------
# Generic image folders
# --------------------------------------------------------------------------------------------------------------

def natural_key(name: str) -> list[object]:
    """Sort key that orders ``slice2`` before ``slice10`` (digit runs compare as numbers)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _synthetic_uid(path: Path) -> str:
    digest = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:12]
    return f"img-{digest}"


def _load_8bit(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(array, None) or (None, reason). Colour images are converted to gray with a warning by the caller."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise InputError(f"{path} is a {mode} (more than 8-bit) image; read_image_folder expects 8-bit "
                                 f"windowed slices", hint="export the slices as 8-bit gray, or use DICOM/NIfTI")
            note = None
            if mode != "L":
                note = mode
                im = im.convert("L")
            return np.asarray(im, dtype=np.uint8), note
    except InputError:
        raise
    # what PIL raises on broken files (found by fuzz/fuzz_readers.py): ValueError for a truncated PNG chunk,
    # zlib.error for a corrupt PNG stream, struct.error for short headers, DecompressionBombError for huge sizes
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, zlib.error, struct.error,
            Image.DecompressionBombError) as e:
        return None, f"unreadable: {e}"


def parse_window(window: Sequence[float] | str | None) -> tuple[float, float]:
    """``(level, width)`` from a pair or a ``"L,W"`` string; :class:`InputError` when missing or invalid."""
    if window is None:
        raise InputError("windowed PNG/JPG slices need the window they were exported with",
                         hint="pass --window LEVEL,WIDTH (e.g. --window 40,80)")
    if isinstance(window, str):
        parts = window.replace(" ", "").split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError as e:
            raise InputError(f"window {window!r} is not two numbers LEVEL,WIDTH", hint="e.g. --window 40,80") from e
    else:
        values = [float(v) for v in window]
    if len(values) != 2 or not all(np.isfinite(values)):
        raise InputError(f"window {window!r} must be two finite numbers LEVEL,WIDTH", hint="e.g. --window 40,80")
    if values[1] <= 0:
        raise InputError(f"window width must be positive, got {values[1]}", hint="e.g. --window 40,80")
    return values[0], values[1]


def read_image_folder(folder: str | Path, window: Sequence[float] | str | None, *,
                      independent: bool = False) -> list[CTSeries]:
    """Read a folder of 8-bit windowed slices (PNG/JPG/BMP/TIFF) into HU.

    Files are ordered by natural file-name order (``2.png`` before ``10.png``) and taken as one series ordered
    inferior -> superior; with ``independent=True`` each image becomes its own single-slice series (a set of
    unrelated slices). Gray level ``g`` becomes ``level - width/2 + g * width/255`` HU (exact to ``width/255`` HU
    inside the window, saturated outside it).

    Colour images are converted to gray (with a ``converted_to_gray`` warning); unreadable files are skipped with
    a ``skipped_files`` warning. Errors (:class:`InputError`): no window, no readable images, images of different
    sizes in one series, 16-bit images.

    Ids: series uid ``img-<sha1(folder path)[:12]>`` (per image file with ``independent``), slice ids
    ``<series_uid>-<index:04d>``; ``spacing_mm`` is nan and ``positions_mm`` the slice index. ``source_files``
    names each slice's image file.
    """
    level, width = parse_window(window)
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{str(folder)!r} is not a folder", hint="pass a folder of PNG/JPG slices")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise InputError(f"no PNG/JPG images in {str(folder)!r}",
                         hint=f"expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    arrays: list[tuple[Path, np.ndarray]] = []
    skipped: list[str] = []
    converted: list[str] = []
    for p in files:
        arr, note = _load_8bit(p)
        if arr is None:
            skipped.append(str(p))
            log.warning("skipping %s (%s)", p, note)
            continue
        if note is not None:
            converted.append(str(p))
        arrays.append((p, arr))
    if not arrays:
        raise InputError(f"none of the {len(files)} images in {str(folder)!r} could be read",
                         hint="check that the files are valid PNG/JPG images")
    common: list[IngestWarning] = []
    if skipped:
        common.append(IngestWarning("skipped_files", f"{len(skipped)} unreadable image(s) skipped",
                                    tuple(skipped[:20])))
    if converted:
        msg = f"{len(converted)} colour image(s) converted to gray (luma); windowed CT slices should be gray"
        common.append(IngestWarning("converted_to_gray", msg, tuple(converted[:20])))
        log.warning(msg)
    meta = {"window": [level, width], "n_files": len(files)}

    def make(hu: np.ndarray, uid: str, source: Path, n_files: int, names: list[Path]) -> CTSeries:
        return CTSeries(
            hu=hu, spacing_mm=(float("nan"),) * 3, positions_mm=np.arange(hu.shape[0], dtype=np.float64),
            sop_instance_uids=[f"{uid}-{i:04d}" for i in range(hu.shape[0])], study_instance_uid=uid,
            series_instance_uid=uid, warnings=list(common), source=str(source), source_kind="images",
            meta={**meta, "n_files": n_files, "patient_id": uid}, source_files=[str(p) for p in names])

    if independent:
        return [make(window_to_hu(a, level, width)[None], _synthetic_uid(p), p, 1, [p]) for p, a in arrays]
    shapes = {a.shape for _, a in arrays}
    if len(shapes) > 1:
        first = arrays[0]
        odd = next(p for p, a in arrays if a.shape != first[1].shape)
        raise InputError(f"images in {str(folder)!r} have different sizes ({first[0].name}: "
                         f"{first[1].shape[1]}x{first[1].shape[0]}, {odd.name}: differs)",
                         hint="one series needs one image size; read them with independent=True instead")
    hu = window_to_hu(np.stack([a for _, a in arrays]), level, width)
    return [make(hu, _synthetic_uid(folder), folder, len(files), [p for p, _ in arrays])]
