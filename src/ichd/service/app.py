"""The HTTP API of ``ichd serve`` (FastAPI; OpenAPI docs at ``/docs``, schema at ``/openapi.json``).

==========================================================  =====================================================
``GET /health``                                             liveness (no token needed)
``GET /viewer/``                                            the web viewer (static files, no token needed; see
                                                            :mod:`ichd.service.viewer`)
``GET /v1/model``                                           the loaded model: identity, thresholds, model card
``POST /v1/studies``                                        upload a study: a zip body, or multipart files (DICOM,
                                                            NIfTI, or one zip) -> 202 ``{study_id, job_id}``
``GET /v1/jobs/{job_id}``                                   queued / running / done / failed (+ the one-line reason)
``GET /v1/studies``                                         studies, newest first, with status and scan findings,
                                                            and the series still being received over DICOM
``GET /v1/studies/{study_id}``                              one study
``DELETE /v1/studies/{study_id}``                           the study, its jobs and every file of it
``GET /v1/studies/{study_id}/result``                       ``prediction.json`` (exactly what ``ichd predict`` writes)
``GET /v1/studies/{study_id}/report``                       ``report.html`` (``?series=K`` for study K of several)
``GET /v1/studies/{study_id}/dicom/sr``                     the DICOM Comprehensive SR (``?series=K``)
``GET /v1/studies/{study_id}/slices/{i}.png``               slice ``i`` (0 = most inferior): ``?window=brain|subdural|
                                                            soft_tissue|bone&overlay=<class>&series=K``
``/dicomweb/studies/...``                                   DICOMweb: STOW-RS in, QIDO-RS and WADO-RS of the results
                                                            (see :mod:`ichd.service.dicomweb`)
==========================================================  =====================================================

Every endpoint but ``/health``, the API documentation (``/docs``, ``/redoc``, ``/openapi.json``: no data) and the
viewer's static files needs ``Authorization: Bearer <token>`` when the service has a token (enforced by :class:`BearerAuth` for every path but :data:`OPEN_PATHS`, so a new endpoint cannot
be left open). Errors are
``{"error": "...", "hint": "..."}`` with a 4xx status (500 with no traceback for a bug), never a traceback.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ichd import __version__
from ichd.errors import IchdError
from ichd.service.dicomweb import add_dicomweb_routes
from ichd.service.errors import ApiError, UploadRejected
from ichd.service.runner import StudyService
from ichd.service.store import Job, Study, StudyBusy, valid_id
from ichd.service.uploads import (
    ZipLimits,
    copy_stream,
    extract_zip,
    is_zip_name,
    remove_tree,
    safe_file_name,
    unique_names,
)
from ichd.service.viewer import VIEWER_PATHS, add_viewer_routes
from ichd.utils.logging import get_logger

log = get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The API's documentation: the OpenAPI schema and the pages that render it. They hold no data, and a browser
#: cannot send a bearer header when it opens a page, so they are open; the pages' "Authorize" button takes the
#: token for the requests made from them ("Try it out"), which stay authenticated like every other request.
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
#: Paths served without the token: liveness, the API documentation and the viewer's static files (no patient data).
OPEN_PATHS = frozenset({"/health"}) | DOCS_PATHS | VIEWER_PATHS
#: Request content types taken as a zip body.
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip",
                       "application/octet-stream"})
#: Headers on every response: results are patient data, never cached or sniffed.
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"))
#: The report is one self-contained file: inline CSS and data: images only.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
TOKEN_HINT = ("send the header 'Authorization: Bearer <token>' with the token the service was started with "
              "(ICHD_TOKEN or --token-file)")

Status = Literal["queued", "running", "done", "failed"]


# --------------------------------------------------------------------------------------------------- models

class ErrorOut(BaseModel):
    error: str = Field(description="what is wrong")
    hint: str | None = Field(None, description="what to do")


class HealthOut(BaseModel):
    status: str
    version: str


class JobOut(BaseModel):
    job_id: str
    study_id: str
    status: Status
    attempts: int = Field(description="times the job was started (an interrupted run is retried once)")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = Field(None, description="why it failed: the line `ichd predict` would print")
    progress: dict[str, Any] | None = Field(
        None, description="while running, what the job does now: {stage: 'second_reader', series_instance_uid, "
                          "done, total} (blocks of the BLAST-CT segmentation)")
    links: dict[str, str]


class SeriesFindings(BaseModel):
    index: int = Field(description="the series' number in this study (?series=K)")
    series_instance_uid: str
    study_instance_uid: str
    n_slices: int
    scan: dict[str, float] = Field(description="scan-level probability per label")
    scan_positive: dict[str, bool] = Field(description="scan probability at or above the model's threshold")
    findings: list[str] = Field(description="the labels called positive")
    scan_call: str | None = Field(None, description="positive, negative or not_assessable")
    not_assessable_reason: str | None = Field(None, description="why the scan is not assessable")
    in_training_data: bool | None = Field(None, description="the series is in the model's training data")
    series_description: str = Field("", description="the DICOM Series Description of the series (empty when none)")
    second_reader: dict[str, Any] | None = Field(
        None, description="the second reader's result (ichd serve --second-reader): name, volumes_ml, hemorrhage_ml")


class StudyOut(BaseModel):
    study_id: str
    job_id: str
    status: Status
    created_at: str
    source: str
    n_files: int
    n_bytes: int
    error: str | None = None
    series: list[SeriesFindings] = Field(default_factory=list)
    links: dict[str, str]


class ReceivingOut(BaseModel):
    status: Literal["receiving"] = "receiving"
    source: str = Field(description="how it arrives: dicom")
    study_instance_uid: str
    series_instance_uid: str
    n_instances: int = Field(description="instances received so far")
    received_at: str = Field(description="when the first instance arrived")
    last_instance_at: str = Field(description="when the latest instance arrived")
    calling_ae: str = Field(description="the sender's AE title")
    series_description: str
    expected_instances: int | None = Field(None, description="the series' instance count as the sender stated it "
                                                            "(Number of Series Related Instances): the series is "
                                                            "complete when that many have arrived; null if not stated")
    complete_in_s: float = Field(description="seconds until the series is complete (the idle timeout) if no more "
                                             "instances arrive; it then becomes a study with a queued job")


class StudyList(BaseModel):
    studies: list[StudyOut]
    receiving: list[ReceivingOut] = Field(
        default_factory=list, description="series arriving over DICOM that are not studies yet (first page only)")


class SubmitOut(BaseModel):
    study_id: str
    job_id: str
    status: Status
    links: dict[str, str]


class DeletedOut(BaseModel):
    deleted: str


class ModelOut(BaseModel):
    name: str
    version: str
    sha256: str = Field(description="sha256 of the weights (as in every result's model.sha256)")
    source: str = Field(description="bundle or checkpoint")
    scan_rule: str = Field(description="how the scan probability is made from the slices")
    thresholds: dict[str, float] = Field(description="operating threshold per label (scan level)")
    sequence_stage: bool
    evidence_map: dict[str, str] = Field(description="the heat maps the viewer overlays: method (lesion or gradcam), "
                                         "name and a sentence saying what they are")
    description: str
    intended_use: str
    training_data: str
    license: str
    threshold_policy: dict[str, str] = Field(description="how each threshold was chosen")
    model_card: str = Field(description="the model card (Markdown); empty when the model has none")


UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"},
        "description": "the study's DICOM files, NIfTI file(s), or one zip (any field name)"}}}},
    "application/zip": {"schema": {"type": "string", "format": "binary", "description": "a zip of the study"}},
}}}


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _job_links(job: Job) -> dict[str, str]:
    return {"job": f"/v1/jobs/{job.id}", "study": f"/v1/studies/{job.study_id}"}


def job_out(job: Job, progress: dict[str, Any] | None = None) -> JobOut:
    return JobOut(job_id=job.id, study_id=job.study_id, status=job.status, attempts=job.attempts,  # type: ignore[arg-type]
                  created_at=_iso(job.created_at) or "", started_at=_iso(job.started_at),
                  finished_at=_iso(job.finished_at), error=job.error,
                  progress=progress if job.status == "running" else None, links=_job_links(job))


def study_out(study: Study) -> StudyOut:
    base = f"/v1/studies/{study.id}"
    links = {"self": base, "job": f"/v1/jobs/{study.job.id}"}
    if study.job.status == "done":
        links.update(result=f"{base}/result", report=f"{base}/report", dicom_sr=f"{base}/dicom/sr",
                     slices=f"{base}/slices/{{i}}.png")
    return StudyOut(study_id=study.id, job_id=study.job.id, status=study.job.status,  # type: ignore[arg-type]
                    created_at=_iso(study.created_at) or "", source=study.source, n_files=study.n_files,
                    n_bytes=study.n_bytes, error=study.job.error,
                    series=[SeriesFindings(**s) for s in study.summary], links=links)


def receiving_out(item: dict[str, Any]) -> ReceivingOut:
    return ReceivingOut(source=str(item["source"]), study_instance_uid=str(item["study_instance_uid"]),
                        series_instance_uid=str(item["series_instance_uid"]), n_instances=int(item["n_instances"]),
                        received_at=_iso(item["received_at"]) or "", last_instance_at=_iso(item["last_instance_at"]) or "",
                        calling_ae=str(item["calling_ae"]), series_description=str(item["series_description"]),
                        expected_instances=item.get("expected_instances"),
                        complete_in_s=round(float(item["complete_in_s"]), 1))


# ----------------------------------------------------------------------------------------------- middleware

def _error_body(message: str, hint: str | None) -> dict[str, Any]:
    return {"error": message, "hint": hint}


class BearerAuth:
    """ASGI middleware: every HTTP request but :data:`OPEN_PATHS` needs ``Authorization: Bearer <token>``.

    With ``token=None`` nothing is checked (``ichd serve`` allows that on loopback addresses only). Tokens are
    compared in constant time.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = rest.strip()
                break
        if given is None:
            response = JSONResponse(_error_body("missing bearer token", TOKEN_HINT), status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="ichd"'})
        elif not hmac.compare_digest(given, self.token):
            response = JSONResponse(_error_body("invalid bearer token", TOKEN_HINT), status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="ichd", error="invalid_token"'})
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend((k, v) for k, v in SECURITY_HEADERS if k not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _limited_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses (413) a request body longer than ``limit`` bytes as it streams in."""
    total = 0

    async def wrapped() -> Message:
        nonlocal total
        message = await receive()
        if message.get("type") == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise UploadRejected(f"the upload is larger than {limit / 2**20:.1f} MB", status=413,
                                     hint="upload the study in smaller parts, or raise --max-upload-mb")
        return message

    return wrapped


# ------------------------------------------------------------------------------------------------------ app

def create_app(service: StudyService) -> FastAPI:
    """The FastAPI application over ``service`` (started and closed with the app's lifespan)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="ichd",
        version=__version__,
        summary="Intracranial hemorrhage detection on head CT (research software, not a medical device).",
        description=__doc__.split("\n\n", 1)[0] + "\n\nUpload a study, poll its job, then read the result, the "
                    "HTML report, the DICOM SR and slice images, or open the web viewer at `/viewer/`. Every "
                    "endpoint but `/health`, these docs and the viewer's static files needs `Authorization: "
                    "Bearer <token>` when the service runs with a token: press **Authorize** and paste the token "
                    "to try the endpoints from this page.",
        lifespan=lifespan,
        responses={400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut},
                   409: {"model": ErrorOut}},
    )
    app.state.service = service
    app.add_middleware(BearerAuth, token=service.config.token)
    app.add_middleware(SecurityHeaders)
    _add_error_handlers(app)

    @app.get("/health", response_model=HealthOut, tags=["service"], summary="Liveness (no token needed)")
    async def health() -> HealthOut:
        return HealthOut(status="ok" if service.started else "starting", version=__version__)

    _add_routes(app, service)
    add_dicomweb_routes(app, service)
    add_viewer_routes(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_error_body(exc.message, exc.hint), status_code=exc.status)

    @app.exception_handler(IchdError)
    async def _ichd_error(_request: Request, exc: IchdError) -> JSONResponse:
        return JSONResponse(_error_body(exc.message, exc.hint), status_code=getattr(exc, "status", 400))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        hints = {404: "see /docs for the endpoints", 405: "see /docs for the methods of each endpoint"}
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        return JSONResponse(_error_body(detail, hints.get(exc.status_code)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return JSONResponse(_error_body("invalid request: " + "; ".join(parts), "see /docs for the parameters"),
                            status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error answering a request: %s: %s", type(exc).__name__, exc)
        return JSONResponse(_error_body("internal error", "see the service log, and report it"), status_code=500)


def _check_id(value: str, what: str) -> str:
    if not valid_id(value):
        raise ApiError(f"invalid {what} id {value[:40]!r}",
                       hint=f"{what} ids are 32 lowercase hex digits, as returned by POST /v1/studies")
    return value


def _add_routes(app: FastAPI, service: StudyService) -> None:
    """The ``/v1`` endpoints, added to the app itself (so ``app.routes`` lists every endpoint)."""
    bearer = HTTPBearer(auto_error=False, description="the service token (ICHD_TOKEN or --token-file)")
    secured = [Depends(bearer)]  # documents the token in OpenAPI; BearerAuth enforces it

    def study_or_404(study_id: str) -> Study:
        _check_id(study_id, "study")
        study = service.require_store().get_study(study_id)
        if study is None:
            raise ApiError(f"no study {study_id}", status=404, hint="GET /v1/studies lists the studies")
        return study

    def done_study(study_id: str) -> Study:
        study = study_or_404(study_id)
        job = study.job
        if job.status == "failed":
            raise ApiError(f"study {study_id} failed: {job.error}", status=409,
                           hint="fix the input and upload it again (GET /v1/jobs/{job_id} has the reason)")
        if job.status != "done":
            raise ApiError(f"study {study_id} is not ready: its job is {job.status}", status=409,
                           hint=f"poll GET /v1/jobs/{job.id} until its status is done")
        return study

    def series_folder(study: Study, series: int) -> str:
        if not 0 <= series < len(study.summary):
            raise ApiError(f"study {study.id} has {len(study.summary)} series; series={series} is out of range",
                           status=404, hint="series counts from 0 (GET /v1/studies/{id} lists them)")
        return str(study.summary[series].get("folder") or "")

    def result_file(study: Study, series: int | None, *names: str) -> Any:
        paths = service.paths(study.id)
        folder = series_folder(study, series) if series is not None else ""
        path = paths.result.joinpath(folder, *names) if folder else paths.result.joinpath(*names)
        if not path.is_file():
            raise ApiError(f"study {study.id} has no {'/'.join(names)}", status=404,
                           hint="the result files are missing from the data folder; upload the study again")
        return path

    @app.post("/v1/studies", dependencies=secured, status_code=202, response_model=SubmitOut, tags=["studies"],
                 summary="Upload a study (zip body, or multipart DICOM/NIfTI files)", openapi_extra=UPLOAD_BODY,
                 responses={413: {"model": ErrorOut}, 415: {"model": ErrorOut}})
    async def submit(request: Request) -> SubmitOut:
        cfg = service.config
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > cfg.max_upload_bytes:
            raise UploadRejected(f"the upload is {int(length) / 2**20:.1f} MB; the limit is "
                                 f"{cfg.max_upload_bytes / 2**20:.1f} MB", status=413,
                                 hint="upload the study in smaller parts, or raise --max-upload-mb")
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "multipart/form-data" and ctype not in ZIP_TYPES:
            raise UploadRejected(f"unsupported content type {ctype or '(none)'!r}", status=415,
                                 hint="send multipart/form-data files (curl -F files=@IM0001.dcm ...) or a zip "
                                      "body (curl -H 'Content-Type: application/zip' --data-binary @study.zip)")
        staging = await run_in_threadpool(service.new_staging_dir)
        try:
            if ctype == "multipart/form-data":
                await _receive_multipart(request, staging, service)
            else:
                await _receive_zip_body(request, staging, service)
            job = await run_in_threadpool(service.submit_folder, staging / "input", source="upload")
        finally:
            await run_in_threadpool(remove_tree, staging)
        return SubmitOut(study_id=job.study_id, job_id=job.id, status="queued", links=_job_links(job))

    @app.get("/v1/model", dependencies=secured, response_model=ModelOut, tags=["service"],
             summary="The loaded model: identity, thresholds and model card")
    async def get_model() -> ModelOut:
        return ModelOut(**await run_in_threadpool(service.model_info))

    @app.get("/v1/jobs/{job_id}", dependencies=secured, response_model=JobOut, tags=["jobs"], summary="A job's status")
    async def get_job(job_id: str) -> JobOut:
        _check_id(job_id, "job")
        job = await run_in_threadpool(service.require_store().get_job, job_id)
        if job is None:
            raise ApiError(f"no job {job_id}", status=404, hint="POST /v1/studies returns the job id")
        return job_out(job, service.progress(job_id))

    @app.get("/v1/studies", dependencies=secured, response_model=StudyList, tags=["studies"],
                summary="Studies, newest first, with status and scan-level findings")
    async def list_studies(limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> StudyList:
        studies = await run_in_threadpool(service.require_store().list_studies, limit=limit, offset=offset)
        receiving = service.receiving() if offset == 0 else []
        return StudyList(studies=[study_out(s) for s in studies], receiving=[receiving_out(r) for r in receiving])

    @app.get("/v1/studies/{study_id}", dependencies=secured, response_model=StudyOut, tags=["studies"], summary="One study")
    async def get_study(study_id: str) -> StudyOut:
        return study_out(await run_in_threadpool(study_or_404, study_id))

    @app.delete("/v1/studies/{study_id}", dependencies=secured, response_model=DeletedOut, tags=["studies"],
                   summary="Delete a study and every file of it")
    async def delete_study(study_id: str) -> DeletedOut:
        _check_id(study_id, "study")
        try:
            deleted = await run_in_threadpool(service.delete_study, study_id)
        except StudyBusy as e:
            raise ApiError(f"study {study_id} is being processed", status=409,
                           hint="delete it when its job is done or failed") from e
        if not deleted:
            raise ApiError(f"no study {study_id}", status=404, hint="GET /v1/studies lists the studies")
        return DeletedOut(deleted=study_id)

    @app.get("/v1/studies/{study_id}/result", dependencies=secured, tags=["results"], summary="prediction.json, as `ichd predict` writes it",
                response_class=FileResponse, responses={200: {"content": {"application/json": {}}}})
    async def get_result(study_id: str) -> FileResponse:
        study = await run_in_threadpool(done_study, study_id)
        return FileResponse(result_file(study, None, "prediction.json"), media_type="application/json")

    @app.get("/v1/studies/{study_id}/report", dependencies=secured, tags=["results"], summary="The HTML report of one series",
                response_class=FileResponse, responses={200: {"content": {"text/html": {}}}})
    async def get_report(study_id: str, series: int = Query(0, ge=0)) -> FileResponse:
        study = await run_in_threadpool(done_study, study_id)
        return FileResponse(result_file(study, series, "report.html"), media_type="text/html; charset=utf-8",
                            headers={"Content-Security-Policy": REPORT_CSP})

    @app.get("/v1/studies/{study_id}/dicom/sr", dependencies=secured, tags=["results"], summary="The DICOM Comprehensive SR of one series",
                response_class=FileResponse, responses={200: {"content": {"application/dicom": {}}}})
    async def get_sr(study_id: str, series: int = Query(0, ge=0)) -> FileResponse:
        study = await run_in_threadpool(done_study, study_id)
        return FileResponse(result_file(study, series, "dicom", "sr.dcm"), media_type="application/dicom",
                            filename=f"{study_id}-sr.dcm")

    @app.get("/v1/studies/{study_id}/slices/{index}.png", dependencies=secured, tags=["results"], summary="One slice as PNG",
                response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def get_slice(study_id: str, index: str,
                        window: str = Query("brain", description="brain, subdural, soft_tissue or bone"),
                        overlay: str | None = Query(None, description="the model's evidence map (its lesion map, else Grad-CAM) for this class (e.g. subdural, SDH)"),
                        seg: bool = Query(False, description="draw the second reader's (BLAST-CT) segmentation"),
                        series: int = Query(0, ge=0)) -> Response:
        from ichd.service.render import parse_label, parse_window, slice_png

        if not index.isdigit() or len(index) > 7:
            raise ApiError(f"invalid slice index {index[:20]!r}", hint="slices are numbered 0, 1, ... (0 = most inferior)")
        win = parse_window(window)
        label = parse_label(overlay) if overlay else None
        study = await run_in_threadpool(done_study, study_id)
        series_folder(study, series)  # range check
        hu = await run_in_threadpool(service.load_slice, study_id, series, int(index))
        cam = None
        if label is not None:  # the map of what the model saw: the slice, or its slab (thin-slice series)
            seen = await run_in_threadpool(service.model_slice, study_id, series, int(index),
                                           result_file(study, series, "prediction.json"))
            cam = await run_in_threadpool(service.gradcam, seen, label)
        labels = (await run_in_threadpool(service.load_segmentation_slice, study_id, series, int(index))
                  if seg else None)
        png = await run_in_threadpool(slice_png, hu, win, cam, labels)
        return Response(png, media_type="image/png")



async def _receive_zip_body(request: Request, staging: Any, service: StudyService) -> None:
    cfg = service.config
    zip_path = staging / "upload.zip"
    written = 0
    async with await anyio.open_file(zip_path, "xb") as out:
        async for chunk in request.stream():
            written += len(chunk)
            if written > cfg.max_upload_bytes:
                raise UploadRejected(f"the upload is larger than {cfg.max_upload_bytes / 2**20:.1f} MB", status=413,
                                     hint="upload the study in smaller parts, or raise --max-upload-mb")
            await out.write(chunk)
    if written == 0:
        raise UploadRejected("the request body is empty", hint="send the zip of the study as the body")
    limits = ZipLimits(cfg.max_files, cfg.max_unpacked_bytes, cfg.max_zip_ratio)
    await run_in_threadpool(extract_zip, zip_path, staging / "input", limits)


async def _receive_multipart(request: Request, staging: Any, service: StudyService) -> None:
    cfg = service.config
    limited = Request(request.scope, receive=_limited_receive(request.receive, cfg.max_upload_bytes))
    try:
        form = await limited.form(max_files=cfg.max_files, max_fields=100)
    except StarletteHTTPException as e:
        detail = str(e.detail)
        if "too many files" in detail.lower():
            raise UploadRejected(f"more than {cfg.max_files} files in one upload", status=413,
                                 hint="upload the study in smaller parts, or raise --max-files") from e
        raise UploadRejected(f"the multipart body cannot be read: {detail}",
                             hint="send the files as multipart/form-data file fields") from e
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise UploadRejected("the multipart body holds no files",
                                 hint="send each file as a file field, e.g. curl -F files=@IM0001.dcm")
        await run_in_threadpool(_store_parts, uploads, staging, service)
    finally:
        await form.close()


def _store_parts(uploads: list[UploadFile], staging: Any, service: StudyService) -> None:
    cfg = service.config
    heads = []
    for u in uploads:
        u.file.seek(0)
        heads.append(u.file.read(4))
        u.file.seek(0)
    zips = [k for k, u in enumerate(uploads) if is_zip_name(u.filename, heads[k])]
    if zips:
        if len(uploads) != 1:
            raise UploadRejected(f"{len(zips)} zip archive(s) among {len(uploads)} files",
                                 hint="send one zip of the study, or the files themselves, not both")
        zip_path = staging / "upload.zip"
        copy_stream(uploads[0].file, zip_path, limit=cfg.max_upload_bytes)
        extract_zip(zip_path, staging / "input", ZipLimits(cfg.max_files, cfg.max_unpacked_bytes, cfg.max_zip_ratio))
        return
    dest = staging / "input"
    dest.mkdir()
    names = unique_names(safe_file_name(u.filename, k) for k, u in enumerate(uploads))
    for u, name in zip(uploads, names):
        copy_stream(u.file, dest / name)
