"""DICOMweb (PS3.18) on ``ichd serve``: STOW-RS in, QIDO-RS and WADO-RS of ichd's results out.

==============================================================  =================================================
``POST /dicomweb/studies`` (and ``/dicomweb/studies/{study}``)  STOW-RS: ``multipart/related;
                                                                type="application/dicom"``, one instance a part ->
                                                                stored as one upload (source ``dicomweb``) and
                                                                analysed like ``POST /v1/studies``; 200 with the
                                                                DICOM JSON store response
``GET /dicomweb/studies``                                       QIDO-RS: the analysed studies (DICOM JSON)
``GET /dicomweb/studies/{study}/series``                        QIDO-RS: a study's series: the source CT series,
                                                                ichd's SR series and its Secondary Capture series
``GET /dicomweb/studies/{study}``                               WADO-RS: every result instance of the study
``GET /dicomweb/studies/{study}/series/{series}``               WADO-RS: the instances of a result series
``GET /dicomweb/studies/{study}/series/{series}/instances/{sop}``  WADO-RS: one result instance
==============================================================  =================================================

Every path here needs the bearer token like the rest of the API (:class:`ichd.service.app.BearerAuth`). What is
served is what the jobs wrote (``result/<series>/dicom/sr.dcm`` and ``sc-NNN.dcm``); the source CT instances are
listed by QIDO-RS but not served by WADO-RS, there are no rendered frames, metadata or bulk data resources, and a
study shows in QIDO-RS once its job is done. Errors are the API's ``{"error", "hint"}`` JSON with a 4xx status.
"""

from __future__ import annotations

import mmap
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool

from ichd.service.errors import ApiError, UploadRejected
from ichd.service.runner import StudyService
from ichd.service.store import Study
from ichd.service.uploads import remove_tree
from ichd.utils.logging import get_logger

log = get_logger(__name__)

DICOM_JSON = "application/dicom+json"
#: A UID in a path or query: a DICOM UID (digits and dots, at most 64 characters), or a non-conforming one as some
#: sources hold (the RSNA data's ``ID_...``): letters, digits, ``.``, ``_`` and ``-``.
UID_RE = re.compile(r"[0-9A-Za-z._-]{1,64}")
#: Study-level attributes copied from a result instance (the result carries the source's patient and study module).
STUDY_ATTRS = ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName", "PatientID",
               "PatientBirthDate", "PatientSex", "StudyID", "StudyDescription")
#: Query keys that QIDO-RS matches on (keyword or tag), per level; others are ignored with a ``Warning`` header.
STUDY_KEYS = {"StudyInstanceUID": "StudyInstanceUID", "0020000D": "StudyInstanceUID"}
SERIES_KEYS = {"SeriesInstanceUID": "SeriesInstanceUID", "0020000E": "SeriesInstanceUID",
               "Modality": "Modality", "00080060": "Modality"}
#: Query parameters that are not matching keys.
QUERY_CONTROLS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
STOW_HINT = ('send Content-Type: multipart/related; type="application/dicom"; boundary=..., each part one DICOM '
             "file (PS3.10, with its file meta), e.g. with dicomweb-client's store_instances")


# -------------------------------------------------------------------------------------------------- the index

@dataclass(frozen=True)
class Instance:
    """A result instance ichd wrote: the header attributes QIDO-RS and WADO-RS need."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    series_number: int | None
    series_description: str
    study: tuple[tuple[str, Any], ...]  # STUDY_ATTRS present in the file


@dataclass
class Series:
    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    n_instances: int
    instances: list[Instance]  # empty for the source series (not served)


@lru_cache(maxsize=8192)
def _read_header(path: str, _mtime_ns: int, _size: int) -> Instance | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        number = ds.get("SeriesNumber")
        return Instance(path=Path(path), study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
                        sop_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                        modality=str(ds.get("Modality", "") or ""),
                        series_number=int(number) if number not in (None, "") else None,
                        series_description=str(ds.get("SeriesDescription", "") or ""),
                        study=tuple((k, ds.get(k)) for k in STUDY_ATTRS if ds.get(k) not in (None, "")))
    except Exception as e:  # noqa: BLE001 - anything pydicom raises on a damaged file: left out, and logged
        log.warning("dicomweb: cannot read the result file %s: %s: %s", Path(path).name, type(e).__name__, e)
        return None


def _header(path: Path) -> Instance | None:
    st = path.stat()
    return _read_header(str(path), st.st_mtime_ns, st.st_size)


def _done_studies(service: StudyService) -> list[Study]:
    store = service.require_store()
    out: list[Study] = []
    page = 1000
    offset = 0
    while True:
        got = store.list_studies(limit=page, offset=offset)
        out.extend(s for s in got if s.job.status == "done")
        if len(got) < page:
            return out
        offset += page


def build_index(service: StudyService) -> dict[str, dict[str, Series]]:
    """StudyInstanceUID -> SeriesInstanceUID -> :class:`Series` over every done study (newest upload first).

    A source series is listed under its own study; ichd's results under the study their files name, which is the
    source study for DICOM input with valid UIDs and a new study otherwise (see :func:`ichd.inference.run`)."""
    index: dict[str, dict[str, Series]] = {}
    for study in _done_studies(service):
        result = service.paths(study.id).result
        for entry in study.summary:
            study_uid, series_uid = str(entry.get("study_instance_uid")), str(entry.get("series_instance_uid"))
            if UID_RE.fullmatch(study_uid) and UID_RE.fullmatch(series_uid):  # not e.g. a NIfTI upload's file name
                index.setdefault(study_uid, {}).setdefault(series_uid, Series(
                    study_uid, series_uid, "CT", None, str(entry.get("series_description") or ""),
                    int(entry.get("n_slices") or 0), []))
            folder = result / str(entry.get("folder") or "") / "dicom"
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.dcm")):
                inst = _header(path)
                if inst is None:
                    continue
                series_map = index.setdefault(inst.study_uid, {})
                s = series_map.get(inst.series_uid)
                if s is None:
                    s = series_map[inst.series_uid] = Series(inst.study_uid, inst.series_uid, inst.modality,
                                                             inst.series_number, inst.series_description, 0, [])
                s.instances.append(inst)
                s.n_instances = len(s.instances)
    return index


# ------------------------------------------------------------------------------------------------ DICOM JSON

def _dataset_json(values: list[tuple[str, Any]]) -> dict[str, Any]:
    from pydicom.dataset import Dataset

    ds = Dataset()
    for keyword, value in values:
        if value is not None and value != "":
            setattr(ds, keyword, value)
    return ds.to_json_dict()


def _study_json(study_uid: str, series: dict[str, Series], base: str) -> dict[str, Any]:
    results = [i for s in series.values() for i in s.instances]
    attrs: list[tuple[str, Any]] = list(results[0].study) if results else []
    modalities = sorted({s.modality for s in series.values() if s.modality})
    attrs += [("StudyInstanceUID", study_uid), ("ModalitiesInStudy", modalities),
              ("NumberOfStudyRelatedSeries", len(series)),
              ("NumberOfStudyRelatedInstances", sum(s.n_instances for s in series.values())),
              ("RetrieveURL", f"{base}/dicomweb/studies/{study_uid}")]
    return _dataset_json(attrs)


def _series_json(s: Series, base: str) -> dict[str, Any]:
    attrs: list[tuple[str, Any]] = [("StudyInstanceUID", s.study_uid), ("SeriesInstanceUID", s.series_uid),
                                    ("Modality", s.modality), ("SeriesNumber", s.series_number),
                                    ("SeriesDescription", s.description),
                                    ("NumberOfSeriesRelatedInstances", s.n_instances)]
    if s.instances:
        attrs.append(("RetrieveURL", f"{base}/dicomweb/studies/{s.study_uid}/series/{s.series_uid}"))
    return _dataset_json(attrs)


def _check_uid(value: str, what: str) -> str:
    if not UID_RE.fullmatch(value):
        raise ApiError(f"invalid {what} {value[:70]!r}", hint="a UID is up to 64 digits and dots (letters, '_' and '-' are accepted too)")
    return value


def _query(request: Request, keys: dict[str, str]) -> tuple[dict[str, set[str]], int, int, list[str]]:
    """Matching values per attribute (UID lists split on commas), limit, offset, and the ignored keys."""
    match: dict[str, set[str]] = {}
    ignored: list[str] = []
    limit, offset = 1000, 0
    for key, value in request.query_params.multi_items():
        if key in ("limit", "offset"):
            if not value.isdigit() or len(value) > 9:
                raise ApiError(f"invalid {key} {value[:20]!r}", hint=f"{key} is a whole number")
            limit, offset = (int(value), offset) if key == "limit" else (limit, int(value))
        elif key in keys:
            attr = keys[key]
            values = {v.strip() for v in value.split(",") if v.strip()}
            if attr.endswith("UID"):
                for v in values:
                    _check_uid(v, attr)
            match.setdefault(attr, set()).update(values)
        elif key not in QUERY_CONTROLS:
            ignored.append(key)
    return match, limit, offset, ignored


def _dicom_json(items: list[dict[str, Any]], ignored: list[str]) -> JSONResponse:
    headers = {}
    if ignored:
        headers["Warning"] = ('299 ichd: "The following attributes were not supported as matching keys and were '
                              f'ignored: {", ".join(sorted(set(ignored)))[:200]}"')
    return JSONResponse(items, media_type=DICOM_JSON, headers=headers)


# ----------------------------------------------------------------------------------------------- multipart

def _content_type_params(header: str) -> tuple[str, dict[str, str]]:
    main, _, rest = header.partition(";")
    params: dict[str, str] = {}
    for m in re.finditer(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("([^"]*)"|[^;]*)\s*;?', rest):
        params[m.group(1).lower()] = m.group(3) if m.group(3) is not None else m.group(2).strip()
    return main.strip().lower(), params


def split_multipart(body: Path, boundary: str, dest: Path, max_parts: int) -> list[Path]:
    """Write each part of the multipart body in the file ``body`` to ``dest/part-NNNNN.dcm``; the paths.

    :class:`UploadRejected` (400) for a body that is not multipart with this boundary, 409 for a part that is not
    ``application/dicom``.
    """
    delim = b"--" + boundary.encode("latin-1")
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    if body.stat().st_size == 0:
        raise UploadRejected("the request body is empty", hint=STOW_HINT)
    with body.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = 0 if m[:len(delim)] == delim else m.find(b"\r\n" + delim)
        if pos < 0:
            raise UploadRejected("the body holds no part with the boundary of its Content-Type", hint=STOW_HINT)
        pos = pos if m[:len(delim)] == delim else pos + 2
        while True:
            after = pos + len(delim)
            if m[after:after + 2] == b"--":
                break
            line_end = m.find(b"\r\n", after)
            if line_end < 0:
                raise UploadRejected("the multipart body ends inside a boundary line", hint=STOW_HINT)
            start = line_end + 2
            if m[start:start + 2] == b"\r\n":
                headers, content = b"", start + 2
            else:
                end = m.find(b"\r\n\r\n", start)
                if end < 0:
                    raise UploadRejected(f"part {len(out) + 1} has no end to its headers", hint=STOW_HINT)
                headers, content = m[start:end], end + 4
            nxt = m.find(b"\r\n" + delim, content)
            if nxt < 0:
                raise UploadRejected("the multipart body has no closing boundary (it may be truncated)",
                                     hint=STOW_HINT)
            for line in headers.split(b"\r\n"):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-type":
                    ptype = _content_type_params(value)[0]
                    if ptype != "application/dicom":
                        raise UploadRejected(f"part {len(out) + 1} is {ptype!r}, not application/dicom", status=409,
                                             hint="only DICOM files (application/dicom parts) can be stored; "
                                                  "DICOM JSON or XML metadata with bulk data is not supported")
            if len(out) >= max_parts:
                raise UploadRejected(f"more than {max_parts} instances in one request", status=413,
                                     hint="store the study in smaller parts, or raise --max-files")
            path = dest / f"part-{len(out) + 1:05d}.dcm"
            with path.open("xb") as w:
                w.write(m[content:nxt])
            out.append(path)
            pos = nxt + 2
    if not out:
        raise UploadRejected("the multipart body holds no parts", hint=STOW_HINT)
    return out


def _short_pixel_data(ds: Any) -> str | None:
    """Why the native (uncompressed) Pixel Data of ``ds`` is shorter than its image needs; None when it is not."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if "PixelData" not in ds or syntax is None or syntax.is_compressed:
        return None
    try:
        need = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
                * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated)) // 8
    except (AttributeError, TypeError, ValueError):
        return None  # the image attributes are missing or odd: the analysis says what is wrong
    have = len(ds.PixelData)
    return f"its Pixel Data has {have} bytes, its image needs {need}" if have < need else None


def check_instances(paths: list[Path], study_uid: str | None) -> list[tuple[str, str, str]]:
    """(StudyInstanceUID, SOPClassUID, SOPInstanceUID) of each stored part; 409 naming the first bad part.

    The SOP Class UID is taken from the data set, else from the file meta (as the RSNA files hold it)."""
    import pydicom

    out = []
    for k, path in enumerate(paths, start=1):
        try:  # the whole file (pixels not decoded), so that a truncated one is refused here, not in the job
            ds = pydicom.dcmread(path)
        except Exception as e:
            raise UploadRejected(f"part {k} is not a DICOM file: {type(e).__name__}: {str(e)[:200]}", status=409,
                                 hint="each part must be one DICOM file in the PS3.10 format (128-byte preamble, "
                                      "DICM, file meta)") from e
        meta = getattr(ds, "file_meta", None)
        sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
        missing = [name for name, v in (("StudyInstanceUID", ds.get("StudyInstanceUID")),
                                        ("SeriesInstanceUID", ds.get("SeriesInstanceUID")),
                                        ("SOPInstanceUID", ds.get("SOPInstanceUID")), ("SOPClassUID", sop_class))
                   if not v]
        if missing:
            raise UploadRejected(f"part {k} lacks {', '.join(missing)}", status=409,
                                 hint="each part must be a DICOM instance with its study, series and SOP UIDs")
        short = _short_pixel_data(ds)
        if short:
            raise UploadRejected(f"part {k} is truncated: {short}", status=409,
                                 hint="send each file whole; the request may have been cut short")
        if study_uid is not None and str(ds.StudyInstanceUID) != study_uid:
            raise UploadRejected(f"part {k} belongs to study {ds.StudyInstanceUID}, not to {study_uid} of the URL",
                                 status=409, hint="POST to /dicomweb/studies to store instances of any study")
        out.append((str(ds.StudyInstanceUID), str(sop_class), str(ds.SOPInstanceUID)))
    return out


async def _receive_body(request: Request, path: Path, limit: int) -> None:
    written = 0
    async with await anyio.open_file(path, "xb") as out:
        async for chunk in request.stream():
            written += len(chunk)
            if written > limit:
                raise UploadRejected(f"the request is larger than {limit / 2**20:.1f} MB", status=413,
                                     hint="store the study in smaller parts, or raise --max-upload-mb")
            await out.write(chunk)


def _multipart_response(instances: list[Instance]) -> Response:
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for inst in instances:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n"
                   f"Content-Location: {inst.sop_uid}\r\n\r\n".encode(), inst.path.read_bytes(), b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(chunks),
                    media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


def _check_accept(request: Request) -> None:
    """406 unless the client accepts DICOM files (multipart/related; type=application/dicom, or anything)."""
    accept = request.headers.get("accept", "").strip()
    if not accept:
        return
    for item in accept.split(","):
        main, params = _content_type_params(item)
        if main in ("*/*", "multipart/*", "application/dicom") or (
                main == "multipart/related" and params.get("type", "application/dicom") == "application/dicom"):
            return
    raise ApiError(f"cannot answer with {accept[:120]!r}", status=406,
                   hint='ichd serves its result instances as multipart/related; type="application/dicom" only '
                        "(no rendered, metadata or bulk data resources)")


# ---------------------------------------------------------------------------------------------------- routes

def add_dicomweb_routes(app: FastAPI, service: StudyService) -> None:
    """The ``/dicomweb`` endpoints (authenticated by :class:`ichd.service.app.BearerAuth`, like ``/v1``)."""
    bearer = HTTPBearer(auto_error=False, description="the service token (ICHD_TOKEN or --token-file)")
    secured = [Depends(bearer)]
    tags = ["dicomweb"]

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def stow(request: Request, study_uid: str | None) -> JSONResponse:
        cfg = service.config
        main, params = _content_type_params(request.headers.get("content-type", ""))
        if main != "multipart/related":
            raise UploadRejected(f"unsupported content type {main or '(none)'!r}", status=415, hint=STOW_HINT)
        if params.get("type", "application/dicom").lower() != "application/dicom":
            raise UploadRejected(f"unsupported multipart type {params['type']!r}", status=415, hint=STOW_HINT)
        boundary = params.get("boundary", "")
        if not boundary or len(boundary) > 200:
            raise UploadRejected("the Content-Type has no multipart boundary", hint=STOW_HINT)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > cfg.max_upload_bytes:
            raise UploadRejected(f"the request is {int(length) / 2**20:.1f} MB; the limit is "
                                 f"{cfg.max_upload_bytes / 2**20:.1f} MB", status=413,
                                 hint="store the study in smaller parts, or raise --max-upload-mb")
        staging = await run_in_threadpool(service.new_staging_dir)
        try:
            body = staging / "stow.body"
            await _receive_body(request, body, cfg.max_upload_bytes)
            parts = await run_in_threadpool(split_multipart, body, boundary, staging / "input", cfg.max_files)
            await run_in_threadpool(body.unlink)
            stored = await run_in_threadpool(check_instances, parts, study_uid)
            job = await run_in_threadpool(service.submit_folder, staging / "input", source="dicomweb")
        finally:
            await run_in_threadpool(remove_tree, staging)
        base = base_url(request)
        studies = sorted({s for s, _, _ in stored})
        attrs: list[tuple[str, Any]] = []
        if len(studies) == 1:
            attrs.append(("RetrieveURL", f"{base}/dicomweb/studies/{studies[0]}"))
        body_json = _dataset_json(attrs)
        body_json["00081199"] = {"vr": "SQ", "Value": [
            _dataset_json([("ReferencedSOPClassUID", c), ("ReferencedSOPInstanceUID", i)]) for _, c, i in stored]}
        log.info("dicomweb: stored %d instance(s) as study %s (job %s)", len(stored), job.study_id, job.id)
        return JSONResponse(body_json, media_type=DICOM_JSON,
                            headers={"Content-Location": f"/v1/studies/{job.study_id}",
                                     "X-Ichd-Study-Id": job.study_id, "X-Ichd-Job-Id": job.id})

    stow_doc = {"requestBody": {"required": True, "content": {'multipart/related; type="application/dicom"': {
        "schema": {"type": "string", "format": "binary"}}}}}

    @app.post("/dicomweb/studies", dependencies=secured, tags=tags, openapi_extra=stow_doc,
              summary="STOW-RS: store DICOM instances (multipart/related) and analyse them as one upload")
    async def stow_studies(request: Request) -> JSONResponse:
        return await stow(request, None)

    @app.post("/dicomweb/studies/{study}", dependencies=secured, tags=tags, openapi_extra=stow_doc,
              summary="STOW-RS: store instances of this study and analyse them as one upload")
    async def stow_study(study: str, request: Request) -> JSONResponse:
        return await stow(request, _check_uid(study, "StudyInstanceUID"))

    @app.get("/dicomweb/studies", dependencies=secured, tags=tags,
             summary="QIDO-RS: the analysed studies (DICOM JSON); ?StudyInstanceUID=, limit, offset")
    async def qido_studies(request: Request) -> JSONResponse:
        match, limit, offset, ignored = _query(request, STUDY_KEYS)
        index = await run_in_threadpool(build_index, service)
        wanted = match.get("StudyInstanceUID")
        uids = [u for u in index if wanted is None or u in wanted]
        base = base_url(request)
        return _dicom_json([_study_json(u, index[u], base) for u in uids[offset:offset + limit]], ignored)

    @app.get("/dicomweb/studies/{study}/series", dependencies=secured, tags=tags,
             summary="QIDO-RS: the series of a study: source CT, ichd's SR and Secondary Captures")
    async def qido_series(study: str, request: Request) -> JSONResponse:
        _check_uid(study, "StudyInstanceUID")
        match, limit, offset, ignored = _query(request, SERIES_KEYS)
        index = await run_in_threadpool(build_index, service)
        if study not in index:
            raise ApiError(f"no analysed study {study}", status=404,
                           hint="GET /dicomweb/studies lists the studies whose analysis is done")
        series = [s for s in index[study].values()
                  if all(getattr(s, {"SeriesInstanceUID": "series_uid", "Modality": "modality"}[k]) in v
                         for k, v in match.items())]
        base = base_url(request)
        return _dicom_json([_series_json(s, base) for s in series[offset:offset + limit]], ignored)

    async def study_series(study: str) -> dict[str, Series]:
        _check_uid(study, "StudyInstanceUID")
        index = await run_in_threadpool(build_index, service)
        if study not in index:
            raise ApiError(f"no analysed study {study}", status=404,
                           hint="GET /dicomweb/studies lists the studies whose analysis is done")
        return index[study]

    async def result_series(study: str, series: str) -> Series:
        _check_uid(series, "SeriesInstanceUID")
        found = (await study_series(study)).get(series)
        if found is None:
            raise ApiError(f"study {study} has no series {series}", status=404,
                           hint=f"GET /dicomweb/studies/{study}/series lists its series")
        if not found.instances:
            raise ApiError(f"series {series} is a source series; ichd serves only its results over WADO-RS",
                           status=404, hint=f"GET /dicomweb/studies/{study}/series lists the SR and Secondary "
                                            "Capture series (those with a RetrieveURL)")
        return found

    wado_doc = {200: {"content": {'multipart/related; type="application/dicom"': {}}}}

    @app.get("/dicomweb/studies/{study}", dependencies=secured, tags=tags, response_class=Response,
             responses=wado_doc, summary="WADO-RS: every result instance (SR, Secondary Captures) of a study")
    async def wado_study(study: str, request: Request) -> Response:
        _check_accept(request)
        instances = [i for s in (await study_series(study)).values() for i in s.instances]
        return await run_in_threadpool(_multipart_response, instances)

    @app.get("/dicomweb/studies/{study}/series/{series}", dependencies=secured, tags=tags, response_class=Response,
             responses=wado_doc, summary="WADO-RS: the instances of one of ichd's result series")
    async def wado_series(study: str, series: str, request: Request) -> Response:
        _check_accept(request)
        found = await result_series(study, series)
        return await run_in_threadpool(_multipart_response, found.instances)

    @app.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}", dependencies=secured, tags=tags,
             response_class=Response, responses=wado_doc, summary="WADO-RS: one result instance")
    async def wado_instance(study: str, series: str, sop: str, request: Request) -> Response:
        _check_accept(request)
        _check_uid(sop, "SOPInstanceUID")
        found = await result_series(study, series)
        match = [i for i in found.instances if i.sop_uid == sop]
        if not match:
            raise ApiError(f"series {series} has no instance {sop}", status=404,
                           hint=f"GET /dicomweb/studies/{study}/series/{series} returns its instances")
        return await run_in_threadpool(_multipart_response, match[:1])
