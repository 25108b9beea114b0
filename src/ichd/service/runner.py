"""The service core: the data folder, the job store, a bounded pool of worker threads around ``ichd predict``.

:class:`StudyService` is what the HTTP API (:mod:`ichd.service.app`) and, later, a DICOM listener use:

* :meth:`StudyService.submit_study` (files on disk, e.g. received over C-STORE) and
  :meth:`StudyService.submit_folder` (a folder the API has filled) enqueue a study and return its :class:`Job`;
  the files are on disk (flushed) and the job committed before either returns, so nothing acknowledged is lost.
* Worker threads (``workers``, default 1, each with its own loaded Predictor) claim queued jobs and run
  :func:`ichd.inference.run.run_predict` — the function ``ichd predict`` runs — on the study's files, writing
  ``prediction.json``, ``report.html`` and ``dicom/`` (SR + Secondary Captures) atomically into the study's
  ``result/`` folder. The HU volume of each series is kept (int16 ``.npy``) for the slice images.
* A failed job carries the one line the CLI would print (``ichd: error: <this>``).

Data folder layout::

    DATA/ichd.sqlite (+ -wal, -shm)    the job store (:mod:`ichd.service.store`)
    DATA/service.lock                  held while a service runs on DATA (a second one is refused)
    DATA/logs/service.log              the service log (UIDs, ids, counts; never patient names or IDs)
    DATA/tmp/                          uploads being received (emptied at start)
    DATA/studies/<study_id>/input/     the uploaded files
    DATA/studies/<study_id>/result/    prediction.json, report.html, dicom/ (as `ichd predict --out`)
    DATA/studies/<study_id>/volumes/   series-000.npy, ... (int16 HU, for slice images); series-000-seg.npy, ...
                                       (uint8 second-reader labels, with ServiceConfig.second_reader)
    DATA/dicom/                        the DICOM node's receive folders and forward queue (:mod:`.dicom_node`)

At start (:meth:`StudyService.open`) leftovers of a crash are cleaned (``tmp/``; study folders the store does not
know, i.e. uploads never acknowledged or deletions cut short) and interrupted jobs are recovered
(:meth:`JobStore.recover`: retried once, then failed with a reason).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from ichd.errors import IchdError, InputError
from ichd.service.config import MAX_ATTEMPTS, ServiceConfig
from ichd.service.errors import UploadRejected
from ichd.service.store import DB_NAME, Job, JobStore, StudyBusy, new_id, valid_id
from ichd.service.uploads import copy_files, fsync_dir, remove_tree
from ichd.utils.logging import LOGGER_NAME, get_logger

log = get_logger(__name__)

#: What the service writes for every study (``ichd predict --format json,html,dicom``).
SERVICE_FORMATS: tuple[str, ...] = ("json", "html", "dicom")
LOCK_NAME = "service.lock"
LOG_NAME = "service.log"

PredictorFactory = Callable[[], Any]


@dataclass(frozen=True)
class StudyPaths:
    """Where one study's files live."""

    root: Path

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def result(self) -> Path:
        return self.root / "result"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"

    def volume(self, series_index: int) -> Path:
        return self.volumes / f"series-{series_index:03d}.npy"

    def segmentation(self, series_index: int) -> Path:
        """The second reader's label map (uint8, the volume's shape), when it ran."""
        return self.volumes / f"series-{series_index:03d}-seg.npy"


class _SeriesRecorder:
    """The Predictor as ``run_predict`` sees it, keeping each series it predicts (for the slice images).

    With ``upload`` (the study's input folder) the series' warnings name their files relative to the upload, as
    the user sent them, never by the server's folders (the result, the report and the viewer show them)."""

    def __init__(self, predictor: Any, upload: Path | None = None) -> None:
        self._predictor = predictor
        self._upload = upload
        self.seen: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def predict_series(self, series: Any, **kwargs: Any) -> Any:
        if self._upload is not None:
            series.warnings = [upload_relative_warning(w, self._upload) for w in series.warnings]
        self.seen.append(series)
        return self._predictor.predict_series(series, **kwargs)


def _series_description(upload: Path, series: Any) -> str:
    """The Series Description of a DICOM series' first file (for the worklist); "" when it has none or the
    series is not DICOM."""
    import pydicom

    if series.source_kind != "dicom" or not series.source_files:
        return ""
    path = upload / series.source_files[0]
    if ":" in series.source_files[0] or not path.is_file():  # a zip member: not read again
        return ""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesDescription"])
        return " ".join(str(ds.get("SeriesDescription", "") or "").split())[:64]
    except Exception:  # noqa: BLE001 - a description is optional: the worklist shows none
        return ""


def upload_relative_warning(warning: Any, upload: Path) -> Any:
    """``warning`` (an :class:`~ichd.types.IngestWarning`) with its files and message relative to ``upload``."""
    import dataclasses

    bases = sorted({str(upload.resolve()), str(upload), str(upload.absolute())}, key=len, reverse=True)

    def relative(text: str) -> str:
        for base in bases:
            text = text.replace(base + os.sep, "").replace(base, "the upload")
        return text

    files = tuple(Path(f).name if os.path.isabs(rel := relative(f)) else Path(rel).as_posix()
                  for f in warning.files)
    return dataclasses.replace(warning, message=relative(warning.message), files=files)


class ServiceBusy(IchdError):
    """Another service holds the data folder."""

    exit_code = 2


class StudyService:
    """Job store + worker pool over one data folder (see the module docstring).

    Args:
        config: the settings.
        predictor_factory: returns a freshly loaded Predictor (default: ``Predictor.load(config.model, ...)``);
            called once per worker and once for the Grad-CAM overlays of slice images.
    """

    def __init__(self, config: ServiceConfig, *, predictor_factory: PredictorFactory | None = None) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir)
        self._factory = predictor_factory or self._load_predictor
        self.store: JobStore | None = None
        self._lock_file: Any = None
        self._log_handler: logging.Handler | None = None
        self._log_level_before: int | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._running: dict[str, Job] = {}
        self._running_lock = threading.Lock()
        self._viewer: Any = None
        self._viewer_lock = threading.Lock()
        self._close_hooks: list[Callable[[], None]] = []
        self._receiving_sources: list[Callable[[], list[dict[str, Any]]]] = []
        #: job id -> what a running job is doing now (``{"stage", "series_instance_uid", "done", "total"}``), for
        #: ``GET /v1/jobs/{id}`` while the second reader runs; in memory only (a finished job has none)
        self._progress: dict[str, dict[str, Any]] = {}
        self.started = False

    # ------------------------------------------------------------------------------------------------ layout

    @property
    def studies_dir(self) -> Path:
        return self.data_dir / "studies"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / LOG_NAME

    def paths(self, study_id: str) -> StudyPaths:
        if not valid_id(study_id):  # ids reach the file system only after this check
            raise InputError(f"invalid study id {study_id[:40]!r}")
        return StudyPaths(self.studies_dir / study_id)

    def _load_predictor(self) -> Any:
        from ichd.inference.predictor import Predictor

        return Predictor.load(self.config.model, device=self.config.device, batch_size=self.config.batch_size)

    # ------------------------------------------------------------------------------------------- life cycle

    def open(self) -> StudyService:
        """Take the data folder (lock), open the store, clean crash leftovers and recover interrupted jobs."""
        if self.store is not None:
            return self
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # patient data: private to the service user
        self._take_lock()
        try:
            self._attach_log()
            self.store = JobStore(self.data_dir / DB_NAME)
            self.studies_dir.mkdir(exist_ok=True)
            remove_tree(self.tmp_dir)
            self.tmp_dir.mkdir()
            known = self.store.study_ids()
            orphans = [p for p in self.studies_dir.iterdir() if p.name not in known]
            for p in orphans:
                if p.is_dir():
                    remove_tree(p)
                else:
                    p.unlink()
            requeued, failed = self.store.recover(MAX_ATTEMPTS)
            for job_id in failed:  # what the last interrupted attempt wrote is never served: remove it now
                job = self.store.get_job(job_id)
                if job is not None:
                    remove_tree(self.paths(job.study_id).result)
            log.info("service data folder opened: %d stud(ies) known, %d leftover folder(s) removed, "
                     "%d interrupted job(s) queued again, %d failed after %d interruptions",
                     len(known), len(orphans), len(requeued), len(failed), MAX_ATTEMPTS)
        except BaseException:
            self._release_lock()
            self._detach_log()
            self.store = None
            raise
        return self

    def start(self) -> StudyService:
        """:meth:`open`, load one Predictor per worker and start the workers (idempotent)."""
        if self.started:
            return self
        self.open()
        try:
            predictors = [self._factory() for _ in range(self.config.workers)]
            readers = [self._load_second_reader() for _ in range(self.config.workers)]
        except BaseException:
            self.close()  # e.g. an unknown model: release the data folder again
            raise
        self._stop.clear()
        for k, (predictor, reader) in enumerate(zip(predictors, readers)):
            t = threading.Thread(target=self._worker, args=(predictor, reader), name=f"ichd-worker-{k}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        self.started = True
        log.info("service started: %d worker(s)", len(predictors))
        return self

    def add_close_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once, first thing in the next :meth:`close` (while the data folder is still held): e.g. to
        stop a DICOM listener that submits studies (:mod:`ichd.service.dicom_node`)."""
        self._close_hooks.append(hook)

    def add_receiving_source(self, source: Callable[[], list[dict[str, Any]]]) -> None:
        """Register what reports series being received and not yet studies (a DICOM node's
        :meth:`~ichd.service.dicom_staging.SeriesStaging.receiving`), for :meth:`receiving`."""
        self._receiving_sources.append(source)

    def receiving(self) -> list[dict[str, Any]]:
        """Series arriving over DICOM that are not studies yet (``source: "dicom"``), oldest first; empty without
        a DICOM node in this process."""
        out: list[dict[str, Any]] = []
        for source in list(self._receiving_sources):
            out.extend({**item, "source": "dicom"} for item in source())
        return out

    def close(self) -> None:
        """Stop the workers (waiting up to ``shutdown_grace_s`` for running jobs, which are otherwise handed back
        to the queue without counting the attempt), and release the data folder."""
        hooks, self._close_hooks = self._close_hooks, []
        for hook in reversed(hooks):
            try:
                hook()
            except Exception:
                log.exception("stopping a component of the service failed")
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + self.config.shutdown_grace_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self.store is not None:
            with self._running_lock:
                left = list(self._running.values())
                self._running.clear()
            for job in left:
                if self.store.release(job.id):
                    log.warning("job %s: still running at shutdown; queued again", job.id)
        self._threads = []
        self.started = False
        self.store = None
        self._viewer = None
        self._detach_log()
        self._release_lock()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_lock(self) -> None:
        import fcntl

        handle = open(self.data_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held open while the service runs
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            handle.close()
            raise ServiceBusy(f"another ichd service is using the data folder {str(self.data_dir)!r}",
                              hint="stop it first, or give this one another --data-dir") from e
        self._lock_file = handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the flock
            self._lock_file = None

    def _attach_log(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger(LOGGER_NAME)
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            self._log_level_before = logger.level
            logger.setLevel(logging.INFO)
        self._log_handler = handler

    def _detach_log(self) -> None:
        if self._log_handler is None:
            return
        logger = logging.getLogger(LOGGER_NAME)
        logger.removeHandler(self._log_handler)
        self._log_handler.close()
        self._log_handler = None
        if self._log_level_before is not None:
            logger.setLevel(self._log_level_before)
            self._log_level_before = None

    @property
    def log_handler(self) -> logging.Handler | None:
        """The handler writing ``logs/service.log`` (the CLI adds it to uvicorn's loggers too)."""
        return self._log_handler

    def require_store(self) -> JobStore:
        if self.store is None:
            raise RuntimeError("the service is not open: call open() or start() first")
        return self.store

    # ---------------------------------------------------------------------------------------------- submit

    def new_staging_dir(self) -> Path:
        """An empty private folder under ``DATA/tmp`` (same file system as the studies) to receive files into."""
        self.require_store()
        path = self.tmp_dir / new_id()
        path.mkdir(mode=0o700)
        return path

    def submit_folder(self, folder: str | os.PathLike[str], *, source: str = "upload") -> Job:
        """Move ``folder`` (filled by the caller, under :meth:`new_staging_dir`) into a new study and enqueue it."""
        store = self.require_store()
        folder = Path(folder)
        files = [p for p in folder.rglob("*") if p.is_file()]
        if not files:
            raise UploadRejected("the upload holds no files",
                                 hint="send the DICOM/NIfTI files of one study, or a zip of them")
        if len(files) > self.config.max_files:
            raise UploadRejected(f"{len(files)} files; at most {self.config.max_files} per study", status=413,
                                 hint="upload the study in smaller parts, or raise --max-files")
        n_bytes = sum(p.stat().st_size for p in files)
        study_id = new_id()
        paths = self.paths(study_id)
        paths.root.mkdir(mode=0o700)
        try:
            os.replace(folder, paths.input)
            fsync_dir(paths.root)
            fsync_dir(self.studies_dir)
            job = store.create(study_id, source=source, n_files=len(files), n_bytes=n_bytes)
        except BaseException:
            remove_tree(paths.root)
            raise
        log.info("study %s: %d file(s), %d bytes from %s; queued as job %s", study_id, len(files), n_bytes,
                 source, job.id)
        self._wake.set()
        return job

    def submit_study(self, files: Iterable[str | os.PathLike[str]], *, source: str = "dicom") -> Job:
        """Copy ``files`` (one study's DICOM/NIfTI files on disk) into a new study and enqueue it.

        This is the entry point for a DICOM listener (C-STORE): call it with the files of one association or
        study once they are complete.
        """
        staging = self.new_staging_dir()
        try:
            copy_files(files, staging / "input", max_files=self.config.max_files)
            return self.submit_folder(staging / "input", source=source)
        finally:
            remove_tree(staging)

    def delete_study(self, study_id: str) -> bool:
        """Remove a study, its jobs and every file of it; False when unknown; :class:`StudyBusy` while running."""
        paths = self.paths(study_id)
        if not self.require_store().delete_study(study_id):
            return False
        remove_tree(paths.root)
        log.info("study %s deleted", study_id)
        return True

    # ---------------------------------------------------------------------------------------------- workers

    def _load_second_reader(self) -> Any:
        """The configured second reader (one per worker thread), or None."""
        if not self.config.second_reader:
            return None
        from ichd.inference.second_reader import load_reader

        return load_reader(self.config.second_reader, self.config.blast_ct_models, self.config.blast_ct_ensemble)

    def progress(self, job_id: str) -> dict[str, Any] | None:
        """What the running job ``job_id`` is doing now (None when it is not running a stage that reports)."""
        entry = self._progress.get(job_id)
        return dict(entry) if entry is not None else None

    def _worker(self, predictor: Any, reader: Any = None) -> None:
        store = self.require_store()
        while not self._stop.is_set():
            try:
                job = store.claim_next()
            except Exception:
                log.exception("could not claim a job from the store")
                self._stop.wait(self.config.poll_interval_s)
                continue
            if job is None:
                self._wake.wait(self.config.poll_interval_s)
                if not self._stop.is_set():
                    self._wake.clear()
                continue
            with self._running_lock:
                self._running[threading.current_thread().name] = job
            try:
                self.run_job(job, predictor, reader)
            except Exception as e:  # a bug outside the prediction itself: the worker goes on
                log.exception("job %s: could not be recorded", job.id)
                try:
                    store.fail(job, f"internal error: {type(e).__name__}: {e} (see the service log)")
                except Exception:
                    log.exception("job %s: could not be marked failed", job.id)
            finally:
                with self._running_lock:
                    self._running.pop(threading.current_thread().name, None)

    def run_job(self, job: Job, predictor: Any, reader: Any = None) -> None:
        """Predict the study of a claimed (running) job and record the outcome in the store."""
        from ichd.inference import run as predict_run

        store = self.require_store()
        paths = self.paths(job.study_id)
        log.info("job %s (study %s): attempt %d started", job.id, job.study_id, job.attempts)
        t0 = time.perf_counter()
        reason: str | None = None
        summary: list[dict[str, Any]] = []
        try:
            remove_tree(paths.result)  # what an interrupted earlier attempt may have left
            remove_tree(paths.volumes)
            if not paths.input.is_dir():
                raise InputError("the study's uploaded files are missing from the data folder",
                                 hint="upload the study again")
            recorder = _SeriesRecorder(predictor, paths.input)
            opts = predict_run.PredictOptions(model=self.config.model, out=paths.result, formats=SERVICE_FORMATS,
                                              overwrite=True, gradcam=True, device=self.config.device,
                                              workers=self.config.decode_workers,
                                              batch_size=self.config.batch_size)
            extra: dict[str, Any] = {}
            if reader is not None:
                opts.second_reader_progress = self._progress_callback(job.id)
                extra["second_reader"] = reader
            result = predict_run.run_predict(paths.input, opts, predictor=recorder, **extra)
            summary = self._save_volumes(paths, result, recorder.seen)
        except IchdError as e:
            reason = str(e)
        except Exception as e:
            log.exception("job %s: internal error", job.id)
            reason = f"internal error: {type(e).__name__}: {e} (see the service log)"
        finally:
            self._progress.pop(job.id, None)
        seconds = time.perf_counter() - t0
        if reason is None:
            if store.finish(job, summary):
                log.info("job %s: done in %.1f s (%d series)", job.id, seconds, len(summary))
            return
        remove_tree(paths.result)
        remove_tree(paths.volumes)
        reason = self._public_reason(reason, paths)
        if job.attempts > 1:
            reason = f"{reason} (attempt {job.attempts}, after an interrupted run)"
        if store.fail(job, reason):
            log.warning("job %s: failed after %.1f s: %s", job.id, seconds, reason)

    def _progress_callback(self, job_id: str) -> Callable[[str, int, int], None]:
        def report(series_uid: str, done: int, total: int) -> None:
            self._progress[job_id] = {"stage": "second_reader", "series_instance_uid": series_uid,
                                      "done": int(done), "total": int(total)}

        return report

    @staticmethod
    def _public_reason(reason: str, paths: StudyPaths) -> str:
        """The error line without the server's folder names (paths become relative to the upload)."""
        text = " ".join(reason.split())
        for base in (str(paths.input.resolve()), str(paths.input)):
            text = text.replace(base + os.sep, "").replace(base, "the upload")
        return text

    @staticmethod
    def _save_volumes(paths: StudyPaths, result: Any, seen: list[Any]) -> list[dict[str, Any]]:
        """Keep each predicted series' HU volume (int16) and return the scan-level findings per series."""
        from ichd.utils.files import atomic_path

        if len(seen) != len(result.results):
            raise RuntimeError(f"{len(result.results)} results for {len(seen)} predicted series")
        paths.volumes.mkdir(parents=True, exist_ok=True)
        summary = []
        for k, (r, series) in enumerate(zip(result.results, seen)):
            if series.series_instance_uid != r.prediction.series_instance_uid:
                raise RuntimeError("series order of the results does not match the predicted series")
            hu = np.clip(np.rint(np.asarray(series.hu, dtype=np.float32)), -32768, 32767).astype(np.int16)
            with atomic_path(paths.volume(k)) as tmp:
                np.save(tmp, hu)
            if r.second_reading is not None:
                with atomic_path(paths.segmentation(k)) as tmp:
                    np.save(tmp, np.asarray(r.second_reading.labels, dtype=np.uint8))
            res = r.result
            summary.append({
                "index": k,
                "series_instance_uid": res["series_instance_uid"],
                "study_instance_uid": res["study_instance_uid"],
                "n_slices": res["n_slices"],
                "folder": r.folder,
                "scan": res["scan"],
                "scan_positive": res["scan_positive"],
                "scan_call": res["scan_call"],
                "not_assessable_reason": res.get("not_assessable_reason"),
                "n_skipped_slices": len(res.get("skipped_slices", [])),
                "in_training_data": (res.get("provenance") or {}).get("in_training_data"),
                "findings": [lab for lab, v in res["scan_positive"].items() if v],
                "series_description": _series_description(paths.input, series),
                "second_reader": ({k: res["second_reader"][k] for k in ("name", "volumes_ml", "hemorrhage_ml")}
                                  if "second_reader" in res else None),
            })
        fsync_dir(paths.volumes)
        return summary

    # ------------------------------------------------------------------------------------------ slice images

    def load_slice(self, study_id: str, series_index: int, index: int) -> np.ndarray:
        """One HU slice (float32) of a done study; :class:`InputError` for an index out of range."""
        path = self.paths(study_id).volume(series_index)
        if not path.is_file():
            raise InputError(f"study {study_id} has no series {series_index}", hint="series counts from 0")
        vol = np.load(path, mmap_mode="r")
        if not 0 <= index < vol.shape[0]:
            raise InputError(f"slice {index} is out of range: the series has {vol.shape[0]} slices (0.."
                             f"{vol.shape[0] - 1})", hint="slices count from 0, most inferior first")
        return np.asarray(vol[index], dtype=np.float32)

    def model_slice(self, study_id: str, series_index: int, index: int, result_json: Path) -> np.ndarray:
        """The HU the model saw for slice ``index`` (what its evidence map must be computed on): the slice, or for a
        thin-slice series read as slabs (``slabs`` in its ``result_json``, :mod:`ichd.preprocessing.slabs`) the
        mean of its slab's source slices."""
        data = json.loads(Path(result_json).read_text(encoding="utf-8"))
        if isinstance(data, list):
            data = data[series_index] if 0 <= series_index < len(data) else {}
        slab = next((sl["source_slices"] for sl in data.get("slabs") or () if index in sl["source_slices"]), None)
        if not slab or len(slab) < 2:
            return self.load_slice(study_id, series_index, index)
        return np.mean([self.load_slice(study_id, series_index, int(i)) for i in slab], axis=0, dtype=np.float32)

    def load_segmentation_slice(self, study_id: str, series_index: int, index: int) -> np.ndarray:
        """One slice of the second reader's label map; :class:`InputError` when the study has none."""
        path = self.paths(study_id).segmentation(series_index)
        if not path.is_file():
            raise InputError(f"study {study_id} series {series_index} has no second-reader segmentation",
                             hint="start the service with --second-reader blast-ct to segment new studies")
        vol = np.load(path, mmap_mode="r")
        if not 0 <= index < vol.shape[0]:
            raise InputError(f"slice {index} is out of range: the series has {vol.shape[0]} slices")
        return np.asarray(vol[index], dtype=np.uint8)

    def gradcam(self, hu: np.ndarray, label: str) -> np.ndarray:
        """The model's evidence map of ``label`` on one HU slice (its lesion map, else Grad-CAM; a Predictor of its
        own, loaded on first use, so overlays never touch a model a worker is running)."""
        from ichd.explain.lesion import slice_explainer
        from ichd.types import CTSeries

        with self._viewer_lock:
            predictor = self._viewer_predictor()
            one = CTSeries(hu=np.asarray(hu, dtype=np.float32)[None], spacing_mm=(float("nan"),) * 3,
                           positions_mm=np.zeros(1), sop_instance_uids=["slice"], study_instance_uid="",
                           series_instance_uid="", source="slice")
            x = predictor.model_inputs(one, 0, 1)
            return predictor.map_to_display(one, slice_explainer(predictor.cnn)(x, label)[0])

    def model_info(self) -> dict[str, Any]:
        """The loaded model's identity, thresholds and model card (:func:`ichd.service.model_info.describe_model`),
        read from the viewer's Predictor (loaded on first use, as for the overlays)."""
        from ichd.service.model_info import describe_model

        with self._viewer_lock:
            return describe_model(self._viewer_predictor())

    def _viewer_predictor(self) -> Any:
        """The Predictor of the slice images and ``/v1/model`` (call with ``_viewer_lock`` held)."""
        if self._viewer is None:
            self._viewer = self._factory()
        return self._viewer


__all__ = ["SERVICE_FORMATS", "ServiceBusy", "StudyBusy", "StudyPaths", "StudyService"]
