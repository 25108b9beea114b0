"""Decode DICOM pixel data to HU, in parallel, straight into a preallocated volume.

pydicom decodes compressed transfer syntaxes through plugins: pylibjpeg + pylibjpeg-libjpeg (JPEG, JPEG lossless,
JPEG-LS), pyjpegls (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000), pydicom itself or pylibjpeg-rle (RLE); GDCM is used
when installed. JPEG Lossless and JPEG-LS go first to ichd's imagecodecs plugin (:mod:`ichd.io.codecs`, 3-8x
faster), with pydicom's own plugins as the fallback. Deflate is inflated by pydicom's reader. :func:`check_decoders` turns a missing plugin into a
:class:`~ichd.errors.DependencyError` naming the package, before any pixel is decoded.

**Parallelism.** imagecodecs releases the GIL while it decodes, so series that all go to ichd's plugin (JPEG
Lossless, JPEG-LS: :func:`releases_gil`) are decoded by a thread pool writing straight into the volume, whatever
``pool`` says, from :data:`MIN_SLICES_FOR_THREADS` slices on (smaller series in the calling process).
pylibjpeg-libjpeg and the other pydicom plugins hold the GIL, so for the other compressed syntaxes
:class:`FrameDecoder` uses a process pool (``pool="process"``, default) for series of at least
:data:`MIN_SLICES_FOR_POOL` slices, and decodes smaller ones in the calling process. The same pool reads the
headers of folders with at least :data:`MIN_ITEMS_FOR_MAP` files (:meth:`FrameDecoder.map`). Workers are forked when the
calling process has a single thread (cheap: nothing to re-import) and then write each slice straight into the
output volume, which lives in anonymous shared memory (:func:`shared_volume`); otherwise they are started with
``forkserver`` and slices travel back through the pool's pipe. At most ``4 × workers`` slices are in flight, so
the memory beyond the output volume stays bounded. ``pool="thread"`` is
kept for callers that cannot start processes (``benchmarks/ingest.py`` measures both).
"""

from __future__ import annotations

import functools
import mmap
import multiprocessing
import os
import threading
import warnings as pywarnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar

import numpy as np

from ichd.errors import DependencyError, InputError, describe_exception
from ichd.io.codecs import PLUGIN as CODECS_PLUGIN
from ichd.io.codecs import decode_options, preferred_plugin
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
#: The same for the thread pool of GIL-free codecs: below this many slices threads cost more than they save
#: (measured on 2 shared cores: the 34-slice JPEG-LS rsna-series ID_7518324893 reads in ~0.20 s in-process
#: against 0.22-0.30 s with 2 threads; their start-up and GIL hand-offs outweigh the decode they share).
MIN_SLICES_FOR_THREADS = 48
#: Header reads (:meth:`FrameDecoder.map`) go to the pool from this many files on.
MIN_ITEMS_FOR_MAP = 64
#: Slices in flight per worker (bounds the memory held outside the output volume). Threads write into the volume
#: and need no pipe to stay busy, so they keep fewer decoded slices around.
IN_FLIGHT_PER_WORKER = 4
IN_FLIGHT_PER_THREAD = 2

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
    #: File offset of the encapsulated Pixel Data value when the header pass found it (single-frame files).
    pixel_offset: int | None = None


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


def check_decoders(examples: Mapping[str, str]) -> None:
    """Raise :class:`DependencyError` naming the package to install if a needed pixel decoder is missing.

    ``examples`` maps each transfer syntax UID to be decoded to one file that uses it (named in the message).
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    for ts in sorted(examples):
        uid = UID(ts)
        if not uid.is_transfer_syntax:  # unknown to pydicom (made up, or newer than it, e.g. JPEG XL): no decoder
            example = f" (e.g. {examples[ts]})" if examples[ts] else ""
            raise InputError(f"transfer syntax {ts}{example} is not supported: no decoder exists for it",
                             hint="convert the files to an uncompressed or JPEG/JPEG-LS/JPEG 2000/RLE syntax")
        if not uid.is_compressed or uid.is_deflated:
            continue
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:  # known to pydicom (or to a package that extends its UIDs, e.g. pynetdicom's
            # JPEG XL) but no decoder exists for it at all: no package to install
            example = f" (e.g. {examples[ts]})" if examples[ts] else ""
            raise InputError(f"transfer syntax {uid.name} ({ts}){example} is not supported: no decoder exists "
                             "for it", hint="convert the files to an uncompressed or JPEG/JPEG-LS/JPEG 2000/RLE "
                                            "syntax") from None
        if not available:
            package = DECODER_PACKAGES.get(ts, "python-gdcm")
            example = f" (e.g. {examples[ts]})" if examples[ts] else ""
            raise DependencyError(
                f"no decoder for transfer syntax {uid.name} ({ts}){example} is installed",
                hint=f"install it with: pip install {package}")


def releases_gil(jobs: Sequence[DecodeJob]) -> bool:
    """True when every job goes to ichd's imagecodecs plugin, whose codecs release the GIL while decoding: threads
    then decode in parallel, without the start-up and memory of worker processes."""
    return bool(jobs) and all(preferred_plugin(job.transfer_syntax) == CODECS_PLUGIN for job in jobs)


def missing_decoder_error(job: DecodeJob, detail: str) -> DependencyError:
    """The :class:`DependencyError` for a decode that failed because a plugin is missing."""
    package = DECODER_PACKAGES.get(job.transfer_syntax, "python-gdcm")
    return DependencyError(f"{job.name}: pixel data could not be decoded ({detail})",
                           hint=f"install the decoder with: pip install {package}")


def decode_direct(job: DecodeJob) -> np.ndarray | None:
    """The stored values of a single-frame grayscale image in a syntax of ichd's imagecodecs plugin, decoded
    without pydicom's pixel pipeline (which converts the codec's array to bytes and back: ~15 % of a 512² JPEG-LS
    slice's decode), when it is unsigned, or signed with all 16 bits stored (a plain int16 view); ``None`` for
    any other image (or a stream that cannot be found), so the caller uses ``pydicom.pixels.pixel_array``, whose
    sign handling the other signed images need. Equal to that path (tested on every case and on real series)."""
    enc = job.encoding
    signed16 = enc.pixel_representation == 1 and enc.bits_stored == 16
    if (job.frame not in (None, 0) or (enc.pixel_representation != 0 and not signed16)
            or preferred_plugin(job.transfer_syntax) != CODECS_PLUGIN):
        return None
    import pydicom
    from pydicom.encaps import generate_frames

    from ichd.io.codecs import decode_codestream

    if job.pixel_offset is not None and job.source.member is None:
        # the header pass found the encapsulated value: read it without parsing the data set again
        with open(job.source.path, "rb") as f:
            f.seek(job.pixel_offset)
            value = f.read()
    else:
        ds = pydicom.dcmread(job.source.open())
        if (int(ds.get("SamplesPerPixel", 1) or 1) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1
                or "PixelData" not in ds):
            return None
        value = ds.PixelData
    try:
        frame = next(generate_frames(value, number_of_frames=1))
        stored = decode_codestream(frame, job.transfer_syntax)
    except Exception:  # noqa: BLE001 - a stream the fast path cannot take goes to pydicom, which says why
        return None
    if stored.dtype.kind != "u":
        return None
    if signed16:
        return stored.view(np.int16) if stored.dtype == np.uint16 else None
    return stored


def decode_to_hu(job: DecodeJob, out: np.ndarray | None = None) -> tuple[np.ndarray, HuFixes]:
    """Decode one image to float32 HU (raises on failure); into ``out`` (e.g. a volume's slice) when given."""
    import pydicom
    from pydicom.pixels import pixel_array

    direct = decode_direct(job)
    if direct is not None:
        if direct.shape != job.shape:
            raise ValueError(f"decoded shape {direct.shape} does not match Rows/Columns {job.shape}")
        return to_hu(direct, job.encoding, out=out)
    src: Any = job.source.open()
    if job.transfer_syntax == DEFLATED_SYNTAX:
        src = pydicom.dcmread(src)  # pixel_array() parses raw files directly, which cannot inflate
    options = decode_options(job.transfer_syntax)
    try:
        stored = pixel_array(src, index=job.frame, **options)
    except Exception:
        if not options:
            raise
        # the fast plugin could not take this file: pydicom's own plugins, in their order, get it
        src = job.source.open() if job.transfer_syntax != DEFLATED_SYNTAX else src
        stored = pixel_array(src, index=job.frame)
    if stored.shape != job.shape:
        raise ValueError(f"decoded shape {stored.shape} does not match Rows/Columns {job.shape}")
    return to_hu(stored, job.encoding, out=out)


def run_job(job: DecodeJob, record_warnings: bool = False, out: np.ndarray | None = None) -> DecodeOutcome:
    """Decode ``job`` and report the outcome; never raises (runs in worker processes and threads).

    With ``out`` the HU image is written there and ``outcome.hu`` is that array."""
    caught: list[pywarnings.WarningMessage] = []
    try:
        if record_warnings:  # safe only where this is the one thread using the warnings module (a worker process)
            with pywarnings.catch_warnings(record=True) as caught:
                pywarnings.simplefilter("always")
                hu, fixes = decode_to_hu(job, out)
        else:
            hu, fixes = decode_to_hu(job, out)
    except Exception as e:  # noqa: BLE001 - every failure becomes a per-file outcome for the caller to judge
        text = describe_exception(e)
        # pydicom says "exceptions were raised by all available plugins" for a corrupt stream: not a missing plugin
        missing = (isinstance(e, RuntimeError | NotImplementedError) and ("plugin" in str(e) or "dependenc" in str(e))
                   and "exceptions were raised" not in str(e))
        return DecodeOutcome(None, None, text, missing, tuple(str(w.message) for w in caught))
    return DecodeOutcome(hu, fixes, warnings=tuple(str(w.message) for w in caught))


def _process_job(job: DecodeJob) -> DecodeOutcome:
    return run_job(job, record_warnings=True)


#: Volumes in shared memory that forked workers write into, by key (set in the parent before the fork).
_SHARED_VOLUMES: dict[int, np.ndarray] = {}


def _process_job_shared(key: int, k: int, job: DecodeJob) -> DecodeOutcome:
    """Decode in a forked worker and write the slice straight into the parent's shared volume."""
    outcome = run_job(job, record_warnings=True, out=_SHARED_VOLUMES[key][k])
    if outcome.hu is None:
        return outcome
    return DecodeOutcome(None, outcome.fixes, warnings=outcome.warnings)


def shared_volume(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed float32 array in anonymous shared memory (``MAP_SHARED``), writable by forked children.

    The mapping lives as long as the array (numpy keeps the mmap object alive); it is an ordinary array to callers.
    """
    count = int(np.prod(shape))
    buf = mmap.mmap(-1, max(count * 4, 1))
    return np.frombuffer(buf, dtype=np.float32, count=count).reshape(shape)


class FrameDecoder:
    """Decodes lists of :class:`DecodeJob` into volumes with a pool of ``workers`` (see the module docstring).

    Process pools live for one :meth:`map` or :meth:`decode_into` call: a fresh fork for each series lets the
    workers write into that series' shared volume (:meth:`new_volume`), so slices are never pickled back. Under
    ``forkserver`` (other threads running) slices travel back through the pool's pipe instead. A thread pool is
    kept for the whole read. Use as a context manager::

        with FrameDecoder(workers=2) as decoder:
            volume = decoder.new_volume((n, rows, cols))
            decoder.decode_into(jobs, volume, on_outcome)
    """

    def __init__(self, workers: int | None = None, pool: PoolKind = "process") -> None:
        self.workers = default_workers() if workers is None else max(1, int(workers))
        if pool not in ("process", "thread"):
            raise ValueError(f"pool must be 'process' or 'thread', got {pool!r}")
        self.pool_kind: PoolKind = pool
        self._threads: ThreadPoolExecutor | None = None
        self._shared: set[int] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the thread pool down (idempotent; process pools are shut down after each call)."""
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None

    def _uses_processes(self, n: int, minimum: int) -> bool:
        # a daemonic process (e.g. a multiprocessing.Pool worker) may not start children: decode in-process there
        return (self.pool_kind == "process" and self.workers > 1 and n >= minimum
                and not multiprocessing.current_process().daemon)

    def _process_pool(self) -> ProcessPoolExecutor:
        method = start_method()
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(["ichd.io.decode"])  # workers start with pydicom/numpy imported
        return ProcessPoolExecutor(self.workers, mp_context=context)

    def new_volume(self, shape: tuple[int, int, int]) -> np.ndarray:
        """A float32 volume for :meth:`decode_into`: in shared memory when forked workers will fill it."""
        if self._uses_processes(shape[0], MIN_SLICES_FOR_POOL) and start_method() == "fork":
            volume = shared_volume(shape)
            self._shared.add(id(volume))
            return volume
        return np.empty(shape, dtype=np.float32)

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
        """``fn`` over ``items``, results in order: in worker processes for a process pool and at least
        :data:`MIN_ITEMS_FOR_MAP` items, else in this process. ``fn`` must be picklable (a module-level function).
        Close the returned generator (or exhaust it) to shut its pool down."""
        if not self._uses_processes(len(items), MIN_ITEMS_FOR_MAP):
            yield from (fn(item) for item in items)
            return
        chunk = max(1, min(32, len(items) // (self.workers * 8)))
        with self._process_pool() as pool:
            yield from pool.map(fn, items, chunksize=chunk)

    def decode_into(self, jobs: Sequence[DecodeJob], volume: np.ndarray,
                    on_outcome: Callable[[int, DecodeOutcome], None]) -> None:
        """Decode ``jobs[k]`` into ``volume[k]``; ``on_outcome(k, outcome)`` is called once per job, in any order,
        with ``outcome.hu`` already stored (and dropped). Exceptions raised by ``on_outcome`` stop the work."""
        threads = self.pool_kind == "thread" or releases_gil(jobs)
        in_process = self.workers <= 1 or len(jobs) < (MIN_SLICES_FOR_THREADS if threads else MIN_SLICES_FOR_POOL) or (
            not threads and not self._uses_processes(len(jobs), MIN_SLICES_FOR_POOL))
        if in_process:
            with pywarnings.catch_warnings(record=True) as caught:
                pywarnings.simplefilter("always")
                for k, job in enumerate(jobs):
                    self._deliver(k, run_job(job, out=volume[k]), volume, on_outcome)
            self._log_warnings(jobs, [str(w.message) for w in caught])
            return
        if threads:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix="ichd-decode")
            # each thread writes its own slice of the volume: no copy, no pickling
            tasks = [functools.partial(run_job, job, out=volume[k]) for k, job in enumerate(jobs)]
            self._run(self._threads, tasks, volume, on_outcome, jobs)
            return
        key = id(volume)
        shared = key in self._shared and start_method() == "fork"
        if shared:
            _SHARED_VOLUMES[key] = volume
            tasks = [functools.partial(_process_job_shared, key, k, job) for k, job in enumerate(jobs)]
        else:
            tasks = [functools.partial(_process_job, job) for job in jobs]
        log.debug("decoding %d slices in %d worker processes (%s)", len(jobs), self.workers,
                  "writing into shared memory" if shared else "slices sent back through the pool")
        try:
            with self._process_pool() as pool:
                self._run(pool, tasks, volume, on_outcome, jobs)
        except BrokenProcessPool as e:  # a decoder crashed hard (e.g. a segfault on corrupt data)
            raise InputError(
                f"a decoding worker process died while decoding the series of {jobs[0].name} ({e})",
                hint="run again with --workers 1 (workers=1) to find the file, then remove or repair it") from e
        finally:
            _SHARED_VOLUMES.pop(key, None)
            self._shared.discard(key)

    def _run(self, pool: Executor, tasks: Sequence[Callable[[], DecodeOutcome]], volume: np.ndarray,
             on_outcome: Callable[[int, DecodeOutcome], None], jobs: Sequence[DecodeJob]) -> None:
        """Submit ``tasks`` keeping at most ``IN_FLIGHT_PER_WORKER × workers`` pending (``IN_FLIGHT_PER_THREAD``
        for threads); deliver as they finish."""
        per_worker = IN_FLIGHT_PER_THREAD if isinstance(pool, ThreadPoolExecutor) else IN_FLIGHT_PER_WORKER
        limit = self.workers * per_worker
        pending: dict[Future[DecodeOutcome], int] = {}
        messages: list[str] = []
        next_task = 0
        with pywarnings.catch_warnings(record=True) as caught:  # thread pool: decode warnings land here
            pywarnings.simplefilter("always")
            try:
                while next_task < len(tasks) or pending:
                    while next_task < len(tasks) and len(pending) < limit:
                        pending[pool.submit(tasks[next_task])] = next_task
                        next_task += 1
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
            if not np.may_share_memory(outcome.hu, volume):  # decoded elsewhere (a thread or a pipe): copy in
                volume[k] = outcome.hu
            outcome = DecodeOutcome(None, outcome.fixes, outcome.error, outcome.missing_decoder, outcome.warnings)
        on_outcome(k, outcome)

    @staticmethod
    def _log_warnings(jobs: Sequence[DecodeJob], messages: list[str]) -> None:
        for message in sorted(set(messages)):
            log.debug("while decoding %s ...: %s", jobs[0].name if jobs else "", message)
