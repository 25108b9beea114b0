"""Uploads: zip entries with absolute or '..' paths, symlinks, zip bombs, too many files and too large bodies are
refused with 400/413 and a clear JSON message, and nothing of a refused upload stays on disk."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ichd.testing.factories import make_ct_series, to_bytes

ZIP = {"Content-Type": "application/zip"}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "sandbox" / "data"


@pytest.fixture
def client(client_for, data: Path):
    # workers=0: uploads are accepted and queued, nothing is predicted (no model needed)
    return client_for(data, workers=0, max_upload_bytes=400_000, max_files=20, max_unpacked_bytes=3_000_000)


def _zip(entries: list[tuple[Any, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, payload in entries:
            zf.writestr(name, payload)
    return buf.getvalue()


def _dicom() -> bytes:
    return to_bytes(make_ct_series(1, rows=16, columns=16)[0])


def _nothing_kept(client: Any, data: Path, h: Any) -> None:
    assert client.get("/v1/studies", headers=h.AUTH).json()["studies"] == []
    assert not any((data / "studies").iterdir()) and not any((data / "tmp").iterdir())
    assert not list(data.parent.rglob("evil*")) and not list(data.parent.parent.glob("evil*"))


def _refused(r: Any, status: int, words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "hint"} and words in body["error"] and body["hint"], body
    return body


@pytest.mark.parametrize(("name", "words"), [
    ("../evil.dcm", "outside the archive"),
    ("study/../../evil.dcm", "outside the archive"),
    ("..\\..\\evil.dcm", "outside the archive"),
    ("/tmp/evil.dcm", "absolute path"),
    ("C:\\evil.dcm", "absolute path"),
    ("C:/Windows/evil.dcm", "absolute path"),
])
def test_zip_entries_outside_the_archive_are_refused(client, data, h, name, words):
    body = _zip([("ok.dcm", _dicom()), (name, b"x")])
    _refused(client.post("/v1/studies", content=body, headers={**h.AUTH, **ZIP}), 400, words)
    _nothing_kept(client, data, h)


def test_zip_symlinks_are_refused(client, data, h):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.dcm", _dicom())
        link = zipfile.ZipInfo("passwd")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    _refused(client.post("/v1/studies", content=buf.getvalue(), headers={**h.AUTH, **ZIP}), 400, "symbolic link")
    _nothing_kept(client, data, h)


def test_zip_bombs_and_oversized_zips_are_refused(client, data, h):
    bomb = _zip([("a.dcm", _dicom()), ("zeros.dcm", bytes(2_500_000))])  # ~1000x, under the size limits
    assert len(bomb) < 400_000
    _refused(client.post("/v1/studies", content=bomb, headers={**h.AUTH, **ZIP}), 413, "zip bomb")
    # total uncompressed size over --max-unpacked-mb, each entry compressing only ~1x
    big = _zip([(f"r{k}.dcm", os.urandom(120_000)) for k in range(3)] + [("z.dcm", bytes(2_950_000))])
    assert len(big) < 400_000
    _refused(client.post("/v1/studies", content=big, headers={**h.AUTH, **ZIP}), 413, "would unpack to more than")
    many = _zip([(f"f{k:03d}.dcm", b"x") for k in range(21)])
    _refused(client.post("/v1/studies", content=many, headers={**h.AUTH, **ZIP}), 413, "more than 20 files")
    _nothing_kept(client, data, h)


def test_other_bad_zips_are_refused(client, data, h):
    _refused(client.post("/v1/studies", content=b"PK\x03\x04 truncated", headers={**h.AUTH, **ZIP}), 400,
             "not a readable zip")
    _refused(client.post("/v1/studies", content=_zip([("a.dcm", b"1"), ("A.dcm", b"2")]),
                         headers={**h.AUTH, **ZIP}), 400, "appears twice")
    _refused(client.post("/v1/studies", content=_zip([("__MACOSX/._a", b"1")]), headers={**h.AUTH, **ZIP}),
             400, "holds no files")
    _refused(client.post("/v1/studies", content=b"", headers={**h.AUTH, **ZIP}), 400, "empty")
    _refused(client.post("/v1/studies", content=b"{}", headers={**h.AUTH, "Content-Type": "application/json"}),
             415, "unsupported content type")
    _nothing_kept(client, data, h)


def _patched(data: bytes, marker: bytes, offset: int, value: bytes) -> bytes:
    """``data`` with ``value`` written ``offset`` bytes after the first ``marker``."""
    at = data.index(marker) + offset
    return data[:at] + value + data[at + len(value):]


def test_damaged_zips_are_refused_not_internal_errors(client, data, h):
    """Archives that once answered 500: a central directory zipfile cannot read, a damaged deflate stream, an entry
    that is a file and a folder at once, a name longer than the file system allows."""
    good = _zip([("study/\u00e9.dcm", _dicom())], zipfile.ZIP_STORED)  # a UTF-8 name (flag bit 11)
    cd = good.index(b"PK\x01\x02")
    not_utf8 = good[:cd] + good[cd:].replace("\u00e9".encode(), b"\xf9\xf9")  # flagged UTF-8, is not
    too_new = _patched(_zip([("a.dcm", _dicom())]), b"PK\x01\x02", 6, (255).to_bytes(2, "little"))
    deflated = _zip([("a.dcm", bytes(range(256)) * 200)])
    inflate_error = _patched(deflated, b"a.dcm", 25, bytes(20))  # into the deflate stream after the local header
    for body, status, words in ((not_utf8, 400, "not a readable zip archive (UnicodeDecodeError"),
                                (too_new, 400, "not a readable zip archive (NotImplementedError"),
                                (inflate_error, 400, "cannot be unpacked"),
                                (_zip([("a", b"1"), ("a/b.dcm", b"2")]), 400, "collides"),
                                (_zip([("x" * 300 + ".dcm", b"1")]), 400, "name too long")):
        _refused(client.post("/v1/studies", content=body, headers={**h.AUTH, **ZIP}), status, words)
    _nothing_kept(client, data, h)


def test_upload_size_limit(client, data, h):
    too_big = _zip([("r.dcm", os.urandom(450_000))], zipfile.ZIP_STORED)
    _refused(client.post("/v1/studies", content=too_big, headers={**h.AUTH, **ZIP}), 413, "the limit is")
    # streamed without Content-Length (chunked): refused while it arrives
    chunks = iter([too_big[i:i + 65536] for i in range(0, len(too_big), 65536)])
    _refused(client.post("/v1/studies", content=chunks, headers={**h.AUTH, **ZIP}), 413, "larger than")
    files = [("files", ("a.dcm", os.urandom(250_000))), ("files", ("b.dcm", os.urandom(250_000)))]
    _refused(client.post("/v1/studies", files=files, headers=h.AUTH), 413, "the limit is")
    # multipart streamed without Content-Length
    part = os.urandom(450_000)
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.dcm\"\r\n"
            b"Content-Type: application/dicom\r\n\r\n" + part + b"\r\n--XyZ--\r\n")
    chunks = iter([body[i:i + 65536] for i in range(0, len(body), 65536)])
    _refused(client.post("/v1/studies", content=chunks,
                         headers={**h.AUTH, "Content-Type": "multipart/form-data; boundary=XyZ"}), 413, "larger than")
    many = [("files", (f"f{k}.dcm", b"x")) for k in range(21)]
    _refused(client.post("/v1/studies", files=many, headers=h.AUTH), 413, "more than 20 files")
    _nothing_kept(client, data, h)


def test_multipart_names_are_made_safe(client, data, h):
    dcm = _dicom()
    files = [("files", ("../../evil.dcm", dcm)), ("files", ("/etc/evil.dcm", dcm)), ("files", ("..", dcm)),
             ("files", (".hidden", dcm)), ("files", ("dir\\IM\x01 1.dcm", dcm))]
    r = client.post("/v1/studies", files=files, headers=h.AUTH)
    assert r.status_code == 202, r.text
    sid = r.json()["study_id"]
    stored = sorted(p.name for p in (data / "studies" / sid / "input").iterdir())
    # (the client percent-encodes the control character; the % becomes _ as well)
    assert stored == ["00001-evil.dcm", "IM_01 1.dcm", "_hidden", "evil.dcm", "file-00002"]
    assert all(data / "studies" / sid / "input" in p.parents for p in data.parent.parent.rglob("evil*"))
    study = client.get(f"/v1/studies/{sid}", headers=h.AUTH).json()
    assert study["status"] == "queued" and study["n_files"] == 5 and study["n_bytes"] == 5 * len(dcm)
    r = client.get(f"/v1/studies/{sid}/result", headers=h.AUTH)
    assert r.status_code == 409 and "not ready" in r.json()["error"] and "poll" in r.json()["hint"]
    _refused(client.post("/v1/studies", files=[("files", ("a.zip", _zip([("a.dcm", dcm)]))), ("files", ("b", dcm))],
                         headers=h.AUTH), 400, "zip archive(s) among")
    body = b'--B\r\nContent-Disposition: form-data; name="note"\r\n\r\nno files\r\n--B--\r\n'
    _refused(client.post("/v1/studies", content=body, headers={**h.AUTH, "Content-Type": "multipart/form-data; boundary=B"}),
             400, "holds no files")
    _refused(client.post("/v1/studies", data={"note": "no files"}, headers=h.AUTH), 415, "unsupported content type")


def test_unit_safe_member_paths():
    from ichd.service.errors import UploadRejected
    from ichd.service.uploads import safe_file_name, safe_member_path

    assert safe_member_path("./a/./b/IM1.dcm") == "a/b/IM1.dcm"
    assert safe_member_path("a\\b.dcm") == "a/b.dcm"
    for bad in ("../x", "a/../../x", "/x", "\\\\server\\share\\x", "D:x", "a\x00b"):
        with pytest.raises(UploadRejected):
            safe_member_path(bad)
    assert safe_file_name("a/b/../c.dcm", 0) == "c.dcm" and safe_file_name("", 3) == "file-00003"
