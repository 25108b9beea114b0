"""Decode DICOM pixel data to HU, in parallel, straight into a preallocated volume.

pydicom decodes compressed transfer syntaxes through plugins: pylibjpeg + pylibjpeg-libjpeg (JPEG, JPEG lossless,
JPEG-LS), pyjpegls (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000), pydicom itself or pylibjpeg-rle (RLE); GDCM is used
when installed. Deflate is inflated by pydicom's reader. :func:`check_decoders` turns a missing plugin into a
:class:`~ichd.errors.DependencyError` naming the package, before any pixel is decoded.

**Parallelism.** pylibjpeg-libjpeg holds the GIL while decoding, so threads do not speed up JPEG-lossless series;
:class:`FrameDecoder` therefore uses a process pool (``pool="process"``, default) for series of at least
:data:`MIN_SLICES_FOR_POOL` slices, and decodes smaller ones in the calling process. The same pool reads the
headers of folders with at least :data:`MIN_ITEMS_FOR_MAP` files (:meth:`FrameDecoder.map`). Workers are forked when the
calling process has a single thread (cheap: nothing to re-import), else started with ``forkserver``. At most
``4 × workers`` slices are in flight, so the memory beyond the output volume stays bounded. ``pool="thread"`` is
kept for callers that cannot start processes (``benchmarks/ingest.py`` measures both).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings as pywarnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar

import numpy as np

from ichd.errors import DependencyError
from ichd.io.hu import HuFixes, PixelEncoding, to_hu
from ichd.io.sources import DicomSource
from ichd.utils.logging import get_logger

log = get_logger(__name__)

#: Package(s) to install for each compressed transfer syntax, for the missing-decoder message.
DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pyjpegls (or pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.81": "pyjpegls (or pylibjpeg pylibjpeg-libjpeg)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"

#: Series with fewer slices than this are decoded in the calling process (a pool costs more than it saves).
MIN_SLICES_FOR_POOL = 16
#: Header reads (:meth:`FrameDecoder.map`) go to the pool from this many files on.
MIN_ITEMS_FOR_MAP = 64
#: Slices in flight per worker (bounds the memory held outside the output volume).
IN_FLIGHT_PER_WORKER = 4

PoolKind = Literal["process", "thread"]
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class DecodeJob:
    """One image to decode: where it is, which frame, how to turn stored values into HU (picklable)."""

    name: str
    source: DicomSource
    frame: int | None
    transfer_syntax: str
    encoding: PixelEncoding
    shape: tuple[int, int]


@dataclass(frozen=True)
class DecodeOutcome:
    """What a worker sends back: the HU image and fixes, or an error description (never an exception object)."""

    hu: np.ndarray | None
    fixes: HuFixes | None
    error: str | None = None
    missing_decoder: bool = False
    warnings: tuple[str, ...] = ()


def default_workers() -> int:
    """Default decoding workers: ``min(2, cpu_count)``."""
    return max(1, min(2, os.cpu_count() or 1))


#: Threads known to be harmless to fork over: they never hold a lock the decoding child needs.
FORK_SAFE_THREADS = frozenset({"tqdm_monitor"})


def start_method() -> str:
    """``"fork"`` when no other thread than the main one (and tqdm's monitor) runs, else ``"forkserver"``.

    Forking copies only the calling thread; a lock held by another thread at that moment would stay locked in
    the child forever. ``forkserver`` avoids that at the cost of importing pydicom/numpy in a fresh process.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.name not in FORK_SAFE_THREADS]
    if not others and threading.current_thread() is threading.main_thread() \
            and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "forkserver"


def check_decoders(transfer_syntaxes: Iterable[str], files: Sequence[str] = ()) -> None:
    """Raise :class:`DependencyError` naming the package to install if a needed pixel decoder is missing."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    for ts in sorted(set(transfer_syntaxes)):
        uid = UID(ts)
        if not uid.is_compressed or uid.is_deflated:
            continue
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if not available:
            package = DECODER_PACKAGES.get(ts, "python-gdcm")
            example = f" (e.g. {files[0]})" if files else ""
            raise DependencyError(
                f"no decoder for transfer syntax {uid.name} ({ts}){example} is installed",
                hint=f"install it with: pip install {package}")


def missing_decoder_error(job: DecodeJob, detail: str) -> DependencyError:
    """The :class:`DependencyError` for a decode that failed because a plugin is missing."""
    package = DECODER_PACKAGES.get(job.transfer_syntax, "python-gdcm")
    return DependencyError(f"{job.name}: pixel data could not be decoded ({detail})",
                           hint=f"install the decoder with: pip install {package}")


def decode_to_hu(job: DecodeJob) -> tuple[np.ndarray, HuFixes]:
    """Decode one image to float32 HU (raises on failure)."""
    import pydicom
    from pydicom.pixels import pixel_array

    src: Any = job.source.open()
    if job.transfer_syntax == DEFLATED_SYNTAX:
        src = pydicom.dcmread(src)  # pixel_array() parses raw files directly, which cannot inflate
    stored = pixel_array(src, index=job.frame)
    if stored.shape != job.shape:
        raise ValueError(f"decoded shape {stored.shape} does not match Rows/Columns {job.shape}")
    return to_hu(stored, job.encoding)


def run_job(job: DecodeJob, record_warnings: bool = False) -> DecodeOutcome:
    """Decode ``job`` and report the outcome; never raises (runs in worker processes and threads)."""
    caught: list[pywarnings.WarningMessage] = []
    try:
        if record_warnings:  # safe only where this is the one thread using the warnings module (a worker process)
            with pywarnings.catch_warnings(record=True) as caught:
                pywarnings.simplefilter("always")
                hu, fixes = decode_to_hu(job)
        else:
            hu, fixes = decode_to_hu(job)
    except Exception as e:  # noqa: BLE001 - every failure becomes a per-file outcome for the caller to judge
        text = f"{type(e).__name__}: {e}".splitlines()[0]
        missing = isinstance(e, RuntimeError | NotImplementedError) and ("plugin" in str(e) or "dependenc" in str(e))
        return DecodeOutcome(None, None, text, missing, tuple(str(w.message) for w in caught))
    return DecodeOutcome(hu, fixes, warnings=tuple(str(w.message) for w in caught))


def _process_job(job: DecodeJob) -> DecodeOutcome:
    return run_job(job, record_warnings=True)


class FrameDecoder:
    """Decodes lists of :class:`DecodeJob` into volumes; owns one lazily started pool for all series of a read.

    Use as a context manager so the pool is shut down::

        with FrameDecoder(workers=2) as decoder:
            decoder.decode_into(jobs, volume, on_outcome)
    """

    def __init__(self, workers: int | None = None, pool: PoolKind = "process") -> None:
        self.workers = default_workers() if workers is None else max(1, int(workers))
        if pool not in ("process", "thread"):
            raise ValueError(f"pool must be 'process' or 'thread', got {pool!r}")
        self.pool_kind: PoolKind = pool
        self._executor: Executor | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the pool down (idempotent)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> Executor:
        if self._executor is None:
            if self.pool_kind == "thread":
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="ichd-decode")
            else:
                self._executor = ProcessPoolExecutor(self.workers,
                                                     mp_context=multiprocessing.get_context(start_method()))
        return self._executor

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """``fn`` over ``items``, results in order: in the worker processes for a process pool and at least
        :data:`MIN_ITEMS_FOR_MAP` items, else in this process. ``fn`` must be picklable (a module-level function)."""
        if self.pool_kind != "process" or self.workers <= 1 or len(items) < MIN_ITEMS_FOR_MAP:
            return (fn(item) for item in items)
        chunk = max(1, min(32, len(items) // (self.workers * 8)))
        return self._pool().map(fn, items, chunksize=chunk)

    def decode_into(self, jobs: Sequence[DecodeJob], volume: np.ndarray,
                    on_outcome: Callable[[int, DecodeOutcome], None]) -> None:
        """Decode ``jobs[k]`` into ``volume[k]``; ``on_outcome(k, outcome)`` is called once per job, in any order.

        ``outcome.hu`` is dropped after it was copied into the volume. Exceptions raised by ``on_outcome`` stop the
        work and propagate.
        """
        if self.workers <= 1 or len(jobs) < MIN_SLICES_FOR_POOL:
            with pywarnings.catch_warnings(record=True) as caught:
                pywarnings.simplefilter("always")
                for k, job in enumerate(jobs):
                    self._deliver(k, run_job(job), volume, on_outcome)
            self._log_warnings(jobs, [str(w.message) for w in caught])
            return
        pool = self._pool()
        fn = _process_job if self.pool_kind == "process" else run_job
        limit = self.workers * IN_FLIGHT_PER_WORKER
        pending: dict[Future[DecodeOutcome], int] = {}
        messages: list[str] = []
        next_job = 0
        with pywarnings.catch_warnings(record=True) as caught:  # thread pool: decode warnings land here
            pywarnings.simplefilter("always")
            try:
                while next_job < len(jobs) or pending:
                    while next_job < len(jobs) and len(pending) < limit:
                        pending[pool.submit(fn, jobs[next_job])] = next_job
                        next_job += 1
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        k = pending.pop(future)
                        outcome = future.result()
                        messages.extend(outcome.warnings)
                        self._deliver(k, outcome, volume, on_outcome)
            finally:
                for future in pending:
                    future.cancel()
        self._log_warnings(jobs, messages + [str(w.message) for w in caught])

    @staticmethod
    def _deliver(k: int, outcome: DecodeOutcome, volume: np.ndarray,
                 on_outcome: Callable[[int, DecodeOutcome], None]) -> None:
        if outcome.hu is not None:
            volume[k] = outcome.hu
            outcome = DecodeOutcome(None, outcome.fixes, outcome.error, outcome.missing_decoder, outcome.warnings)
        on_outcome(k, outcome)

    @staticmethod
    def _log_warnings(jobs: Sequence[DecodeJob], messages: list[str]) -> None:
        for message in sorted(set(messages)):
            log.debug("while decoding %s ...: %s", jobs[0].name if jobs else "", message)
