"""One entry point for every CT input: :func:`read_ct` looks at the path and picks the reader.

==========================================  ============================================================
path                                        reader
==========================================  ============================================================
``*.zip``                                   DICOM members of the archive (:mod:`ichd.io.dicom`)
``*.nii`` / ``*.nii.gz``                    :func:`ichd.io.nifti.read_nifti`
CT-ICH root (``brain/<ppp>/<sss>.jpg``)     :func:`ichd.io.images.read_ctich` (every patient)
CT-ICH patient folder (``ROOT/brain/049``)  :func:`ichd.io.images.read_ctich_patient`
any other file                              one DICOM file (single- or multi-frame)
folder with DICOM files (recursive)         :func:`ichd.io.dicom.read_dicom`, one series per Study/Series UID
folder with only NIfTI files                each NIfTI file
folder with only PNG/JPG slices             :func:`ichd.io.images.read_image_folder` (needs ``window``)
==========================================  ============================================================

**Strict vs lenient.** Lenient (default) skips broken files (not DICOM, truncated, missing or inconsistent tags,
undecodable pixels, odd matrix size) and says so in a ``skipped_files`` warning on the series; strict raises
:class:`~ichd.errors.InputError` on the first one. In both modes objects that are not axial CT slices
(localizers, dose reports, secondary captures, other modalities, reports, reformats) are skipped with a
``skipped_non_image`` warning, and geometry findings (tilt, gaps, duplicates) are warnings, never errors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ichd.errors import InputError
from ichd.io import dicom
from ichd.io import sources as sources_mod
from ichd.io.images import (
    IMAGE_SUFFIXES,
    is_ctich_root,
    parse_window,
    read_ctich,
    read_ctich_patient,
    read_image_folder,
)
from ichd.types import CTSeries
from ichd.utils.logging import get_logger

log = get_logger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """True for ``.nii`` and ``.nii.gz`` file names."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_ct(path: str | os.PathLike[str], *, window: Sequence[float] | str | None = None, strict: bool = False,
            workers: int | None = None, independent: bool = False,
            allow_secondary_capture: bool = False) -> list[CTSeries]:
    """Read CT from ``path`` (see the module table) into one :class:`CTSeries` per series found.

    Args:
        path: file, folder or archive.
        window: ``(level, width)`` or ``"L,W"`` of 8-bit PNG/JPG slices (required for image folders only).
        strict: raise on the first broken file instead of skipping it (see the module docstring). A single DICOM
            file is always read strictly: skipping it would leave nothing to report.
        workers: DICOM decoding threads (default ``min(2, cpu_count)``).
        independent: the images are unrelated slices, each read as its own one-slice series (DICOM and images).
        allow_secondary_capture: read DICOM Secondary Capture images (Modality CT/OT, e.g. slices exported in HU
            by MATLAB) as CT; by default they are skipped like other non-CT objects.

    Returns:
        The series; their ``source_files`` (one per slice; ``None`` for NIfTI) are relative to ``path``.

    Raises:
        InputError: the path is missing, empty, holds no CT, or (strict) a file is broken.
        DependencyError: a compressed transfer syntax has no decoder installed (the message names the package).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{str(p)!r} does not exist", hint="check the path")
    if p.is_file():
        series = _read_file(p, window=window, strict=strict, workers=workers, independent=independent,
                            allow_secondary_capture=allow_secondary_capture)
    elif not p.is_dir():
        raise InputError(f"{str(p)!r} is neither a file nor a folder", hint="pass a DICOM/NIfTI file, folder or zip")
    elif is_ctich_root(p):
        series = read_ctich(p)
    elif p.parent.name == "brain" and p.name.isdigit() and is_ctich_root(p.parent.parent):
        series = [read_ctich_patient(p.parent.parent, int(p.name))]
    else:
        series = _read_folder(p, window=window, strict=strict, workers=workers, independent=independent,
                              allow_secondary_capture=allow_secondary_capture)
    for s in series:
        if s.source_files is not None:
            s.source_files = [relative_source(name, p) for name in s.source_files]
    return series


def relative_source(name: str, given: Path) -> str:
    """``name`` (a file the readers found, or ``archive.zip:member``) relative to the input path ``given``, with
    ``/`` separators: the path below a folder, the member of a zip, the file name of a single file."""
    if given.is_file():
        prefix = f"{given}:"
        if name.startswith(prefix):
            return name[len(prefix):]
        return Path(name).name
    try:
        rel = os.path.relpath(name, given)
    except ValueError:  # another drive (Windows)
        return Path(name).name
    return Path(rel).as_posix()


def _read_file(p: Path, *, window: Sequence[float] | str | None, strict: bool, workers: int | None,
               independent: bool, allow_secondary_capture: bool) -> list[CTSeries]:
    if is_nifti(p):
        from ichd.io.nifti import read_nifti

        return [read_nifti(p)]
    suffix = p.suffix.lower()
    if suffix == ".zip":
        sources, ignored = sources_mod.zip_sources(p)
        if not sources:
            raise InputError(f"{p}: the zip archive holds no DICOM candidates ({len(ignored)} other file(s))",
                             hint="zip the DICOM files themselves, or unpack the archive and pass the folder")
        return _read_dicom(sources, str(p), strict=strict, workers=workers, independent=independent,
                           allow_secondary_capture=allow_secondary_capture)
    if suffix in IMAGE_SUFFIXES:
        raise InputError(f"{p} is a single {suffix} image",
                         hint="pass the folder of windowed slices with --window LEVEL,WIDTH")
    if window is not None:
        log.info("window %s ignored for DICOM input %s", window, p)
    return _read_dicom([sources_mod.DicomSource(str(p))], str(p), strict=True, workers=workers,
                       independent=independent, allow_secondary_capture=allow_secondary_capture)


def _read_folder(p: Path, *, window: Sequence[float] | str | None, strict: bool, workers: int | None,
                 independent: bool, allow_secondary_capture: bool) -> list[CTSeries]:
    sources, ignored = sources_mod.folder_sources(p)
    if sources:
        if ignored:
            log.info("%s: ignored %d non-DICOM file(s) by name (e.g. %s)", p, len(ignored), ignored[0])
        return _read_dicom(sources, str(p), strict=strict, workers=workers, independent=independent,
                           allow_secondary_capture=allow_secondary_capture)
    niftis = [f for f in ignored if is_nifti(f)]
    if niftis:
        from ichd.io.nifti import read_nifti

        return [read_nifti(f) for f in niftis]
    images = [f for f in ignored if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    if images:
        folders = sorted({str(Path(f).parent) for f in images})
        parse_window(window)  # raises the "needs --window LEVEL,WIDTH" InputError before any work
        out: list[CTSeries] = []
        for folder in folders:
            out.extend(read_image_folder(folder, window, independent=independent))
        return out
    if not ignored:
        raise InputError(f"folder {str(p)!r} is empty (no files, searched recursively)",
                         hint="pass the folder that holds the DICOM files, a .zip, a NIfTI file or images")
    raise InputError(f"folder {str(p)!r} holds no DICOM, NIfTI or image files ({len(ignored)} other file(s), "
                     f"e.g. {Path(ignored[0]).name})", hint="pass the folder that holds the CT images")


def _read_dicom(sources: Sequence[sources_mod.DicomSource], where: str, *, strict: bool, workers: int | None,
                independent: bool, allow_secondary_capture: bool) -> list[CTSeries]:
    result = dicom.read_dicom(sources, strict=strict, workers=workers, independent=independent,
                              allow_secondary_capture=allow_secondary_capture)
    if not result.series:
        raise InputError(_nothing_found(where, len(sources), result.skipped), hint=_nothing_hint(result.skipped))
    studies = {s.study_instance_uid for s in result.series}
    for skip in result.skipped:
        log.warning("skipped %s", skip.message())
    for series in result.series:
        mine = [s for s in result.skipped
                if s.study_uid is None or s.study_uid == series.study_instance_uid or s.study_uid not in studies]
        series.warnings.extend(dicom.skipped_warnings(mine))
    return result.series


def _nothing_found(where: str, n_files: int, skipped: Sequence[dicom.Skipped]) -> str:
    from collections import Counter

    reasons = Counter(s.reason for s in skipped)
    table = {**dicom.PROBLEM_REASONS, **dicom.NON_IMAGE_REASONS}
    desc = ", ".join(f"{n} {table[r].split(' (')[0]}" for r, n in reasons.most_common())
    problems = [s for s in skipped if s.is_problem]
    first = f"; first: {problems[0].message()}" if problems else ""
    return f"no axial CT series in {where}: {n_files} file(s) read, skipped {desc or 'none'}{first}"


def _nothing_hint(skipped: Sequence[dicom.Skipped]) -> str:
    reasons = {s.reason for s in skipped}
    if "secondary_capture" in reasons:
        return "these are Secondary Captures: pass --allow-secondary-capture if they hold CT in HU"
    if reasons <= {"not_dicom", "unreadable"}:
        return "check that the path holds DICOM files (or pass PNG/JPG slices with --window)"
    return "pass a folder, zip or file with axial CT image slices"
