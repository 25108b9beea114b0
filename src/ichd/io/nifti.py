"""Read a NIfTI CT volume (``.nii`` / ``.nii.gz``, via nibabel) into a :class:`~ichd.types.CTSeries`.

The volume is reoriented to the DICOM display convention so every reader hands the same layout downstream:
``hu[z, y, x]`` with z running inferior -> superior, y anterior -> posterior (top of the image is anterior) and
x patient right -> left (the patient's right on the image's left), i.e. voxel axes L, P, S.
Values are taken as HU after the NIfTI scaling (``scl_slope`` / ``scl_inter``); values below -1500 HU (outside
the field of view) become air (-1024). A volume without air (1st percentile above -500) gets a ``not_hu`` warning.
NIfTI has no UIDs: study/series UIDs are ``2.25.`` UIDs derived from the file's SHA-1, slice ids are
``<series_uid>-<index:04d>``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from ichd.constants import AIR_HU
from ichd.errors import InputError, describe_exception
from ichd.io.geometry import TILT_MIN_DEG
from ichd.io.hu import OUT_OF_FOV_HU
from ichd.types import CTSeries, IngestWarning
from ichd.utils.files import atomic_write_bytes

#: Voxel axis codes of the output (before the (x, y, z) -> (z, y, x) transpose).
TARGET_AXCODES: tuple[str, str, str] = ("L", "P", "S")


def _digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _uid_from(digest: str, kind: str) -> str:
    """A deterministic ``2.25.<128-bit integer>`` UID (the UUID-derived UID form) from a file digest."""
    return f"2.25.{int(hashlib.sha256(f'ichd-nifti-{kind}-{digest}'.encode()).hexdigest()[:32], 16)}"


def _nifti_errors() -> tuple[type[BaseException], ...]:
    from nibabel.filebasedimages import ImageFileError
    from nibabel.orientations import OrientationError
    from nibabel.spatialimages import HeaderDataError

    # what nibabel raises on broken files (found by fuzz/fuzz_readers.py): bad header fields (HeaderDataError,
    # ValueError), cut or corrupt data (EOFError, OSError, zlib.error), degenerate affines (ValueError), a header
    # whose dimensions disagree with the data (OrientationError)
    return (ImageFileError, HeaderDataError, OrientationError, OSError, EOFError, ValueError, zlib.error,
            IndexError)


def read_nifti(path: str | os.PathLike[str]) -> CTSeries:
    """Read one NIfTI file as a HU :class:`CTSeries` (see the module docstring for the conventions)."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    NIFTI_ERRORS = _nifti_errors()

    p = Path(path)
    try:
        img = nib.load(str(p))
    except NIFTI_ERRORS as e:
        raise InputError(f"{p}: not a readable NIfTI file ({describe_exception(e)})",
                         hint="check the file is complete") from e
    shape = img.shape
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 1):
        raise InputError(f"{p}: NIfTI volume has shape {shape}, expected 3-D (x, y, z)",
                         hint="pass a single 3-D CT volume")
    if min(shape[:3]) < 1:
        raise InputError(f"{p}: NIfTI volume has shape {shape}: an empty dimension holds no voxels",
                         hint="check the header's dim field; pass a 3-D CT volume")
    try:
        if len(shape) == 4:
            img = img.slicer[..., 0]
        original_axcodes = "".join(str(c) for c in nib.orientations.aff2axcodes(img.affine))
        transform = ornt_transform(io_orientation(img.affine), axcodes2ornt(TARGET_AXCODES))
        img = img.as_reoriented(transform)  # loads the voxels unless the transform is the identity
        data = np.asarray(img.dataobj, dtype=np.float32)
    except NIFTI_ERRORS as e:  # a degenerate affine (no axis maps to z), a cut voxel block, a corrupt .gz
        raise InputError(f"{p}: NIfTI voxel data or affine could not be read ({describe_exception(e)})",
                         hint="check the file is complete and its affine (qform/sform) is valid") from e
    hu = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    if not np.isfinite(hu).all():
        raise InputError(f"{p}: NIfTI volume holds NaN or infinite values", hint="pass a CT volume in HU")
    hu[hu < OUT_OF_FOV_HU] = AIR_HU

    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    affine = np.asarray(img.affine, dtype=np.float64)
    col_dir, row_dir = affine[:3, 0], affine[:3, 1]
    normal = np.cross(col_dir, row_dir)
    normal /= np.linalg.norm(normal)
    if normal[2] < 0:
        normal = -normal
    origins = affine[:3, :3] @ np.stack([np.zeros(hu.shape[0]), np.zeros(hu.shape[0]), np.arange(hu.shape[0])]) \
        + affine[:3, 3:4]
    positions = normal @ origins
    tilt = float(np.degrees(np.arccos(np.clip(abs(normal[2]), 0.0, 1.0))))

    warnings: list[IngestWarning] = []
    if tilt >= TILT_MIN_DEG:
        warnings.append(IngestWarning("gantry_tilt", f"oblique volume: slice normal {tilt:.1f}° from the z axis "
                                                     "(from the NIfTI affine); not resampled"))
    sample = hu[:, ::4, ::4]
    if sample.size and float(np.percentile(sample, 1)) > -500:
        warnings.append(IngestWarning("not_hu", "values do not look like HU (no air near -1000 HU): check the "
                                                "file's scl_slope/scl_inter"))
    digest = _digest(p)
    study, series = _uid_from(digest, "study"), _uid_from(digest, "series")
    return CTSeries(
        hu=hu,
        spacing_mm=(zooms[2], zooms[1], zooms[0]),
        positions_mm=positions,
        sop_instance_uids=[f"{series}-{k:04d}" for k in range(hu.shape[0])],
        study_instance_uid=study,
        series_instance_uid=series,
        tilt_deg=tilt if tilt >= TILT_MIN_DEG else 0.0,
        warnings=warnings,
        source=str(p),
        source_kind="nifti",
        meta={"patient_id": study, "ordering": "affine", "original_axcodes": original_axcodes},
    )


def write_nifti(series: CTSeries, path: str | os.PathLike[str]) -> Path:
    """Write ``series`` as a NIfTI-1 volume in HU (int16 when every value is an integer in range, else float32).

    Voxel axes are (x, y, z) = (columns, rows, slices) with axis codes :data:`TARGET_AXCODES` (L, P, S: the
    patient axes of a standard axial DICOM series, inferior to superior), so :func:`read_nifti` reads the same
    ``hu`` and spacing back. The affine is diagonal: a tilted series is written as stacked (as ichd holds it),
    and unknown spacing (``nan``) becomes 1 mm. Atomic (a temporary file renamed into place).
    """
    import nibabel as nib

    p = Path(path)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        raise InputError(f"{p}: a NIfTI file name must end in .nii or .nii.gz", hint="e.g. scan.nii.gz")
    sz, sy, sx = (s if np.isfinite(s) and s > 0 else 1.0 for s in series.spacing_mm)
    data = np.transpose(series.hu, (2, 1, 0))  # (z, y, x) -> (x, y, z)
    if np.array_equal(data, np.round(data)) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    z0 = float(series.positions_mm[0]) if len(series.positions_mm) and np.isfinite(series.positions_mm[0]) else 0.0
    # L, P, S axes in RAS+ world coordinates: x towards patient left (-R), y towards posterior (-A), z superior
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[2, 3] = z0
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    raw = image.to_bytes()
    return atomic_write_bytes(p, gzip.compress(raw, compresslevel=6, mtime=0) if p.name.endswith(".gz") else raw)
