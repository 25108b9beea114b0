"""Where DICOM bytes come from: files in a folder (recursive), members of a zip archive, or one file.

:class:`DicomSource` names one file and opens it for pydicom; :func:`folder_sources` and :func:`zip_sources`
list candidates, leaving out names that are never DICOM (hidden files, DICOMDIR, ``.txt``/``.csv``/``.png``/...),
which callers may report but never warn about.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ichd.errors import InputError, describe_exception

#: File names and suffixes that are never DICOM; folders often hold them next to the images. Ignored silently.
IGNORED_NAMES = frozenset({"DICOMDIR", "LOCKFILE", "VERSION", "Thumbs.db"})
IGNORED_SUFFIXES = frozenset({
    ".txt", ".csv", ".tsv", ".json", ".md", ".rst", ".xml", ".html", ".htm", ".pdf", ".png", ".jpg", ".jpeg",
    ".bmp", ".gif", ".tif", ".tiff", ".nii", ".gz", ".zip", ".py", ".log", ".yaml", ".yml", ".npy", ".npz",
    ".sha256", ".md5", ".ini", ".exe", ".dll", ".xls", ".xlsx", ".doc", ".docx",
})


@dataclass(frozen=True)
class DicomSource:
    """One DICOM file: a path, or a member of a zip archive (``path`` is then the archive)."""

    path: str
    member: str | None = None

    @property
    def name(self) -> str:
        """How messages name this file."""
        return self.path if self.member is None else f"{self.path}:{self.member}"

    def open(self) -> str | IO[bytes]:
        """What pydicom can read: the path itself, or the zip member's bytes in memory."""
        if self.member is None:
            return self.path
        try:
            return io.BytesIO(_zip_handle(self.path).read(self.member))
        except RuntimeError as e:  # zipfile's "File ... is encrypted, password required for extraction"
            raise OSError(f"zip member is encrypted ({e})") from e


_ZIP_HANDLES: dict[tuple[int, str], zipfile.ZipFile] = {}
_ZIP_LOCK = threading.Lock()


def _zip_handle(path: str) -> zipfile.ZipFile:
    """One open ZipFile per archive and process.

    Keyed by process id: a forked decoding worker must not share the parent's file offset. Reads from several
    threads of one process are safe in CPython's zipfile.
    """
    key = (os.getpid(), path)
    with _ZIP_LOCK:
        handle = _ZIP_HANDLES.get(key)
        if handle is None:
            handle = _ZIP_HANDLES[key] = zipfile.ZipFile(path)
        return handle


def close_zip_handles() -> None:
    """Close the archives this process opened through :class:`DicomSource` (called at the end of each read)."""
    pid = os.getpid()
    with _ZIP_LOCK:
        for key in [k for k in _ZIP_HANDLES if k[0] == pid]:
            _ZIP_HANDLES.pop(key).close()


def is_ignored_name(name: str) -> bool:
    """True for files never treated as DICOM: hidden files, DICOMDIR, and known non-DICOM suffixes."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if not base or base.startswith(".") or base in IGNORED_NAMES:
        return True
    return Path(base).suffix.lower() in IGNORED_SUFFIXES


def folder_sources(folder: Path) -> tuple[list[DicomSource], list[str]]:
    """All candidate DICOM files under ``folder`` (recursive, sorted) and the names of ignored files."""
    sources: list[DicomSource] = []
    ignored: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(files):
            path = os.path.join(root, name)
            if is_ignored_name(name):
                ignored.append(path)
            else:
                sources.append(DicomSource(path))
    return sources, ignored


#: Zip bomb guard: the most a zip's members may claim uncompressed in all, and the highest compression ratio of
#: a member larger than :data:`ZIP_RATIO_MIN_SIZE` (DICOM compresses ~2-10x; a bomb ~1000x). zipfile never
#: inflates a member past the size its header claims, so checking the claims is enough.
ZIP_MAX_TOTAL = 32 << 30
ZIP_MAX_RATIO = 100
ZIP_RATIO_MIN_SIZE = 16 << 20


def check_zip_sizes(archive: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Raise :class:`InputError` when the members of ``archive`` look like a zip bomb (see :data:`ZIP_MAX_TOTAL`)."""
    total = sum(i.file_size for i in infos)
    if total > ZIP_MAX_TOTAL:
        raise InputError(f"{archive}: the zip archive claims {total / 2**30:.1f} GiB uncompressed (limit "
                         f"{ZIP_MAX_TOTAL / 2**30:.0f} GiB); refusing to read it (zip bomb?)",
                         hint="unpack it yourself and pass the folder")
    for i in infos:
        if i.file_size > ZIP_RATIO_MIN_SIZE and i.file_size > ZIP_MAX_RATIO * max(i.compress_size, 1):
            raise InputError(f"{archive}: member {i.filename} inflates {i.file_size / max(i.compress_size, 1):.0f}x "
                             f"to {i.file_size / 2**20:.0f} MiB (limit {ZIP_MAX_RATIO}x); refusing to read it "
                             "(zip bomb?)", hint="unpack it yourself and pass the folder")


def zip_sources(archive: Path) -> tuple[list[DicomSource], list[str]]:
    """All candidate DICOM members of a zip archive and the names of ignored members.

    Raises:
        InputError: not a zip, or its size claims look like a zip bomb (:func:`check_zip_sizes`).
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    # what a damaged central directory raises (found by fuzz/fuzz_readers.py): BadZipFile, a name that is not
    # UTF-8 (UnicodeDecodeError, a ValueError), an unknown "version needed" (NotImplementedError), short records
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, struct.error) as e:
        raise InputError(f"{archive}: not a readable zip archive ({describe_exception(e)})",
                         hint="check the file is complete, or unpack it and pass the folder") from e
    check_zip_sizes(archive, infos)
    sources: list[DicomSource] = []
    ignored: list[str] = []
    for info in sorted(infos, key=lambda i: i.filename):
        if not info.filename or info.is_dir() or info.filename.startswith("__MACOSX/"):
            continue
        if is_ignored_name(info.filename):
            ignored.append(f"{archive}:{info.filename}")
        else:
            sources.append(DicomSource(str(archive), info.filename))
    return sources, ignored
