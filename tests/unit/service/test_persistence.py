"""The job store (SQLite WAL) and recovery: after a restart queued jobs run, interrupted ones are retried once and
then failed with a reason, crash leftovers are cleaned, one service per data folder; nothing accepted is lost."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from ichd.service.store import JobStore, StudyBusy, new_id, valid_id
from ichd.testing.factories import make_ct_series, write_series


def test_store_basics(tmp_path: Path):
    store = JobStore(tmp_path / "ichd.sqlite")
    conn = sqlite3.connect(tmp_path / "ichd.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert store.claim_next() is None
    sid = new_id()
    assert valid_id(sid) and not valid_id(sid.upper()) and not valid_id(sid + "0") and not valid_id("../" + sid[3:])
    job = store.create(sid, source="upload", n_files=3, n_bytes=30)
    assert job.status == "queued" and store.get_study(sid).job.id == job.id
    claimed = store.claim_next()
    assert claimed.id == job.id and claimed.status == "running" and claimed.attempts == 1
    with pytest.raises(StudyBusy):
        store.delete_study(sid)
    assert store.finish(claimed, [{"index": 0}]) and not store.finish(claimed, [])
    study = store.get_study(sid)
    assert study.job.status == "done" and study.summary == [{"index": 0}] and study.n_files == 3
    assert store.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 0}
    assert store.delete_study(sid) and store.get_job(job.id) is None and not store.delete_study(sid)
    # reopening keeps everything
    other = new_id()
    store.create(other, source="dicom", n_files=1, n_bytes=1)
    assert JobStore(tmp_path / "ichd.sqlite").get_study(other).job.status == "queued"


def test_concurrent_claims_never_share_a_job(tmp_path: Path):
    store = JobStore(tmp_path / "ichd.sqlite")
    ids = {store.create(new_id(), source="upload", n_files=1, n_bytes=1).id for _ in range(24)}
    got: list[str] = []
    lock = threading.Lock()

    def claim():
        while (job := store.claim_next()) is not None:
            with lock:
                got.append(job.id)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == sorted(ids)  # each job claimed exactly once


def test_recover_retries_once_then_fails(tmp_path: Path):
    store = JobStore(tmp_path / "ichd.sqlite")
    job = store.create(new_id(), source="upload", n_files=1, n_bytes=1)
    store.claim_next()
    assert store.recover() == ([job.id], [])
    assert store.get_job(job.id).status == "queued"
    claimed = store.claim_next()
    assert claimed.attempts == 2
    assert store.recover() == ([], [job.id])
    failed = store.get_job(job.id)
    assert failed.status == "failed" and "2 times" in failed.error and "not retried" in failed.error
    assert not store.fail(claimed, "late")  # the interrupted run can no longer change it


def test_restart_runs_queued_retries_interrupted_and_fails_twice_interrupted(
        tmp_path: Path, client_for, h, monkeypatch: pytest.MonkeyPatch):
    from ichd.inference import run as predict_run
    from ichd.service.runner import StudyService

    src = tmp_path / "ct"
    files = write_series(src, make_ct_series(3, rows=32, columns=32))
    data = tmp_path / "data"
    # --- the first service instance accepts three studies, then "crashes" with two of them running
    first = StudyService(h.make_config(data, None, workers=0)).open()
    twice = first.submit_study(files)
    first.store.claim_next()
    first.store.recover()  # (an earlier restart)
    assert first.store.claim_next().attempts == 2  # interrupted a second time
    retried = first.submit_study(files)
    assert first.store.claim_next().id == retried.id  # interrupted once
    queued = first.submit_study(files)
    assert [first.store.get_job(j.id).status for j in (twice, retried, queued)] == ["running", "running", "queued"]
    # leftovers of a crash in the middle of an upload
    (data / "tmp" / new_id()).mkdir()
    orphan = data / "studies" / new_id()
    (orphan / "input").mkdir(parents=True)
    (orphan / "input" / "IM0.dcm").write_bytes(b"x")
    first.close()  # no worker ran the claimed jobs: they stay 'running', as after a kill

    # --- the retried study fails again (injected), the queued one runs normally
    real = predict_run.run_predict
    calls: list[str] = []

    def flaky(input_path, opts, *, predictor=None):
        calls.append(Path(input_path).parent.name)
        if retried.study_id in str(input_path):
            raise RuntimeError("simulated crash while predicting")
        return real(input_path, opts, predictor=predictor)

    monkeypatch.setattr(predict_run, "run_predict", flaky)
    client = client_for(data)
    done = h.wait_job(client, queued.id)
    assert done["status"] == "done" and done["attempts"] == 1
    again = h.wait_job(client, retried.id)
    assert again["status"] == "failed" and again["attempts"] == 2
    assert "simulated crash while predicting" in again["error"] and "after an interrupted run" in again["error"]
    lost = client.get(f"/v1/jobs/{twice.id}", headers=h.AUTH).json()
    assert lost["status"] == "failed" and lost["attempts"] == 2 and "stopped while this study" in lost["error"]
    assert sorted(calls) == sorted([retried.study_id, queued.study_id])  # the twice-interrupted one never ran
    assert not orphan.exists() and not any((data / "tmp").iterdir())
    assert client.get(f"/v1/studies/{queued.study_id}/result", headers=h.AUTH).status_code == 200
    assert not (data / "studies" / retried.study_id / "result").exists()  # no partial result of the failure
    # one service per data folder
    from ichd.service.runner import ServiceBusy

    with pytest.raises(ServiceBusy, match="another ichd service"):
        StudyService(h.make_config(data, None, workers=0)).open()


def test_stopping_hands_a_running_job_back(tmp_path: Path, client_for, h, monkeypatch: pytest.MonkeyPatch):
    from ichd.inference import run as predict_run
    from ichd.service.runner import StudyService

    release = threading.Event()
    started = threading.Event()

    def slow(input_path, opts, *, predictor=None):
        started.set()
        release.wait(30)
        raise RuntimeError("finished too late")

    monkeypatch.setattr(predict_run, "run_predict", slow)
    files = write_series(tmp_path / "ct", make_ct_series(2, rows=32, columns=32))
    service = StudyService(h.make_config(tmp_path / "data", None, workers=1, shutdown_grace_s=0.2),
                           predictor_factory=lambda: object())
    service.start()
    try:
        job = service.submit_study(files)
        assert started.wait(30)
        service.close()  # the job is still running after the grace period
        store = JobStore(tmp_path / "data" / "ichd.sqlite")
        back = store.get_job(job.id)
        assert back.status == "queued" and back.attempts == 0  # not counted against its retry
    finally:
        release.set()
        service.close()
    # the abandoned run ends without touching the job
    for t in threading.enumerate():
        if t.name.startswith("ichd-worker"):
            t.join(10)
    assert store.get_job(job.id).status == "queued"


def test_submit_study_copies_files_and_validates(tmp_path: Path, h):
    from ichd.service.errors import UploadRejected
    from ichd.service.runner import StudyService

    files = write_series(tmp_path / "ct", make_ct_series(2, rows=16, columns=16))
    with StudyService(h.make_config(tmp_path / "data", None, workers=0, max_files=2)) as service:
        job = service.submit_study(files)
        stored = sorted(p.name for p in (tmp_path / "data" / "studies" / job.study_id / "input").iterdir())
        assert stored == sorted(p.name for p in files) and all(p.exists() for p in files)  # copied, not moved
        assert service.store.get_study(job.study_id).source == "dicom"
        with pytest.raises(UploadRejected, match="at most 2"):
            service.submit_study(files + files)
        with pytest.raises(UploadRejected, match="no files"):
            service.submit_study([])
        assert len(service.store.study_ids()) == 1 and not any((tmp_path / "data" / "tmp").iterdir())
