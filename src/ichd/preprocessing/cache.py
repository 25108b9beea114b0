"""The on-disk cache of preprocessed scans (written by ``ichd preprocess``, read by :mod:`ichd.data`).

Layout (see docs/architecture.md)::

    CACHE/
      manifest.json         {"version", "preprocess": PreprocessConfig dict, "inputs": [done input keys],
                             "series": [{scan_id, patient_id, study_instance_uid, n_slices, file, bytes, sha256,
                                         source, source_kind, input, shape, dtype, warnings}]}
      slices.csv            slice_id, scan_id, patient_id, slice_index, z_mm
      journal.jsonl         while building: {"key", "entries", "rows"} of each unit finished since the last rewrite
      series/<scan_id>.npy  (z, C, S, S) uint8 0..255 (or float16 0..1): the windows, before normalisation

Building is **resumable**: every finished work unit (a CT-ICH patient, one DICOM series of a multi-series
folder or zip, or else one input path; see :func:`expand_inputs`) is recorded in the manifest, which is rewritten
atomically at most every :data:`FLUSH_SECONDS` and at the end; in between, each finished unit is appended to
``journal.jsonl``. So an interrupted run continues where it stopped and a re-run with the same settings does
nothing. A cache built with different settings is never mixed or overwritten.
Units are processed in parallel over a process pool (``workers``), so memory holds one series per worker, or as
tasks on a Dask cluster (``scheduler``/``dask_workers``, see :mod:`ichd.preprocessing.dask_backend`), which run the
same unit function; either way the driver records each unit as it completes. The finished cache lists units, series
and slices in input order, whichever worker finished first and wherever a run was resumed.

**Crash safety.** Every file is written under a temporary name and renamed into place
(:func:`ichd.utils.files.atomic_path`), so a killed run (even ``kill -9``) leaves only whole files, and the manifest
exists from the start of a build. Each array's size and sha256 are recorded in the manifest. A resumed build
deletes the killed run's temporary files, takes over the journal's units (a line cut by the kill is ignored) and
re-checks the recorded arrays: the size of every one, the sha256 of the journaled ones (and of every one with
``verify``, ``ichd preprocess --verify``), and their slice rows; a missing, truncated or corrupted array is logged
and its unit built again. :meth:`Cache.array` refuses an array whose size differs from the recorded one (with
``open_cache(..., verify=True)`` also its sha256), so a damaged array is never read back.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichd.errors import IchdError, InputError
from ichd.preprocessing.config import PreprocessConfig
from ichd.types import CTSeries
from ichd.utils.files import atomic_path, atomic_write_text, remove_stale_temps, sha256_file
from ichd.utils.logging import get_logger

log = get_logger(__name__)

CACHE_VERSION = 1
MANIFEST = "manifest.json"
SLICES = "slices.csv"
#: Units finished since the last rewrite of manifest.json / slices.csv, one JSON line each (appended as each one
#: finishes, deleted after each rewrite), so a killed build keeps every unit it finished.
JOURNAL = "journal.jsonl"
SERIES_DIR = "series"
SLICE_COLUMNS = ("slice_id", "scan_id", "patient_id", "slice_index", "z_mm")
#: Longest time between two rewrites of manifest.json / slices.csv while a cache is being built.
FLUSH_SECONDS = 10.0


def safe_file_stem(scan_id: str) -> str:
    """``scan_id`` made safe as a file name (characters other than letters, digits, ``._-`` become ``_``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", scan_id)
    return stem if stem not in ("", ".", "..") else f"_{stem}"


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheInput:
    """One unit of work (decoded, cached and recorded as done on its own):

    * ``kind="ctich"``: one CT-ICH patient (``path`` = the CT-ICH root, ``patient`` = its number);
    * ``kind="dicom"``: one DICOM series of a folder or zip holding several (``series`` = "study/series" UIDs,
      ``sources`` = its files as ``(path, zip member or None)``), planned from the headers by
      :func:`expand_inputs` so big multi-series folders are decoded one series at a time, in parallel;
    * ``kind="path"``: anything else, read whole by :func:`ichd.io.read_ct` (``window`` for PNG/JPG folders).

    ``strict`` and ``allow_secondary_capture`` are passed to the DICOM reader (see :func:`ichd.io.read_ct`).
    """

    kind: str
    path: str
    patient: int | None = None
    window: tuple[float, float] | None = None
    series: str | None = None
    sources: tuple[tuple[str, str | None], ...] = ()
    strict: bool = False
    allow_secondary_capture: bool = False

    @property
    def key(self) -> str:
        """Stable key recorded in the manifest when this input is done."""
        if self.kind == "ctich":
            return f"ctich:{self.path}:{self.patient:03d}"
        if self.kind == "dicom":
            return f"dicom:{self.path}:{self.series}"
        return f"path:{self.path}"

    @property
    def where(self) -> str:
        """How messages name this input (no patient data: paths and UIDs only)."""
        if self.kind == "ctich":
            return f"{self.path} patient {self.patient:03d}"
        if self.kind == "dicom":
            return f"{self.path} series {self.series}"
        return self.path

    def load(self, decode_workers: int | None = None) -> list[CTSeries]:
        """Decode the input into HU series (``decode_workers`` is passed to the DICOM decoder)."""
        if self.kind == "ctich":
            from ichd.io.images import read_ctich_patient

            return [read_ctich_patient(self.path, int(self.patient))]
        if self.kind == "dicom":
            from ichd.io import dicom
            from ichd.io.sources import DicomSource, close_zip_handles

            try:
                result = dicom.read_dicom([DicomSource(p, m) for p, m in self.sources], workers=decode_workers,
                                          strict=self.strict, allow_secondary_capture=self.allow_secondary_capture)
            finally:
                close_zip_handles()
            if not result.series:
                raise NoReadableSlice(f"no readable CT slice left in series {self.series} of {self.path}",
                                      hint="read the folder with ichd ingest to see why each file was skipped")
            extra = dicom.skipped_warnings(result.skipped)
            for series in result.series:
                series.warnings.extend(extra)
            return result.series
        from ichd.io.reader import read_ct

        return list(read_ct(self.path, window=self.window, workers=decode_workers, strict=self.strict,
                            allow_secondary_capture=self.allow_secondary_capture))


def plan_dicom_series(path: Path, *, strict: bool = False,
                      allow_secondary_capture: bool = False) -> list[CacheInput] | None:
    """One :class:`CacheInput` per DICOM series of the folder or zip ``path``, from a header-only pass.

    Returns ``None`` when ``path`` is not a DICOM folder/zip or holds a single series (then the whole input is one
    unit read by ``read_ct``). Files skipped while planning (non-images, broken files) are logged with counts;
    the series' own files are re-checked when each series is read.
    """
    from ichd.io import dicom, sources

    if path.is_dir():
        found, _ = sources.folder_sources(path)
    elif path.is_file() and path.suffix.lower() == ".zip":
        found, _ = sources.zip_sources(path)
    else:
        return None
    if len(found) < 2:
        return None
    try:
        headers, skipped = dicom.scan_headers(found, allow_secondary_capture=allow_secondary_capture)
    finally:
        sources.close_zip_handles()
    groups: dict[tuple[str, str], dict[Any, None]] = {}
    for h in headers:
        groups.setdefault((h.study_uid, h.series_uid), {})[h.source] = None
    if len(groups) <= 1:
        return None
    if skipped:
        for w in dicom.skipped_warnings(skipped):
            log.warning("%s: %s", path, w.message)
    resolved = str(path.resolve())
    return [CacheInput("dicom", resolved, series=f"{study}/{series}",
                       sources=tuple((src.path, src.member) for src in files), strict=strict,
                       allow_secondary_capture=allow_secondary_capture)
            for (study, series), files in sorted(groups.items())]


def expand_inputs(paths: Iterable[str | os.PathLike[str]], *, window: tuple[float, float] | None = None,
                  patients: Sequence[int] | None = None, strict: bool = False,
                  allow_secondary_capture: bool = False) -> list[CacheInput]:
    """Work units for ``paths``: a CT-ICH root becomes one unit per patient and a DICOM folder/zip with several
    series one unit per series (parallel and resumable per unit); anything else is one unit read by
    ``ichd.io.read_ct``. ``patients`` limits CT-ICH roots to those patient numbers; ``strict`` and
    ``allow_secondary_capture`` go to the DICOM reader."""
    from ichd.io.images import ctich_patients, is_ctich_root

    out: list[CacheInput] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise InputError(f"input {str(path)!r} does not exist", hint="pass existing files or folders")
        resolved = str(path.resolve())
        if path.is_dir() and is_ctich_root(path):
            available = ctich_patients(path)
            chosen = available if patients is None else [q for q in available if q in set(patients)]
            out.extend(CacheInput("ctich", resolved, q) for q in chosen)
            continue
        planned = plan_dicom_series(path, strict=strict, allow_secondary_capture=allow_secondary_capture)
        out.extend(planned if planned else [CacheInput("path", resolved, None, window, strict=strict,
                                                       allow_secondary_capture=allow_secondary_capture)])
    return out


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------

def _patient_id(series: CTSeries) -> str:
    pid = series.meta.get("patient_id")
    return str(pid) if pid else series.study_instance_uid


def _slice_rows(series: CTSeries, scan_id: str, patient_id: str) -> list[dict[str, Any]]:
    z_known = not math.isnan(float(series.spacing_mm[0]))
    return [{"slice_id": uid, "scan_id": scan_id, "patient_id": patient_id, "slice_index": i,
             "z_mm": float(series.positions_mm[i]) if z_known else float("nan")}
            for i, uid in enumerate(series.sop_instance_uids)]


def _process_input(item: CacheInput, out: str, cfg_dict: dict[str, Any], skip_scan_ids: frozenset[str],
                   decode_workers: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Worker: decode one input, preprocess and write each new series; return (entries, slice rows)."""
    from ichd.preprocessing.pipeline import preprocess_series

    cfg = PreprocessConfig.from_dict(cfg_dict)
    entries: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for series in item.load(decode_workers):
        scan_id = series.series_instance_uid
        if scan_id in skip_scan_ids:
            log.warning("series %s from %s is already in the cache (from another input); skipped", scan_id,
                        item.path)
            continue
        arr = preprocess_series(series, cfg)
        rel = f"{SERIES_DIR}/{safe_file_stem(scan_id)}.npy"
        with atomic_path(Path(out) / rel) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
            n_bytes, digest = tmp.stat().st_size, sha256_file(tmp)  # of the very bytes renamed into place
        patient_id = _patient_id(series)
        entries.append({
            "scan_id": scan_id, "patient_id": patient_id, "study_instance_uid": series.study_instance_uid,
            "n_slices": int(arr.shape[0]), "file": rel, "bytes": n_bytes, "sha256": digest,
            "source": series.source, "source_kind": series.source_kind,
            "input": item.key, "shape": list(arr.shape), "dtype": str(arr.dtype),
            "warnings": [w.to_dict() for w in series.warnings],
        })
        rows.extend(_slice_rows(series, scan_id, patient_id))
    return entries, rows


def array_problem(root: Path, entry: dict[str, Any], *, checksum: bool = True) -> str | None:
    """Why the array file of manifest ``entry`` under ``root`` cannot be trusted (missing, another size than
    recorded, or with ``checksum`` another sha256), or ``None`` when it matches. Entries of caches written before
    sizes and digests were recorded are only checked for presence."""
    path = root / entry["file"]
    try:
        size = path.stat().st_size
    except OSError:
        return "the file is missing"
    if not path.is_file():
        return "not a regular file"
    expected = entry.get("bytes")
    if expected is not None and size != int(expected):
        return f"{size} bytes where {int(expected)} were written (truncated or damaged)"
    if checksum and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        return "its sha256 differs from the one recorded when it was written (damaged)"
    return None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


class NoReadableSlice(InputError):
    """One DICOM series of a folder with several decoded to nothing (every file of it was skipped).

    Like :func:`ichd.io.read_ct`, which skips such files with a warning when other series remain, the build records
    the series as done and empty, warns, and goes on: the command does not fail for it (``BuildSummary.empty``).
    """


@dataclass
class BuildSummary:
    """What :func:`build_cache` did."""

    out: Path
    written: int = 0
    skipped_inputs: int = 0
    slices_written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: series of multi-series folders with no readable slice (recorded as done, nothing cached)
    empty: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    total_series: int = 0
    total_slices: int = 0


def _empty_or_unstarted(out: Path) -> bool:
    """True for an empty folder, or what a build killed before its first manifest left (temporary files, an empty
    ``series/``, a slices.csv without rows)."""
    import fnmatch

    from ichd.utils.files import TEMP_GLOB

    for p in out.iterdir():
        if fnmatch.fnmatch(p.name, TEMP_GLOB):
            continue
        if p.name == SERIES_DIR and p.is_dir() and all(fnmatch.fnmatch(q.name, TEMP_GLOB) for q in p.iterdir()):
            continue
        if p.name == SLICES and p.is_file() and p.stat().st_size <= len(",".join(SLICE_COLUMNS)) + 2:  # header
            continue
        return False
    return True


class _ManifestWriter:
    """Holds the manifest and slice table in memory, journals every finished unit and rewrites both files
    atomically (see :meth:`add`)."""

    def __init__(self, out: Path, cfg: PreprocessConfig, *, verify: bool = False) -> None:
        self.out = out
        self.cfg = cfg
        self.verify = verify
        path = out / MANIFEST
        if path.is_file():
            try:
                self.manifest = json.loads(path.read_text(encoding="utf-8"))
                old = PreprocessConfig.from_dict(self.manifest["preprocess"])
            except (ValueError, KeyError, IchdError) as e:
                raise InputError(f"{path} is not a valid ichd cache manifest ({e})",
                                 hint="pass an empty or new --out folder") from e
            if old.cache_key() != cfg.cache_key():
                raise InputError(
                    f"the cache in {str(out)!r} was built with different preprocessing settings "
                    f"({old.cache_key()} vs {cfg.cache_key()})",
                    hint="use another --out folder, or the same settings to resume")
            self.manifest["preprocess"] = cfg.to_dict()
        else:
            if out.exists() and not _empty_or_unstarted(out):
                raise InputError(f"{str(out)!r} exists, is not empty and is not an ichd cache",
                                 hint="pass a new or empty --out folder")
            self.manifest = {"version": CACHE_VERSION, "preprocess": cfg.to_dict(), "inputs": [], "series": []}
        self._last_flush = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        if (out / SLICES).is_file():
            import pandas as pd

            self.rows = pd.read_csv(out / SLICES, dtype={"slice_id": str, "scan_id": str, "patient_id": str}
                                    ).to_dict("records")
            listed = self.scan_ids  # rows of series the manifest does not list: written just before a kill
            self.rows = [r for r in self.rows if r["scan_id"] in listed]
        if out.is_dir():  # a killed run's half-written files (never read: only renamed files are)
            removed = remove_stale_temps(out) + remove_stale_temps(out / SERIES_DIR)
            if removed:
                log.info("%s: removed %d temporary file(s) of an interrupted run", out, removed)
        journaled = self._replay_journal()
        self._drop_damaged(journaled)
        if journaled is not None or not path.is_file():
            self.flush()  # the folder is a cache from the start: a run killed before its first unit resumes

    def _replay_journal(self) -> set[str] | None:
        """Take over the units a killed run journaled after its last rewrite; the scan ids taken over, or ``None``
        when there was no journal (else the caller rewrites the files, which deletes it)."""
        journal = self.out / JOURNAL
        if not journal.is_file():
            return None
        taken: set[str] = set()
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
                key, entries, rows = rec["key"], list(rec["entries"]), list(rec["rows"])
            except (ValueError, KeyError, TypeError):
                log.info("%s: ignored a journal line cut short by an interrupted run", journal)
                continue
            if key not in self.done:
                self._record(key, entries, rows)
                taken.update(str(e.get("scan_id")) for e in entries)
        if taken:
            log.info("%s: took over %d series finished by an interrupted run", self.out, len(taken))
        return taken

    def _drop_damaged(self, journaled: set[str] | None) -> None:
        """Forget the units whose array is missing, truncated or corrupted, or whose slice rows are incomplete (a
        run killed between writing slices.csv and manifest.json), so they are built again. Sizes are checked for
        every array; sha256 for the ``journaled`` series and, with :attr:`verify`, for all (it reads every file)."""
        n_rows: dict[str, int] = {}
        for r in self.rows:
            n_rows[r["scan_id"]] = n_rows.get(r["scan_id"], 0) + 1
        lost_inputs: set[str] = set()
        for e in self.manifest["series"]:
            checksum = self.verify or (journaled is not None and e["scan_id"] in journaled)
            problem = array_problem(self.out, e, checksum=checksum)
            if problem is None and n_rows.get(e["scan_id"], 0) != int(e["n_slices"]):
                problem = f"{n_rows.get(e['scan_id'], 0)} of its {e['n_slices']} slice rows are in {SLICES}"
            if problem is not None:
                log.warning("cached series %s (%s): %s; its input is built again", e["scan_id"], e["file"], problem)
                lost_inputs.add(e["input"])
        if lost_inputs:
            self.manifest["series"] = [e for e in self.manifest["series"] if e["input"] not in lost_inputs]
            self.manifest["inputs"] = [k for k in self.manifest["inputs"] if k not in lost_inputs]
            keep = {e["scan_id"] for e in self.manifest["series"]}
            self.rows = [r for r in self.rows if r["scan_id"] in keep]

    @property
    def done(self) -> set[str]:
        return set(self.manifest["inputs"])

    @property
    def scan_ids(self) -> frozenset[str]:
        return frozenset(e["scan_id"] for e in self.manifest["series"])

    def add(self, key: str, entries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        """Record a finished unit; series already recorded (the same series reached from two inputs) are dropped.
        The unit is appended to the journal at once; the two files are rewritten at most every
        :data:`FLUSH_SECONDS` (and by :meth:`flush` at the end), so big caches do not rewrite a growing slices.csv
        after every series. After a crash the next build takes the journaled units over."""
        self._record(key, entries, rows)
        with open(self.out / JOURNAL, "a", encoding="utf-8") as f:  # one line per unit: a kill cuts at most it
            f.write(json.dumps({"key": key, "entries": entries, "rows": rows}) + "\n")
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def _record(self, key: str, entries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        known = self.scan_ids
        fresh = [e for e in entries if e["scan_id"] not in known]
        fresh_ids = {e["scan_id"] for e in fresh}
        self.manifest["series"].extend(fresh)
        self.manifest["inputs"].append(key)
        self.rows.extend(r for r in rows if r["scan_id"] in fresh_ids)

    def order_by(self, keys: Sequence[str]) -> None:
        """Order the recorded units, their series and their slice rows by ``keys`` (this build's units, in input
        order); units recorded by earlier runs with other inputs come first, as recorded. So the files do not depend
        on which worker finished first or where a run was resumed."""
        rank = {k: i for i, k in enumerate(keys)}
        self.manifest["inputs"].sort(key=lambda k: rank.get(k, -1))
        self.manifest["series"].sort(key=lambda e: rank.get(e["input"], -1))
        scan_rank = {e["scan_id"]: rank.get(e["input"], -1) for e in self.manifest["series"]}
        self.rows.sort(key=lambda r: scan_rank.get(r["scan_id"], -1))

    def flush(self) -> None:
        import pandas as pd

        self._last_flush = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(self.rows, columns=list(SLICE_COLUMNS))
        with atomic_path(self.out / SLICES) as tmp:
            table.to_csv(tmp, index=False)
        atomic_write_text(self.out / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
        (self.out / JOURNAL).unlink(missing_ok=True)  # everything it held is in the two files now


def build_cache(inputs: Iterable[str | os.PathLike[str] | CacheInput], out: str | os.PathLike[str],
                cfg: PreprocessConfig | None = None, *, workers: int | None = None,
                window: tuple[float, float] | None = None, patients: Sequence[int] | None = None,
                strict: bool = False, allow_secondary_capture: bool = False, scheduler: str | None = None,
                dask_workers: int | None = None, verify: bool = False) -> BuildSummary:
    """Preprocess ``inputs`` (paths or :class:`CacheInput`) into the cache folder ``out``.

    Skips inputs already in the cache with the same settings; refuses (:class:`InputError`) to mix settings or
    to write into a non-empty folder that is not a cache. ``workers`` processes run in parallel (default:
    ``min(4, cpu count)``; 0 or 1 runs in this process). With ``scheduler`` (a Dask scheduler address, or
    ``"local"``) or ``dask_workers`` (the size of a local Dask cluster, default ``workers``) the units run as tasks on
    Dask instead (:mod:`ichd.preprocessing.dask_backend`). An input that fails to read is recorded in
    ``summary.failed`` and the others go on. ``window`` is passed to ``read_ct`` for windowed PNG/JPG inputs;
    ``strict`` (an input fails at its first broken file) and ``allow_secondary_capture`` to the DICOM reader.
    ``verify``: before resuming, check the sha256 of every array already in the cache, not only its size (a damaged
    one is built again).
    """
    from ichd.utils.progress import progress_bar

    t0 = time.perf_counter()
    cfg = cfg or PreprocessConfig()
    out = Path(out)
    items: list[CacheInput] = []
    paths: list[str | os.PathLike[str]] = []
    for x in inputs:
        (items if isinstance(x, CacheInput) else paths).append(x)  # type: ignore[arg-type]
    items.extend(expand_inputs(paths, window=window, patients=patients, strict=strict,
                               allow_secondary_capture=allow_secondary_capture))
    if not items:
        raise InputError("nothing to preprocess: no inputs given", hint="pass CT folders, files or a CT-ICH root")
    dask_target = None
    if scheduler is not None or dask_workers is not None:
        from ichd.preprocessing.dask_backend import resolve_target

        dask_target = resolve_target(scheduler, dask_workers, workers)
    writer = _ManifestWriter(out, cfg, verify=verify)
    (out / SERIES_DIR).mkdir(parents=True, exist_ok=True)
    summary = BuildSummary(out=out)
    done = writer.done
    todo = [it for it in items if it.key not in done]
    summary.skipped_inputs = len(items) - len(todo)
    n_workers = min(4, os.cpu_count() or 1) if workers is None else max(0, int(workers))
    cfg_dict = cfg.to_dict()
    bar = progress_bar(desc="preprocessing", total=len(todo), unit="input")

    def record(item: CacheInput, result: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
        entries, rows = result
        writer.add(item.key, entries, rows)
        summary.written += len(entries)
        summary.slices_written += len(rows)
        bar.set_postfix_str(f"{summary.slices_written} slices", refresh=False)
        bar.update(1)

    def fail(item: CacheInput, err: BaseException) -> None:
        msg = err.message if isinstance(err, IchdError) else f"{type(err).__name__}: {err}"
        if isinstance(err, NoReadableSlice):
            log.warning("skipped %s: %s", item.where, msg)
            writer.add(item.key, [], [])  # done: a rerun does not try it again
            summary.empty.append((item.where, msg))
            bar.update(1)
            return
        log.error("failed to preprocess %s: %s", item.where, msg)
        summary.failed.append((item.where, msg))
        bar.update(1)

    try:
        if dask_target is not None:
            if todo:
                from ichd.preprocessing.dask_backend import run_units

                run_units(todo, str(out.resolve()), cfg_dict, lambda: writer.scan_ids, record, fail,
                          address=dask_target[0], n_workers=dask_target[1])
        elif n_workers <= 1 or len(todo) <= 1:
            for item in todo:
                try:
                    record(item, _process_input(item, str(out), cfg_dict, writer.scan_ids, None))
                except (IchdError, OSError, ValueError) as e:
                    fail(item, e)
        else:
            with ProcessPoolExecutor(max_workers=n_workers, initializer=_init_worker) as pool:
                pending: dict[Future, CacheInput] = {}
                queue = list(todo)
                while queue or pending:
                    while queue and len(pending) < 2 * n_workers:
                        item = queue.pop(0)
                        # one decoder per pool process: the pool already uses the cores
                        pending[pool.submit(_process_input, item, str(out), cfg_dict, writer.scan_ids, 1)] = item
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        item = pending.pop(fut)
                        try:
                            record(item, fut.result())
                        except (IchdError, OSError, ValueError) as e:
                            fail(item, e)
    finally:
        bar.close()
        writer.order_by([it.key for it in items])
        writer.flush()
    summary.total_series = len(writer.manifest["series"])
    summary.total_slices = len(writer.rows)
    summary.seconds = time.perf_counter() - t0
    return summary


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------

class Cache:
    """A read-only view of a cache folder. Arrays are memory-mapped and opened lazily (fork-safe).

    Each array's file size is checked against the manifest when it is opened; with ``verify`` its sha256 too (reads
    the whole file once per process)."""

    def __init__(self, root: Path, manifest: dict[str, Any], slices: Any, *, verify: bool = False) -> None:
        self.root = root
        self.verify = verify
        self.manifest = manifest
        self.config = PreprocessConfig.from_dict(manifest["preprocess"])
        self.series: dict[str, dict[str, Any]] = {e["scan_id"]: e for e in manifest["series"]}
        #: pandas DataFrame indexed by slice_id with scan_id, patient_id, slice_index, z_mm.
        self.slices = slices
        self._arrays: dict[str, np.ndarray] = {}
        self._rows_by_scan: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.series)

    def __contains__(self, scan_id: object) -> bool:
        return scan_id in self.series

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r}, {len(self.series)} series, {len(self.slices)} slices)"

    @property
    def scan_ids(self) -> list[str]:
        """Scan ids, sorted (so datasets built from them are deterministic)."""
        return sorted(self.series)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def array(self, scan_id: str) -> np.ndarray:
        """The scan's ``(z, C, S, S)`` array, memory-mapped read-only."""
        arr = self._arrays.get(scan_id)
        if arr is None:
            try:
                entry = self.series[scan_id]
            except KeyError:
                raise InputError(f"scan {scan_id!r} is not in the cache at {str(self.root)!r}") from None
            path = self.root / entry["file"]
            problem = array_problem(self.root, entry, checksum=self.verify)
            if problem is not None:
                raise InputError(f"cached array {path} cannot be used: {problem}",
                                 hint="run the same ichd preprocess command again: it rebuilds damaged arrays")
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise InputError(f"cannot read cached array {path}: {e}",
                                 hint="rebuild the cache with ichd preprocess") from e
            self._arrays[scan_id] = arr
        return arr

    def slice_image(self, slice_id: str) -> np.ndarray:
        """One slice ``(C, S, S)`` in the cache dtype (a copy)."""
        try:
            row = self.slices.loc[slice_id]
        except KeyError:
            raise InputError(f"slice {slice_id!r} is not in the cache at {str(self.root)!r}") from None
        return np.array(self.array(row["scan_id"])[int(row["slice_index"])])

    def scan_slices(self, scan_id: str) -> Any:
        """The scan's rows of :attr:`slices`, ordered by ``slice_index`` (inferior -> superior)."""
        if self._rows_by_scan is None:  # one grouping pass, not a scan of the whole table per call
            self._rows_by_scan = {str(k): v for k, v in self.slices.groupby("scan_id", sort=False).indices.items()}
        rows = self.slices.iloc[self._rows_by_scan.get(scan_id, np.empty(0, dtype=np.int64))]
        return rows.sort_values("slice_index")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state


def open_cache(root: str | os.PathLike[str], *, verify: bool = False) -> Cache:
    """Open the cache folder ``root`` written by :func:`build_cache` (:class:`InputError` when it is not one).

    Slice rows of series the manifest does not list (a build killed between writing slices.csv and manifest.json)
    are left out. ``verify``: check each array's sha256 when it is first opened (see :class:`Cache`)."""
    import pandas as pd

    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"{str(root)!r} is not an ichd cache (no {MANIFEST})",
                         hint="build one with: ichd preprocess INPUT --out CACHE")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest.get("preprocess"), dict) or not isinstance(manifest.get("series"), list):
            raise KeyError("preprocess/series")
    except (ValueError, KeyError, AttributeError) as e:
        raise InputError(f"{path} is not a valid cache manifest ({e})", hint="rebuild the cache") from e
    if manifest.get("version") != CACHE_VERSION:
        raise InputError(f"{path} has cache version {manifest.get('version')!r}; this ichd reads {CACHE_VERSION}",
                         hint="rebuild the cache with this version of ichd")
    slices_path = root / SLICES
    if not slices_path.is_file():
        raise InputError(f"{str(root)!r} has no {SLICES}", hint="rebuild the cache")
    slices = pd.read_csv(slices_path, dtype={"slice_id": str, "scan_id": str, "patient_id": str})
    missing = set(SLICE_COLUMNS) - set(slices.columns)
    if missing:
        raise InputError(f"{slices_path} lacks column(s) {sorted(missing)}", hint="rebuild the cache")
    listed = {str(e.get("scan_id")) for e in manifest["series"] if isinstance(e, dict)}
    slices = slices[slices["scan_id"].isin(listed)]
    return Cache(root, manifest, slices.set_index("slice_id", drop=False).rename_axis(None), verify=verify)
