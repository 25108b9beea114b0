"""Received DICOM instances on disk, one folder per (Study, Series) Instance UID, until the series is complete.

Layout (under the service's data folder)::

    DATA/dicom/incoming/<study>/<series>/<sop>.dcm

Folder and file names are the UIDs when they are safe file names (``[0-9A-Za-z._-]``, at most 64 characters),
else ``u`` + the SHA-1 of the UID. Each instance is written to a hidden temporary file in its series folder,
flushed (``fsync``) and renamed into place, so a file under its final name is always complete, and the C-STORE
success response is only sent after that (nothing acknowledged is lost). The same SOP instance sent twice
replaces the earlier copy.

A series is *due* when no instance of it has arrived for ``idle_timeout_s`` and none is being written
(:meth:`SeriesStaging.take_due`), or, sooner, when the sender said how many instances the series has (an instance
carrying Number of Series Related Instances (0020,1209)) and that many have been written. While a due series is handed over (:meth:`SeriesStaging.finish`), a new instance
of the same series waits; after the hand-over it starts a new series folder (a late instance becomes a study of
its own). :meth:`SeriesStaging.recover` picks up what a stopped or crashed process left: temporary files are
removed and every non-empty series folder is due again after one more idle timeout, so instances the sender
re-sends after a restart join it.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ichd.service.uploads import fsync_dir, remove_tree

_SAFE = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z._-]{0,63}")
TMP_PREFIX = ".incoming-"
SUFFIX = ".dcm"


def safe_name(uid: str) -> str:
    """``uid`` when it is a safe file name, else ``u`` + its SHA-1 (41 characters)."""
    if _SAFE.fullmatch(uid) and uid not in (".", ".."):
        return uid
    return "u" + hashlib.sha1(uid.encode("utf-8", "surrogatepass")).hexdigest()


class StagingFull(Exception):
    """A series already holds the most instances a study may have."""


@dataclass
class StagedSeries:
    """One series being received: its folder and activity (``received_at`` / ``last_received_at``: wall clock,
    for the service's "receiving" state; the UIDs, sender and description as received, when known)."""

    folder: Path
    last_activity: float
    in_flight: int = 0
    handing_over: bool = False
    instances: set[str] = field(default_factory=set)
    received_at: float = field(default_factory=time.time)
    last_received_at: float = field(default_factory=time.time)
    study_uid: str = ""
    series_uid: str = ""
    calling_ae: str = ""
    description: str = ""
    #: the series' instance count as the sender stated it (None: not stated; the idle timeout completes it)
    expected: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.folder.parent.name, self.folder.name

    def files(self) -> list[Path]:
        """The complete instance files, sorted by name."""
        return sorted(p for p in self.folder.glob(f"*{SUFFIX}") if not p.name.startswith("."))


class SeriesStaging:
    """The staging folders and the per-series idle timers (thread-safe; see the module docstring).

    Args:
        root: ``DATA/dicom/incoming``.
        idle_timeout_s: seconds without a new instance after which a series is complete.
        max_instances: most instances one series may hold (more are refused with :class:`StagingFull`).
        clock: monotonic clock (tests).
    """

    def __init__(self, root: Path, *, idle_timeout_s: float, max_instances: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.idle_timeout_s = float(idle_timeout_s)
        self.max_instances = int(max_instances)
        self._clock = clock
        self._series: dict[tuple[str, str], StagedSeries] = {}
        self._cond = threading.Condition()

    # ------------------------------------------------------------------------------------------------ receive

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes, *, calling_ae: str = "",
              description: str = "", expected: int | None = None) -> Path:
        """Write one instance (Part 10 bytes) durably into its series folder; returns the file. ``calling_ae``
        and ``description`` (the sender's AE title, the Series Description) are kept for :meth:`receiving`;
        ``expected``, the series' instance count when the instance states it, completes the series as soon as
        that many instances are written (the largest count stated wins).

        Raises :class:`StagingFull` when the series is full, :class:`OSError` when the file cannot be written.
        """
        series = self._begin((safe_name(study_uid), safe_name(series_uid)), safe_name(sop_uid))
        with self._cond:
            series.study_uid, series.series_uid = study_uid, series_uid
            series.calling_ae = calling_ae or series.calling_ae
            series.description = description or series.description
            if expected is not None and expected > 0:
                series.expected = max(expected, series.expected or 0)
        try:
            target = series.folder / f"{safe_name(sop_uid)}{SUFFIX}"
            tmp = series.folder / f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{target.name}"
            try:
                with open(tmp, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(series.folder)
            return target
        finally:
            self._end(series)

    def _begin(self, key: tuple[str, str], instance: str) -> StagedSeries:
        with self._cond:
            while key in self._series and self._series[key].handing_over:
                self._cond.wait()
            series = self._series.get(key)
            if series is None:
                folder = self.root.joinpath(*key)
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                series = StagedSeries(folder=folder, last_activity=self._clock(),
                                      instances={p.stem for p in folder.glob(f"*{SUFFIX}")
                                                 if not p.name.startswith(".")})
                self._series[key] = series
            if instance not in series.instances and len(series.instances) >= self.max_instances:
                raise StagingFull(f"series folder {key[1]} already holds {len(series.instances)} instances")
            series.instances.add(instance)
            series.in_flight += 1
            series.last_activity = self._clock()
            series.last_received_at = time.time()
            return series

    def _end(self, series: StagedSeries) -> None:
        with self._cond:
            series.in_flight -= 1
            series.last_activity = self._clock()
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------------------ hand over

    def take_due(self) -> list[StagedSeries]:
        """The series idle for ``idle_timeout_s`` (or holding the instance count the sender stated) with nothing in
        flight, now marked as being handed over.

        Call :meth:`finish` for each of them.
        """
        now = self._clock()
        with self._cond:
            due = [s for s in self._series.values()
                   if not s.handing_over and s.in_flight == 0
                   and (now - s.last_activity >= self.idle_timeout_s
                        or (s.expected is not None and len(s.instances) >= s.expected))]
            for s in due:
                s.handing_over = True
            return due

    def finish(self, series: StagedSeries, *, handed_over: bool) -> None:
        """End the hand-over: remove the folder (``handed_over``) or keep it, due again after another idle timeout."""
        with self._cond:
            try:
                if handed_over:
                    remove_tree(series.folder)
                    self._series.pop(series.key, None)
                    _remove_if_empty(series.folder.parent)
                else:
                    series.last_activity = self._clock()
            finally:
                series.handing_over = False
                self._cond.notify_all()

    def discard(self, series: StagedSeries) -> None:
        """Forget a series whose folder the caller moved away (during its hand-over)."""
        with self._cond:
            self._series.pop(series.key, None)
            series.handing_over = False
            _remove_if_empty(series.folder.parent)
            self._cond.notify_all()

    # ------------------------------------------------------------------------------------------------ state

    def recover(self) -> int:
        """Register what an earlier run left (see the module docstring); returns the series found."""
        found = 0
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._cond:
            for study in sorted(p for p in self.root.iterdir() if p.is_dir()):
                for folder in sorted(p for p in study.iterdir() if p.is_dir()):
                    for tmp in folder.glob(f"{TMP_PREFIX}*"):
                        tmp.unlink(missing_ok=True)
                    names = {p.stem for p in folder.glob(f"*{SUFFIX}") if not p.name.startswith(".")}
                    if not names:
                        remove_tree(folder)
                        continue
                    key = (study.name, folder.name)
                    if key not in self._series:
                        self._series[key] = StagedSeries(folder=folder, last_activity=self._clock(),
                                                         instances=names)
                        found += 1
                _remove_if_empty(study)
        return found

    def receiving(self) -> list[dict[str, object]]:
        """The series being received, oldest first: UIDs (the folder names for series an earlier run left),
        ``n_instances``, ``received_at`` / ``last_instance_at`` (epoch seconds), ``calling_ae``,
        ``series_description``, ``expected_instances`` (the count the sender stated, or None), and
        ``complete_in_s``: seconds until the idle timeout completes the series if nothing more arrives (0 while it
        is being handed over)."""
        now = self._clock()
        with self._cond:
            out = []
            for s in sorted(self._series.values(), key=lambda s: s.received_at):
                idle = 0.0 if s.in_flight else now - s.last_activity
                out.append({"study_instance_uid": s.study_uid or s.key[0],
                            "series_instance_uid": s.series_uid or s.key[1],
                            "n_instances": len(s.instances), "received_at": s.received_at,
                            "last_instance_at": s.last_received_at, "calling_ae": s.calling_ae,
                            "series_description": s.description, "expected_instances": s.expected,
                            "complete_in_s": 0.0 if s.handing_over else max(0.0, self.idle_timeout_s - idle)})
            return out

    def pending(self) -> int:
        """Series received but not handed over yet."""
        with self._cond:
            return len(self._series)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
