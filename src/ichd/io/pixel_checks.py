"""Checks of a DICOM file's Pixel Data element against its image tags, made in the header pass without decoding.

:func:`check_pixel_data` reads the element that follows a header-only ``dcmread`` (the file position is then at
the Pixel Data tag) and answers what the standard requires, so a file that contradicts its own tags is skipped
with a clear reason instead of being read as wrong pixels:

* **Native (uncompressed) data** must hold exactly Rows × Columns × SamplesPerPixel × BitsAllocated/8 ×
  NumberOfFrames bytes, plus one padding byte when that number is odd (DICOM PS3.5 §8.1.1 and §7.1.1: values have
  even length). Fewer bytes, or at least one frame more than needed, means the tags do not describe the data
  (e.g. BitsAllocated 8 on 16-bit data): :class:`PixelDataProblem`. A few extra bytes (less than one frame) are
  out of standard but harmless trailing padding that pydicom ignores: reported as ``excess_bytes``.
* **Encapsulated JPEG-family data** (JPEG, JPEG-LS, JPEG 2000, HTJ2K): every frame's codestream ends with the
  marker ``FFD9`` (JPEG EOI / JPEG 2000 EOC, PS3.5 §A.4; the last fragment may carry one trailing ``00`` pad
  byte). Entropy-coded data cannot contain ``FFD9``, so a frame without it was cut short; some decoders (CharLS for
  JPEG-LS) decode such a stream without an error and return partly invented pixels.
* **A truncated file**: the file ends before the Pixel Data element does (a native value longer than the rest of
  the file, a fragment running past the end). Decoders may fill in the missing part. (A missing sequence
  delimiter after a whole last fragment is let through, as pydicom reads such files.)

Only the element header and the last bytes of each fragment are read (fragments are skipped with ``seek``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import IO

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
ITEM_TAG = (0xFFFE, 0xE000)
SEQUENCE_DELIMITER_TAG = (0xFFFE, 0xE0DD)
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Native transfer syntaxes (Deflated is left out: its stream position does not map to the file).
NATIVE_SYNTAXES = {"1.2.840.10008.1.2": ("<", True), "1.2.840.10008.1.2.1": ("<", False),
                   "1.2.840.10008.1.2.2": (">", False)}
#: Encapsulated syntaxes whose frames end with the marker FFD9: JPEG (4.50-4.70), JPEG-LS (4.80/81), JPEG 2000
#: (4.90-4.93), HTJ2K (4.201-4.203).
EOI_SYNTAX_PREFIXES = ("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.6", "1.2.840.10008.1.2.4.7",
                       "1.2.840.10008.1.2.4.8", "1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20")
EOI = b"\xff\xd9"
#: Explicit VRs with a 4-byte length (after 2 reserved bytes).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
#: Most fragments looked at per file (a multi-frame file has one or a few per frame).
MAX_FRAGMENTS = 100_000


@dataclass(frozen=True)
class PixelDataProblem:
    """Why the pixel data cannot be trusted: ``reason`` is a :data:`ichd.io.dicom.PROBLEM_REASONS` key."""

    reason: str
    detail: str


@dataclass(frozen=True)
class PixelDataCheck:
    """The outcome: ``problem`` (skip the file) or ``excess_bytes`` (trailing bytes beyond the image, ignored);
    ``value_offset``: where the value of an encapsulated (undefined-length) Pixel Data element starts in the file
    (its Basic Offset Table item), so the decoder can read the frames without parsing the data set again."""

    problem: PixelDataProblem | None = None
    excess_bytes: int = 0
    value_offset: int | None = None


OK = PixelDataCheck()


def _read_exact(fp: IO[bytes], n: int) -> bytes | None:
    data = fp.read(n)
    return data if len(data) == n else None


def _element_header(fp: IO[bytes], endian: str, implicit: bool) -> tuple[tuple[int, int], int] | None:
    """``(tag, value length)`` of the element at the file position (``None`` at the end of the file)."""
    head = _read_exact(fp, 8)
    if head is None:
        return None
    group, elem = struct.unpack(endian + "HH", head[:4])
    if implicit:
        return (group, elem), struct.unpack(endian + "L", head[4:])[0]
    vr = head[4:6]
    if vr in _LONG_VRS:
        rest = _read_exact(fp, 4)
        if rest is None:
            return None
        return (group, elem), struct.unpack(endian + "L", rest)[0]
    return (group, elem), struct.unpack(endian + "H", head[6:8])[0]


def expected_native_bytes(rows: int, columns: int, bits_allocated: int, samples: int = 1, frames: int = 1) -> int:
    """Bytes of native pixel data the tags describe (before the even-length pad)."""
    return (rows * columns * samples * frames * bits_allocated + 7) // 8


def native_length_check(length: int, rows: int, columns: int, bits_allocated: int, samples: int = 1,
                        frames: int = 1) -> PixelDataCheck:
    """Compare a native Pixel Data value length with what the image tags describe (see the module docstring)."""
    expected = expected_native_bytes(rows, columns, bits_allocated, samples, frames)
    allowed = expected + (expected % 2)  # one pad byte makes an odd length even
    if length == expected or length == allowed:
        return OK
    tags = (f"Rows {rows} x Columns {columns} x BitsAllocated {bits_allocated}/8"
            + (f" x SamplesPerPixel {samples}" if samples != 1 else "") + (f" x {frames} frames" if frames != 1 else ""))
    if length < expected:
        return PixelDataCheck(PixelDataProblem(
            "bad_tags", f"PixelData holds {length} bytes but {tags} need {expected}: the data is cut short or the "
                        "tags are wrong"))
    frame_bytes = max(1, expected // max(frames, 1))
    if length - expected >= frame_bytes:
        return PixelDataCheck(PixelDataProblem(
            "bad_tags", f"PixelData holds {length} bytes but {tags} need {expected}: the tags do not describe the "
                        "data (wrong BitsAllocated, matrix size or NumberOfFrames?)"))
    return PixelDataCheck(excess_bytes=length - allowed)


class _Truncated(Exception):
    """The file ends inside the pixel data."""


def _fragment_tails(fp: IO[bytes], end: int) -> list[bytes] | None:
    """The last 3 bytes of every fragment of encapsulated data (after the Basic Offset Table); ``None`` when the
    item structure is broken (the decoder then reports it); :class:`_Truncated` when the file (``end`` bytes long)
    ends inside the data."""
    tails: list[bytes] = []
    first = True
    for _ in range(MAX_FRAGMENTS):
        at = fp.tell()
        head = _read_exact(fp, 8)
        if head is None:
            if at == end:  # a whole last fragment but no sequence delimiter: lenient, as pydicom is
                return tails
            raise _Truncated("the file ends inside an item header of the pixel data")
        group, elem, length = struct.unpack("<HHL", head)
        if (group, elem) == SEQUENCE_DELIMITER_TAG:
            return tails
        if (group, elem) != ITEM_TAG or length == UNDEFINED_LENGTH:
            return None
        if fp.tell() + length > end:
            raise _Truncated(f"the file ends {end - fp.tell()} bytes into a {length}-byte fragment")
        if first:  # the Basic Offset Table
            first = False
            fp.seek(length, 1)
            continue
        if length < 3:
            tails.append(_read_exact(fp, length) or b"")
            continue
        fp.seek(length - 3, 1)
        tails.append(_read_exact(fp, 3) or b"")
    return None


def _ends_with_eoi(tail: bytes) -> bool:
    return tail.endswith((EOI, EOI + b"\x00"))


def _undecodable(detail: str) -> PixelDataCheck:
    """A ``decode_failed`` skip, worded as the decoder's own failures are."""
    return PixelDataCheck(PixelDataProblem("decode_failed", f"pixel data could not be decoded ({detail})"))


def _truncated(detail: str) -> PixelDataCheck:
    return _undecodable(f"the file is truncated: {detail}")


def encapsulated_end_check(fp: IO[bytes], frames: int, syntax_name: str, end: int) -> PixelDataCheck:
    """The file (``end`` bytes long) holds the whole encapsulated data (file position: the first item), and for
    JPEG-family data every frame ends with ``FFD9``: with one fragment per frame each is checked, else the last
    fragment (the end of the last frame). ``syntax_name`` empty: the structure only."""
    try:
        tails = _fragment_tails(fp, end)
    except _Truncated as e:
        return _truncated(str(e))
    if not tails or not syntax_name:
        return OK  # broken item structure or no fragment: the decoder gives the reason
    per_frame = tails if len(tails) == frames else tails[-1:]
    cut = [k for k, tail in enumerate(per_frame) if not _ends_with_eoi(tail)]
    if not cut:
        return OK
    which = (f"frame {cut[0] + 1}" if len(per_frame) == frames and frames > 1 else
             "the last frame" if frames > 1 else "the image")
    return _undecodable(f"the {syntax_name} data of {which} is cut short: no end-of-image marker FFD9 at its end")


def check_pixel_data(fp: IO[bytes], transfer_syntax: str, *, rows: int, columns: int, bits_allocated: int,
                     samples: int = 1, frames: int = 1) -> PixelDataCheck:
    """Check the Pixel Data element at the file position of ``fp`` (just after a ``stop_before_pixels`` read).

    Returns :data:`OK` when there is nothing to check (no Pixel Data element here, a transfer syntax without a
    rule, an undefined length in a native syntax: the decoder reports those).
    """
    native = NATIVE_SYNTAXES.get(transfer_syntax)
    endian, implicit = native if native is not None else ("<", False)
    if transfer_syntax == "1.2.840.10008.1.2.1.99":  # deflated: positions are in the inflated stream
        return OK
    found = _element_header(fp, endian, implicit)
    if found is None or found[0] != PIXEL_DATA_TAG:
        return OK
    length = found[1]
    start = fp.tell()
    end = fp.seek(0, 2)
    fp.seek(start)
    if length != UNDEFINED_LENGTH and start + length > end:
        return _truncated(f"it ends {end - start} bytes into {length} bytes of pixel data")
    if native is not None:
        if length == UNDEFINED_LENGTH:
            return OK
        return native_length_check(length, rows, columns, bits_allocated, samples, frames)
    if length == UNDEFINED_LENGTH:
        name = ""
        if transfer_syntax.startswith(EOI_SYNTAX_PREFIXES):
            from pydicom.uid import UID

            name = UID(transfer_syntax).name or transfer_syntax
        checked = encapsulated_end_check(fp, frames, name, end)
        return checked if checked.problem is not None else replace(checked, value_offset=start)
    return OK
