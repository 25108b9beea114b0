"""Uploaded files into a study folder, safely: zip archives are checked before anything is unpacked.

A zip is refused (:class:`UploadRejected`, HTTP 400 or 413, with a message naming the entry) when an entry has an
absolute path or a ``..`` component, is a symbolic link or another non-regular file, is encrypted, or appears
twice; when it has more entries than ``max_files``; when it would unpack to more than ``max_unpacked_bytes``; or
when an entry (or the archive) expands more than ``max_ratio`` times (a zip bomb). While unpacking, an entry that
yields more bytes than its header declares is refused too, and so is a damaged archive (an unreadable central
directory, an entry that cannot be inflated or fails its CRC), an entry whose path collides with another's (``a``
and ``a/b.dcm``) and a name too long for the file system. Nested archives are not unpacked (the CT reader ignores
``.zip`` members).

Multipart file names are reduced to a safe base name (no folders, no ``..``, no control characters); duplicates
get a numeric prefix. Every file written here is flushed to disk (``fsync``) before the study is acknowledged.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ichd.errors import describe_exception
from ichd.service.config import RATIO_MIN_BYTES
from ichd.service.errors import UploadRejected

CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+\-^@#()\[\]{} ]")
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"


@dataclass(frozen=True)
class ZipLimits:
    max_files: int
    max_unpacked_bytes: int
    max_ratio: float


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def fsync_file(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new names, renames) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_member_path(name: str) -> str:
    """The relative path a zip entry may be unpacked to, or :class:`UploadRejected` (400) saying why not."""
    shown = name if len(name) <= 200 else name[:200] + "..."
    if "\x00" in name:
        raise UploadRejected(f"zip entry {shown!r} has a NUL character in its name",
                             hint="the archive is damaged or crafted; create it again")
    path = name.replace("\\", "/")
    if path.startswith("/") or _DRIVE.match(path):
        raise UploadRejected(f"zip entry {shown!r} has an absolute path",
                             hint="zip the study folder with relative paths (e.g. `cd study && zip -r ../study.zip .`)")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UploadRejected(f"zip entry {shown!r} points outside the archive ('..' in its path)",
                             hint="zip the study folder with relative paths, without '..'")
    if not parts:
        raise UploadRejected(f"zip entry {shown!r} has an empty name", hint="create the archive again")
    return "/".join(parts)


def _entry_kind(info: zipfile.ZipInfo) -> str | None:
    """None for a regular file (or an entry without Unix mode bits), else what it is."""
    mode = (info.external_attr >> 16) & 0xFFFF
    fmt = stat.S_IFMT(mode)
    if fmt == 0 or fmt == stat.S_IFREG:
        return None
    if fmt == stat.S_IFLNK:
        return "a symbolic link"
    if fmt == stat.S_IFDIR:
        return "dir"
    return "not a regular file"


def check_zip(archive: zipfile.ZipFile, limits: ZipLimits, *, archive_bytes: int) -> list[tuple[zipfile.ZipInfo, str]]:
    """Validate every entry of ``archive`` (see the module docstring); return (entry, relative path) of the files."""
    files: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    total = 0
    for info in archive.infolist():
        kind = _entry_kind(info)
        rel = safe_member_path(info.filename)
        if kind == "dir" or info.is_dir():
            continue
        if kind is not None:
            raise UploadRejected(f"zip entry {info.filename!r} is {kind}; only regular files are accepted",
                                 hint="zip the files themselves (`zip -r` without --symlinks)")
        if rel.startswith("__MACOSX/"):
            continue
        if info.flag_bits & 0x1:
            raise UploadRejected(f"zip entry {info.filename!r} is encrypted", hint="upload an unencrypted zip")
        if rel.lower() in seen:
            raise UploadRejected(f"zip entry {info.filename!r} appears twice in the archive",
                                 hint="create the archive again with each file once")
        seen.add(rel.lower())
        files.append((info, rel))
        if len(files) > limits.max_files:
            raise UploadRejected(f"the zip holds more than {limits.max_files} files", status=413,
                                 hint="upload the study in smaller parts, or raise --max-files")
        total += info.file_size
        if total > limits.max_unpacked_bytes:
            raise UploadRejected(f"the zip would unpack to more than {_mb(limits.max_unpacked_bytes)}", status=413,
                                 hint="upload fewer files at once, or raise --max-unpacked-mb")
        if info.file_size > RATIO_MIN_BYTES and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise UploadRejected(
                f"zip entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f} times "
                f"(limit {limits.max_ratio:g}): refused as a possible zip bomb", status=413,
                hint="CT files compress a few times at most; upload the files themselves")
    if total > RATIO_MIN_BYTES and total > limits.max_ratio * max(archive_bytes, 1):
        raise UploadRejected(f"the zip expands {total / max(archive_bytes, 1):.0f} times (limit "
                             f"{limits.max_ratio:g}): refused as a possible zip bomb", status=413,
                             hint="CT files compress a few times at most; upload the files themselves")
    if not files:
        raise UploadRejected("the zip archive holds no files", hint="zip the folder that holds the DICOM or NIfTI files")
    return files


def extract_zip(zip_path: Path, dest: Path, limits: ZipLimits) -> tuple[int, int]:
    """Check (:func:`check_zip`) and unpack ``zip_path`` into ``dest``; returns (files, bytes) written."""
    try:
        archive = zipfile.ZipFile(zip_path)
    # what a damaged central directory raises (as in ichd.io.sources.zip_sources): BadZipFile, a name flagged
    # UTF-8 that is not (UnicodeDecodeError, a ValueError), an unknown "version needed" (NotImplementedError),
    # short records (EOFError, struct.error)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, struct.error) as e:
        raise UploadRejected(f"the upload is not a readable zip archive ({describe_exception(e)})",
                             hint="send a .zip of the study folder, or the files themselves as multipart/form-data"
                             ) from e
    n_files = n_bytes = 0
    root = dest.resolve()
    with archive:
        for info, rel in check_zip(archive, limits, archive_bytes=zip_path.stat().st_size):
            target = dest / rel
            if not target.resolve().is_relative_to(root):  # belt and braces: safe_member_path already refused
                raise UploadRejected(f"zip entry {info.filename!r} points outside the archive")
            written = 0
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > info.file_size:
                            raise UploadRejected(f"zip entry {info.filename!r} unpacks to more bytes than its "
                                                 f"header declares", status=413,
                                                 hint="the archive is damaged or crafted; create it again")
                        out.write(chunk)
                    fsync_file(out)
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:  # "a" and "a/b.dcm", or twice
                raise UploadRejected(f"zip entry {info.filename!r} collides with another entry's path",
                                     hint="create the archive again with each file once") from e
            except OSError as e:
                if e.errno != errno.ENAMETOOLONG:
                    raise
                raise UploadRejected(f"zip entry {info.filename[:200]!r} has a name too long to unpack",
                                     hint="zip the study with shorter file and folder names") from e
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError, zlib.error,
                    struct.error) as e:  # zlib.error: a damaged deflate stream
                raise UploadRejected(f"zip entry {info.filename!r} cannot be unpacked ({describe_exception(e)})",
                                     hint="check the archive is complete and uses deflate or no compression") from e
            n_files += 1
            n_bytes += written
    return n_files, n_bytes


def safe_file_name(name: str | None, index: int) -> str:
    """A safe base name for an uploaded file: folders, ``..``, control and odd characters removed."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_CHARS.sub("_", base).strip(" ")
    if base in ("", ".", "..") or set(base) <= {"."}:
        base = f"file-{index:05d}"
    if base.startswith("."):
        base = "_" + base[1:]
    return base[-150:]


def unique_names(names: Iterable[str]) -> list[str]:
    """``names`` with repeats (case-insensitive) prefixed by their position: ``00003-IM0001.dcm``."""
    out: list[str] = []
    seen: set[str] = set()
    for k, name in enumerate(names):
        candidate = name
        if candidate.lower() in seen:
            candidate = f"{k:05d}-{name}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def copy_stream(src: IO[bytes], target: Path, *, limit: int | None = None) -> int:
    """Copy ``src`` into a new file ``target`` (flushed to disk); returns the bytes written."""
    written = 0
    with open(target, "xb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if limit is not None and written > limit:
                raise UploadRejected(f"the upload is larger than {_mb(limit)}", status=413,
                                     hint="upload the study in smaller parts, or raise --max-upload-mb")
            out.write(chunk)
        fsync_file(out)
    return written


def copy_files(files: Iterable[str | os.PathLike[str]], dest: Path, *, max_files: int) -> tuple[int, int]:
    """Copy local files (e.g. received by a DICOM listener) into ``dest`` under safe unique names."""
    paths = [Path(f) for f in files]
    if not paths:
        raise UploadRejected("no files given", hint="submit the DICOM or NIfTI files of one study")
    if len(paths) > max_files:
        raise UploadRejected(f"{len(paths)} files; at most {max_files} per study", status=413,
                             hint="submit the study in smaller parts, or raise --max-files")
    dest.mkdir(parents=True, exist_ok=True)
    names = unique_names(safe_file_name(p.name, k) for k, p in enumerate(paths))
    n_bytes = 0
    for path, name in zip(paths, names):
        with open(path, "rb") as src:
            n_bytes += copy_stream(src, dest / name)
    return len(paths), n_bytes


def is_zip_name(name: str | None, head: bytes = b"") -> bool:
    """True for ``*.zip`` names or content starting with the zip signature."""
    return bool(name and name.lower().endswith(".zip")) or head.startswith((ZIP_MAGIC, EMPTY_ZIP_MAGIC))


def remove_tree(path: Path) -> None:
    """Remove a folder and everything in it (no error when it is already gone)."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # something refused: say so loudly rather than leave files behind silently
        shutil.rmtree(path)
