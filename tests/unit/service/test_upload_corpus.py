"""The service's upload (``POST /v1/studies``) on every case of the bad-input corpus (scripts/make_corpus.py,
tests/corpus/) but the ingest-only ones, against one running service (tiny test model, one worker).

How each case's input is uploaded, as a user's client would send it:

* a ``.zip`` file: the zip as the request body (``Content-Type: application/zip``);
* another single file: one multipart file part named after the file;
* a folder: one multipart part per file under it, named by its path relative to the folder (raw bytes, as curl
  sends them: names that are not UTF-8 go as they are; the service keeps base names only). Symbolic links are
  followed where they point to a regular file (``curl -F files=@LINK`` sends the target's bytes) and skipped
  otherwise (dangling links, links to folders, loops): a multipart body carries file contents, never links.

Checks per case, with a bound of :data:`JOB_TIMEOUT_S` per job:

* ``error`` cases: the upload is refused with a 4xx and a JSON ``{"error", "hint"}`` body, or its job ends
  ``failed`` with a one-line reason. For a folder that reason is exactly the line ``ichd predict`` prints for the
  same input (``ichd: error: <reason>``) once the CLI's local path of the input is taken out, as the service takes
  out its own (:meth:`StudyService._public_reason`). A single file is uploaded into a folder of its own, and the
  service reads that folder: its reason holds the CLI's message for the file (without the CLI's hint), e.g. "no
  axial CT series in the upload: 1 file(s) read, skipped 1 unreadable; first: <the CLI's message> — <hint>". A
  refusal at upload carries the CLI message's key phrase (:data:`REFUSAL_PHRASES`).
* ``warning`` and ``ok`` cases: the job ends ``done``; for ``warning`` cases the result (``prediction.json``)
  holds at least one warning.
* never a 500, never a traceback in a response, a reason or the service log; nothing of a failed, refused or
  deleted upload left in the data folder outside its own study folder (and, once deleted, nothing at all); nothing
  written into the corpus.

Where the service legitimately differs from the CLI (each documented in tests/corpus/README.md):

* Input options cannot be given with an upload: a case that needs them (``case.json`` ``args``, e.g. ``--window
  40,80`` for PNG slices) is uploaded without them, so its job fails with the "needs --window" message, compared
  with ``ichd predict`` run without them too (:data:`NEEDS_OPTIONS`).
* The service unpacks a zip onto disk and checks it first (:mod:`ichd.service.uploads`), where the CLI reads
  members in memory: a zip with a ``..`` or absolute member name, an encrypted member, an empty member name or a
  damaged member is refused at upload (400, :data:`SERVICE_REFUSES`) although the CLI reads the rest of it.
* A symbolic link is not part of a multipart upload: ``symlinks_outside`` uploads the good slices and the target of
  the one link to a file (a non-DICOM file named ``.dcm``: the warning), not the links themselves.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ichd.cli.main import run
from ichd.utils.logging import LOGGER_NAME

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "scripts" / "make_corpus.py")
make_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_corpus)  # type: ignore[union-attr]

CASES = [c for c in make_corpus.CASES if c not in make_corpus.INGEST_ONLY]
#: Between an error's message and its hint (``IchdError.__str__``).
HINT_SEP = " — "
#: Longest wait for one job to end (queued -> done or failed).
JOB_TIMEOUT_S = 60.0
ABS_ESCAPE = Path("/tmp/ichd-corpus-abs")

#: Cases the CLI reads (``ok``/``warning``) that the service refuses at upload, and a phrase of the refusal:
#: the service unpacks zips onto disk and refuses entries it cannot unpack safely (see the module docstring).
SERVICE_REFUSES: dict[str, str] = {
    "zip_path_traversal": "points outside the archive",
    "fuzz_zip_encrypted_member": "is encrypted",
    "fuzz_zip_empty_member_name": "has an empty name",
    "fuzz_zip_bad_crc": "cannot be unpacked",
}
#: ``error`` cases refused at upload, and the phrase both the refusal and the CLI's error line carry (the
#: service's zip checks word their messages for an upload; the CLI's name a local file).
REFUSAL_PHRASES: dict[str, str] = {
    "empty_folder": "no files",
    "zip_bomb": "zip bomb",
    "zip_not_a_zip": "not a readable zip archive",
    "zip_empty": "the zip archive holds no",
    "fuzz_zip_name_not_utf8": "not a readable zip archive",
    "fuzz_zip_version_too_new": "not a readable zip archive",
}
#: Cases whose ``case.json`` gives input options an upload cannot carry; their job fails with this phrase.
NEEDS_OPTIONS: dict[str, str] = {"fuzz_png_truncated_ihdr": "--window"}


@dataclass
class Env:
    """The running service and what the cases need."""

    client: Any
    service: Any
    data: Path
    corpus: Path
    bundle: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, service_bundle: Path, h: Any) -> Iterator[Env]:
    """The corpus (generated once, ingest-only cases left out) and one service over a fresh data folder."""
    from fastapi.testclient import TestClient

    from ichd.service.app import create_app
    from ichd.service.runner import StudyService

    corpus = tmp_path_factory.mktemp("corpus")
    make_corpus.generate(corpus, CASES)
    data = tmp_path_factory.mktemp("svc") / "data"
    service = StudyService(h.make_config(data, service_bundle))
    # raise_server_exceptions=False: a bug answers 500 (asserted below) instead of raising in the test client
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        yield Env(client=client, service=service, data=data, corpus=corpus, bundle=service_bundle)


# ------------------------------------------------------------------------------------------------- the upload

def _part_files(folder: Path) -> list[tuple[bytes, Path]]:
    """(name relative to ``folder`` as bytes, path to read) of every file a client would send (module docstring)."""
    found: list[tuple[bytes, Path]] = []
    for dirpath, dirs, files in os.walk(os.fsencode(folder)):  # bytes: names that are not UTF-8 stay as they are
        dirs.sort()  # os.walk does not descend into links to folders (followlinks=False)
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path):  # a regular file, or a link to one (followed); dangling links are skipped
                found.append((os.path.relpath(path, os.fsencode(folder)), Path(os.fsdecode(path))))
    return found


def _multipart(parts: list[tuple[bytes, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of file fields ``files`` (name bytes, content) and its content type.

    Built by hand, as curl builds it, so that file names go as raw bytes (httpx only takes str names); a ``"`` in
    a name is sent as ``%22`` (as browsers do).
    """
    boundary = uuid.uuid4().hex.encode()
    body = bytearray()
    for name, content in parts:
        assert boundary not in content
        body += (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="'
                 + name.replace(b'"', b"%22").replace(b"\r", b"").replace(b"\n", b"") + b'"\r\n'
                 b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n")
    body += b"--" + boundary + b"--\r\n"
    return bytes(body), f"multipart/form-data; boundary={boundary.decode()}"


def _upload(client: Any, inp: Path, auth: dict[str, str]) -> Any:
    """POST the case input as the module docstring says; the response."""
    if inp.is_file() and inp.suffix.lower() == ".zip":
        body, ctype = inp.read_bytes(), "application/zip"
    elif inp.is_file():
        body, ctype = _multipart([(os.fsencode(inp.name), inp.read_bytes())])
    else:
        body, ctype = _multipart([(name, path.read_bytes()) for name, path in _part_files(inp)])
    return client.post("/v1/studies", content=body, headers={**auth, "Content-Type": ctype})


def _wait(client: Any, job_id: str, auth: dict[str, str]) -> dict[str, Any]:
    """Poll the job until it is done or failed (at most :data:`JOB_TIMEOUT_S`); its JSON."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        r = client.get(f"/v1/jobs/{job_id}", headers=auth)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {JOB_TIMEOUT_S:.0f} s"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------- the CLI line

#: A stderr line of the service's own log (``LEVEL ichd.service.<module>: ...``).
SERVICE_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ichd\.service\.")


def _cli_error(inp: Path, bundle: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``ichd predict`` prints after ``ichd: error: `` for ``inp`` (it must fail with exit 2); run without the
    case's input options (``case.json`` ``args``), as an upload cannot carry them."""
    logger = logging.getLogger(LOGGER_NAME)
    level = logger.level  # the CLI sets the ichd logger's level (-q: errors only); the service log wants INFO
    capsys.readouterr()
    try:
        code = run(["-q", "predict", str(inp), "--model", str(bundle), "--out", str(out), "--format", "json",
                    "--no-gradcam", "--device", "cpu", "--workers", "1"])
    finally:
        logger.setLevel(level)
    err = capsys.readouterr().err
    # The in-process service's worker thread may still be writing its own record of the job just finished (it
    # publishes the job's status, then logs it) while the CLI runs: those lines are the service's, not the CLI's.
    lines = [ln for ln in err.splitlines() if ln.strip() and not SERVICE_LOG_LINE.match(ln)]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ichd: error: "), err[-1000:]
    return lines[0].removeprefix("ichd: error: ")


def _without_paths(message: str, inp: Path) -> str:
    """The CLI's message with its local input path taken out as the service takes out its own: paths become
    relative to the upload, the input folder itself "the upload" (a single file is uploaded into the folder)."""
    folder = inp if inp.is_dir() else inp.parent
    for base in (str(folder.resolve()), str(folder)):
        message = message.replace(base + os.sep, "").replace(base, "the upload")
    return " ".join(message.split())


# ------------------------------------------------------------------------------------------------- the checks

def _data_files(data: Path) -> set[str]:
    """Every path under the data folder but the store and the log (which every request may touch)."""
    return {p.relative_to(data).as_posix() for p in data.rglob("*")
            if not p.relative_to(data).as_posix().startswith(("ichd.sqlite", "logs", "service.lock"))}


def _listing(root: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, dirs, files in os.walk(root):
        found.update(os.path.join(dirpath, n) for n in dirs + files)
    return found


def _n_warnings(result: Any) -> int:
    """Warnings in ``prediction.json`` (one result, or a list for several series)."""
    return sum(len(r.get("warnings", [])) for r in (result if isinstance(result, list) else [result]))


#: A traceback's header or one of its frame lines.
TRACEBACK = re.compile(r'Traceback \(most recent call last\)|File "[^"]*", line \d+')


def _no_traceback(text: str, what: str) -> None:
    assert not TRACEBACK.search(text), f"traceback in {what}: {text[-2000:]}"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("name", CASES)
def test_upload(name: str, env: Env, h: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    entry = json.loads((env.corpus / name / "case.json").read_text())
    inp = env.corpus / name / entry["input"]
    expect = entry["expect"]
    client, auth = env.client, h.AUTH
    log_path = env.service.log_path
    log_start = log_path.stat().st_size
    data_before = _data_files(env.data)
    corpus_before = _listing(env.corpus)

    r = _upload(client, inp, auth)
    assert r.status_code != 500 and r.status_code in (202, 400, 413, 415), (r.status_code, r.text[-1000:])
    _no_traceback(r.text, "the upload's response")
    refusal: str | None = None
    job: dict[str, Any] | None = None
    if r.status_code == 202:
        job = _wait(client, r.json()["job_id"], auth)
        sid = job["study_id"]
        left = {p for p in _data_files(env.data) - data_before if not p.startswith(f"studies/{sid}")}
        assert not left, f"outside the study folder: {sorted(left)[:5]}"
    else:
        body = r.json()
        assert set(body) == {"error", "hint"} and body["error"] and body["hint"], body
        refusal = body["error"]
        assert "\n" not in refusal
        assert _data_files(env.data) == data_before, "a refused upload left files in the data folder"

    if name in SERVICE_REFUSES:  # read by the CLI, refused by the service's zip checks (module docstring)
        assert refusal is not None and SERVICE_REFUSES[name] in refusal, (r.status_code, r.text, job)
    elif expect == "error" or name in NEEDS_OPTIONS:
        if refusal is not None:
            cli = _cli_error(inp, env.bundle, tmp_path / "out", capsys)
            phrase = REFUSAL_PHRASES.get(name)
            assert phrase is not None, f"{name}: refused at upload ({refusal!r}); the CLI says {cli!r}"
            assert phrase in refusal and phrase in cli, (refusal, cli)
        else:
            assert job is not None and job["status"] == "failed", job
            reason = job["error"]
            assert reason and "\n" not in reason, job
            _no_traceback(reason, "the job's reason")
            assert not (env.data / "studies" / job["study_id"] / "result").exists()
            assert not (env.data / "studies" / job["study_id"] / "volumes").exists()
            cli = _without_paths(_cli_error(inp, env.bundle, tmp_path / "out", capsys), inp)
            if inp.is_dir():
                assert reason == cli, f"\nservice: {reason}\nCLI:     {cli}"
            else:  # the service reads a folder of that one file: its reason wraps the CLI's message (no hint)
                assert cli.split(HINT_SEP, 1)[0] in reason, f"\nservice: {reason}\nCLI:     {cli}"
            if name in NEEDS_OPTIONS:
                assert NEEDS_OPTIONS[name] in reason, reason
    else:
        assert job is not None and job["status"] == "done", (r.status_code, r.text, job)
        res = client.get(f"/v1/studies/{job['study_id']}/result", headers=auth)
        assert res.status_code == 200, res.text
        if expect == "warning":
            assert _n_warnings(res.json()) > 0, f"{name}: no warning in the result"

    if job is not None:  # delete: nothing of the study is left
        d = client.delete(f"/v1/studies/{job['study_id']}", headers=auth)
        assert d.status_code == 200, d.text
        assert _data_files(env.data) == data_before, "a deleted study left files in the data folder"
    assert not any((env.data / "tmp").iterdir()), "files left in the upload staging folder"
    assert _listing(env.corpus) == corpus_before, "written into the corpus"
    assert not ABS_ESCAPE.exists()
    _no_traceback(log_path.read_bytes()[log_start:].decode("utf-8", "replace"), "the service log")
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_the_tables_name_corpus_cases() -> None:
    """Every case named above exists and has the expectation its table assumes (a renamed case fails here)."""
    expect = {name: make_corpus.CASES[name][0] for name in CASES}
    assert all(expect[n] in ("ok", "warning") for n in SERVICE_REFUSES)
    assert all(expect[n] == "error" for n in REFUSAL_PHRASES)
    assert all(make_corpus.CASE_ARGS.get(n) for n in NEEDS_OPTIONS)
    assert {n for n in CASES if make_corpus.CASE_ARGS.get(n)} <= set(NEEDS_OPTIONS)
