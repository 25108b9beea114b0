"""The job store: studies and their prediction jobs in SQLite (WAL), under the service's data folder.

One row per study (``studies``) and one per job (``jobs``: ``queued`` -> ``running`` -> ``done`` | ``failed``).
Every change is one transaction; a connection is opened per operation (any thread may call), with
``synchronous=FULL`` so that a study acknowledged to a client survives a crash or power loss. Claiming a job is an
``UPDATE ... WHERE status = 'queued'`` inside ``BEGIN IMMEDIATE``, so two workers never run the same job.

Recovery (:meth:`JobStore.recover`, at service start): queued jobs simply stay queued; a job found ``running`` was
interrupted (the process died or was stopped while it ran): it is queued again while it has run fewer than
:data:`~ichd.service.config.MAX_ATTEMPTS` times, and failed with that reason after that.

Ids are ``uuid4().hex`` (32 lowercase hex digits); :func:`valid_id` is the only check URL parameters pass.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ichd.service.config import MAX_ATTEMPTS

DB_NAME = "ichd.sqlite"
SCHEMA_VERSION = 1
STATUSES = ("queued", "running", "done", "failed")
_ID = re.compile(r"[0-9a-f]{32}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    source      TEXT NOT NULL,
    n_files     INTEGER NOT NULL,
    n_bytes     INTEGER NOT NULL,
    summary     TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    study_id    TEXT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
    status      TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_study ON jobs (study_id);
"""


def new_id() -> str:
    """A fresh study or job id: 32 lowercase hex digits."""
    return uuid.uuid4().hex


def valid_id(value: str) -> bool:
    """True when ``value`` is an id as :func:`new_id` makes them (nothing else reaches a path or a query)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


@dataclass
class Job:
    """One prediction job of a study."""

    id: str
    study_id: str
    status: str
    attempts: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None


@dataclass
class Study:
    """One uploaded study and its latest job."""

    id: str
    created_at: float
    source: str
    n_files: int
    n_bytes: int
    job: Job
    summary: list[dict[str, Any]] = field(default_factory=list)


class StudyBusy(Exception):
    """The study's job is running: it cannot be deleted now."""


class JobStore:
    """Studies and jobs in ``DATA/ichd.sqlite`` (see the module docstring)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(self.path, timeout=timeout_s)) as conn:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode ({mode})")
            with conn:
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _tx(self, *, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction on a fresh connection: committed on success, rolled back on error."""
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    # ------------------------------------------------------------------------------------------------ writes

    def create(self, study_id: str, *, source: str, n_files: int, n_bytes: int,
               job_id: str | None = None) -> Job:
        """Insert a study and its queued job (one transaction) and return the job."""
        job = Job(id=job_id or new_id(), study_id=study_id, status="queued", attempts=0, created_at=time.time())
        with self._tx(immediate=True) as conn:
            conn.execute("INSERT INTO studies (id, created_at, source, n_files, n_bytes) VALUES (?, ?, ?, ?, ?)",
                         (study_id, job.created_at, source, int(n_files), int(n_bytes)))
            conn.execute("INSERT INTO jobs (id, study_id, status, attempts, created_at) VALUES (?, ?, ?, 0, ?)",
                         (job.id, study_id, "queued", job.created_at))
        return job

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running (counting the attempt) and return it; None when none is queued."""
        with self._tx(immediate=True) as conn:
            row = conn.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1"
                               ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, "
                         "finished_at = NULL, error = NULL WHERE id = ? AND status = 'queued'",
                         (time.time(), row["id"]))
            return self._job(conn, row["id"])

    def finish(self, job: Job, summary: list[dict[str, Any]]) -> bool:
        """The claimed ``job`` is done; its study gets ``summary`` (scan-level findings).

        False (nothing changed) when the job is no longer in the run that claimed it (released, recovered).
        """
        with self._tx(immediate=True) as conn:
            cur = conn.execute("UPDATE jobs SET status = 'done', finished_at = ?, error = NULL "
                               "WHERE id = ? AND status = 'running' AND started_at = ?",
                               (time.time(), job.id, job.started_at))
            if cur.rowcount:
                conn.execute("UPDATE studies SET summary = ? WHERE id = ?", (json.dumps(summary), job.study_id))
            return cur.rowcount == 1

    def fail(self, job: Job, error: str) -> bool:
        """The claimed ``job`` failed with the one-line reason ``error`` (False as for :meth:`finish`)."""
        with self._tx(immediate=True) as conn:
            cur = conn.execute("UPDATE jobs SET status = 'failed', finished_at = ?, error = ? "
                               "WHERE id = ? AND status = 'running' AND started_at = ?",
                               (time.time(), error, job.id, job.started_at))
            return cur.rowcount == 1

    def release(self, job_id: str) -> bool:
        """Hand a running job back to the queue without counting its attempt (graceful shutdown)."""
        with self._tx(immediate=True) as conn:
            cur = conn.execute("UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0), "
                               "started_at = NULL WHERE id = ? AND status = 'running'", (job_id,))
            return cur.rowcount == 1

    def recover(self, max_attempts: int = MAX_ATTEMPTS) -> tuple[list[str], list[str]]:
        """After a restart: requeue interrupted (running) jobs that may run again, fail the others.

        Returns the ids of the requeued and of the failed jobs.
        """
        requeued: list[str] = []
        failed: list[str] = []
        now = time.time()
        with self._tx(immediate=True) as conn:
            rows = conn.execute("SELECT id, attempts FROM jobs WHERE status = 'running'").fetchall()
            for row in rows:
                if row["attempts"] < max_attempts:
                    conn.execute("UPDATE jobs SET status = 'queued', started_at = NULL WHERE id = ?", (row["id"],))
                    requeued.append(row["id"])
                else:
                    reason = (f"the service stopped while this study was being processed, {row['attempts']} "
                              f"times; it is not retried again — check that the study fits in memory and "
                              f"upload it again")
                    conn.execute("UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                                 (now, reason, row["id"]))
                    failed.append(row["id"])
        return requeued, failed

    def delete_study(self, study_id: str) -> bool:
        """Delete a study and its jobs; False when unknown; :class:`StudyBusy` while its job runs."""
        with self._tx(immediate=True) as conn:
            if conn.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
                return False
            if conn.execute("SELECT 1 FROM jobs WHERE study_id = ? AND status = 'running'", (study_id,)).fetchone():
                raise StudyBusy(study_id)
            conn.execute("DELETE FROM jobs WHERE study_id = ?", (study_id,))
            conn.execute("DELETE FROM studies WHERE id = ?", (study_id,))
            return True

    # ------------------------------------------------------------------------------------------------- reads

    @staticmethod
    def _job_from(row: sqlite3.Row) -> Job:
        return Job(id=row["id"], study_id=row["study_id"], status=row["status"], attempts=row["attempts"],
                   created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
                   error=row["error"])

    def _job(self, conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else self._job_from(row)

    def get_job(self, job_id: str) -> Job | None:
        with self._tx() as conn:
            return self._job(conn, job_id)

    _STUDY_SELECT = ("SELECT s.id AS s_id, s.created_at AS s_created_at, s.source, s.n_files, s.n_bytes, s.summary, "
                     "j.* FROM studies s JOIN jobs j ON j.study_id = s.id "
                     "AND j.created_at = (SELECT MAX(created_at) FROM jobs WHERE study_id = s.id)")

    def _study_from(self, row: sqlite3.Row) -> Study:
        return Study(id=row["s_id"], created_at=row["s_created_at"], source=row["source"], n_files=row["n_files"],
                     n_bytes=row["n_bytes"], job=self._job_from(row),
                     summary=json.loads(row["summary"]) if row["summary"] else [])

    def get_study(self, study_id: str) -> Study | None:
        with self._tx() as conn:
            row = conn.execute(self._STUDY_SELECT + " WHERE s.id = ?", (study_id,)).fetchone()
            return None if row is None else self._study_from(row)

    def list_studies(self, *, limit: int = 100, offset: int = 0) -> list[Study]:
        """Studies, newest first."""
        with self._tx() as conn:
            rows = conn.execute(self._STUDY_SELECT + " ORDER BY s.created_at DESC, s.id LIMIT ? OFFSET ?",
                                (int(limit), int(offset))).fetchall()
            return [self._study_from(r) for r in rows]

    def study_ids(self) -> set[str]:
        with self._tx() as conn:
            return {r["id"] for r in conn.execute("SELECT id FROM studies")}

    def counts(self) -> dict[str, int]:
        """Jobs per status."""
        with self._tx() as conn:
            got = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        return {s: int(got.get(s, 0)) for s in STATUSES}
