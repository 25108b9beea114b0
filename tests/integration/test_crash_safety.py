"""Crash safety with a real ``kill -9``: ``ichd preprocess``, ``ichd train cnn`` and ``ichd serve`` are started as
subprocesses (each in its own process group, so the kill also takes their worker processes, as a crash or an OOM
kill of the machine's job would), killed with SIGKILL while they work, and started again.

* preprocess: the rerun takes over every unit the killed run finished (not rewritten), builds the rest, and the
  cache holds only whole, verified arrays; no temporary file of the killed run is left or read.
* train cnn: the rerun resumes from the last complete ``last.pt`` (the epoch it holds is not trained again); a
  damaged ``last.pt`` is refused with one clear line, never loaded.
* serve: a job killed while it runs is retried after the restart and finishes; killed again on its retry it is
  failed with the reason; a half-written result is never served.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

#: Six small rsna-series series (28-32 slices each, JPEG-LS and RLE).
RSNA_SERIES = ("ID_5f8484c3e0", "ID_9d97cf289b", "ID_d479d9cbaa", "ID_0ab5820b2a", "ID_6254afb327", "ID_99fc6d2b76")
CTICH_PATIENTS = (49, 50, 53, 58)  # 2 with hemorrhage, 2 without


def ichd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ichd", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start(args: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new process group, stdout and stderr to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True,
                                **kwargs)  # type: ignore[call-overload]


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group ``proc`` leads (the command and the worker processes it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)


def wait_until(what: str, predicate: Callable[[], object], proc: subprocess.Popen[bytes] | None, log: Path,
               timeout: float = 120.0) -> object:
    """Poll ``predicate`` every 20 ms until it is truthy; fail when ``proc`` ends first or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def run_to_end(args: list[str], timeout: float = 150.0) -> subprocess.CompletedProcess[str]:
    """Run ``args`` to its end; its output is captured."""
    return subprocess.run(args, check=False, capture_output=True, text=True, env=child_env(), timeout=timeout)


def file_ids(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) per file: an atomic rewrite changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


# ------------------------------------------------------------------------------------------------- preprocess

def journaled_files(cache: Path) -> list[Path]:
    """Array files the killed build recorded: in the manifest, or on a whole line of its journal."""
    from ichd.preprocessing.cache import JOURNAL, MANIFEST

    found = [e["file"] for e in json.loads((cache / MANIFEST).read_text())["series"]]
    journal = cache / JOURNAL
    if journal.is_file():
        for line in journal.read_text().splitlines():
            try:
                found += [e["file"] for e in json.loads(line)["entries"]]
            except ValueError:
                pass  # the line the kill cut
    return [cache / f for f in found]


def test_preprocess_killed_mid_run_resumes_without_redoing_finished_units(data_root: Path, tmp_path: Path) -> None:
    from ichd.preprocessing.cache import JOURNAL, array_problem, open_cache

    src = tmp_path / "rsna"
    for name in RSNA_SERIES:
        shutil.copytree(data_root / "rsna-series" / "dicom" / name, src / name)
    cache = tmp_path / "cache"
    args = ichd_cmd("-q", "preprocess", str(src), "--out", str(cache), "--size", "32", "--workers", "2")
    log = tmp_path / "preprocess.log"

    proc = start(args, log)
    wait_until("two finished units", lambda: (cache / "manifest.json").is_file() and len(journaled_files(cache)) >= 2,
               proc, log)
    kill9(proc)
    finished = journaled_files(cache)
    assert 2 <= len(finished) < len(RSNA_SERIES), "the kill came too late to test a resume"
    before = file_ids(finished)

    done = run_to_end(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert file_ids(finished) == before  # taken over, not rewritten
    built = open_cache(cache, verify=True)  # every array's sha256 checked on load
    assert len(built) == len(RSNA_SERIES)
    for scan_id, entry in built.series.items():
        assert array_problem(cache, entry) is None
        assert built.array(scan_id).shape[0] == entry["n_slices"] == len(built.scan_slices(scan_id))
    assert built.slices["slice_id"].is_unique
    assert not (cache / JOURNAL).exists()
    assert not [p for p in cache.rglob(".*") if p.is_file()], "temporary files left behind"

    # A shard damaged after the fact is found by the next run and rebuilt; the others stay as they are.
    victim = cache / next(iter(built.series.values()))["file"]
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) - 100])
    others = file_ids([cache / e["file"] for e in built.series.values() if cache / e["file"] != victim])
    again = run_to_end(args)
    assert again.returncode == 0 and "wrote 1 series" in again.stdout, again.stdout + again.stderr[-2000:]
    assert victim.read_bytes() == whole and file_ids([cache / f"series/{n}" for n in others]) == others


# ------------------------------------------------------------------------------------------------------ train

@pytest.fixture(scope="module")
def tiny_cache(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig

    out = tmp_path_factory.mktemp("crash-cache") / "ctich-64"
    summary = build_cache([data_root / "ct-ich"], out, PreprocessConfig(image_size=64), workers=0,
                          patients=list(CTICH_PATIENTS))
    assert not summary.failed
    return out


def write_train_config(path: Path, cache: Path, labels: Path, epochs: int = 2) -> Path:
    """A tiny deterministic run: ResNet-18 from scratch at 64 px, no augmentation, 1 thread, 2 folds, validation
    only of the final model (an epoch takes ~3 s on one core)."""
    import yaml

    cfg = {"model": {"name": "resnet18", "pretrained": False},
           "data": {"cache": str(cache), "labels": str(labels), "folds": 2, "num_workers": 0},
           "augment_enabled": False,
           "optim": {"lr_per_epoch": [1e-3] * epochs, "batch_size": 8},
           "seed": 7, "device": "cpu", "threads": 1, "val_batch_size": 32, "val_every": 100, "deterministic": True}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_killed_mid_epoch_resumes_from_last_checkpoint(tiny_cache: Path, data_root: Path,
                                                             tmp_path: Path) -> None:
    import torch

    from ichd.models.checkpoint import read_checkpoint

    config = write_train_config(tmp_path / "cnn.yaml", tiny_cache, data_root / "ct-ich" / "labels.csv")
    run_dir = tmp_path / "run"
    args = ichd_cmd("-v", "train", "cnn", "--config", str(config), "--fold", "0", "--out", str(run_dir))
    log = tmp_path / "train.log"
    last = run_dir / "fold0" / "last.pt"

    proc = start(args, log)
    wait_until("the first epoch's last.pt", last.is_file, proc, log)
    first = file_ids([last])
    time.sleep(0.5)  # well into the second epoch (an epoch takes seconds)
    assert proc.poll() is None and file_ids([last]) == first, "the second epoch ended before the kill"
    kill9(proc)
    epoch1 = read_checkpoint(last)
    assert epoch1["epoch"] == 1  # the complete checkpoint of epoch 1, not a part of epoch 2
    assert not (run_dir / "fold0" / "final.pt").exists()

    resumed = run_to_end(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch 1 of 2" in resumed.stderr
    assert read_checkpoint(last)["epoch"] == 2
    assert not [p for p in (run_dir / "fold0").glob(".*") if p.name != ".lock"]  # no temporary file left

    # Epoch 1 is the killed run's (carried over, not trained again); epoch 2 was trained from its weights. That a
    # resumed run equals an uninterrupted one is tests/unit/training/test_trainer.py::test_resume_equals_uninterrupted.
    history = json.loads((run_dir / "fold0" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == epoch1["trainer"]["history"][0]
    final = read_checkpoint(run_dir / "fold0" / "final.pt")["state_dict"]
    assert any(not torch.equal(final[k], epoch1["state_dict"][k]) for k in final)

    # A damaged last.pt is refused with one line; it is never loaded.
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    refused = run_to_end(args)
    lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("ichd: ")]
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert lines and "cannot resume" in lines[-1] and "--restart" in refused.stderr, refused.stderr[-2000:]


# ------------------------------------------------------------------------------------------------------ serve

SERVE_TOKEN = "crash-test-token-0123456789"


def upload(client: object, folder: Path) -> dict[str, str]:
    files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(folder.iterdir())]
    r = client.post("/v1/studies", files=files)  # type: ignore[attr-defined]
    assert r.status_code == 202, r.text
    return r.json()


def job_status(client: object, job_id: str) -> dict[str, object]:
    r = client.get(f"/v1/jobs/{job_id}")  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    return r.json()


def store_status(data: Path, job_id: str) -> tuple[str, int]:
    """The job's status and attempts as the killed service left them in the store."""
    from ichd.service.store import DB_NAME, JobStore

    job = JobStore(data / DB_NAME).get_job(job_id)
    assert job is not None
    return job.status, job.attempts


def kill_while_running(server: object, client: object, job_id: str, attempt: int) -> None:
    """Wait until the job runs its ``attempt``-th time, let it work a little, then kill -9 the service."""
    def running() -> bool:
        job = job_status(client, job_id)
        return job["status"] == "running" and job["attempts"] == attempt

    wait_until(f"attempt {attempt} of job {job_id}", running, server.proc, server.log_path)  # type: ignore[attr-defined]
    time.sleep(0.3)
    server.kill9()  # type: ignore[attr-defined]
    assert store_status(server.data_dir, job_id) == ("running", attempt), "the job ended before the kill"  # type: ignore[attr-defined]


def not_served(client: object, study_id: str) -> None:
    """No result of the study is served (409: not ready or failed), whatever its folder holds."""
    for url in ("result", "report", "dicom/sr", "slices/0.png"):
        r = client.get(f"/v1/studies/{study_id}/{url}")  # type: ignore[attr-defined]
        assert r.status_code == 409, (url, r.status_code, r.text[:200])


def test_service_killed_while_a_job_runs_retries_it_then_fails_it_with_the_reason(
        data_root: Path, test_bundle: Path, tmp_path: Path) -> None:
    import io

    import pydicom

    from ichd.inference.run import STAGING_PREFIX
    from ichd.testing.server import ServeProcess

    series = {}
    for name in ("ID_9d97cf289b", "ID_d479d9cbaa"):
        series[name] = tmp_path / "in" / name
        shutil.copytree(data_root / "rsna-series" / "dicom" / name, series[name])
    data = tmp_path / "data"
    server = ServeProcess(data, model=str(test_bundle), token=SERVE_TOKEN, log_path=tmp_path / "serve.log",
                          args=("--workers", "1"))
    try:
        # 1st run: two studies queued; the first one's job is killed in its first attempt.
        server.start()
        with server.client() as c:
            first = upload(c, series["ID_9d97cf289b"])
            second = upload(c, series["ID_d479d9cbaa"])
            kill_while_running(server, c, first["job_id"], attempt=1)

        # 2nd run: nothing of the interrupted attempt is served; the retry finishes; the second study is killed.
        server.start()
        with server.client() as c:
            not_served(c, first["study_id"])
            kill_target = second["job_id"]
            wait_until("the retry", lambda: job_status(c, first["job_id"])["status"] in ("done", "failed"),
                       server.proc, server.log_path)
            job = job_status(c, first["job_id"])
            assert (job["status"], job["attempts"]) == ("done", 2), job
            kill_while_running(server, c, kill_target, attempt=1)

        # 3rd run: the second study's retry is killed too.
        server.start()
        with server.client() as c:
            not_served(c, second["study_id"])
            kill_while_running(server, c, kill_target, attempt=2)

        # 4th run: interrupted twice, it is failed with the reason and serves nothing; the first study is whole.
        server.start()
        with server.client() as c:
            job = job_status(c, kill_target)
            assert job["status"] == "failed" and "2 times" in str(job["error"]), job
            not_served(c, second["study_id"])
            r = c.get(f"/v1/studies/{second['study_id']}/result")
            assert "stopped while this study was being processed" in r.json()["error"]
            assert not (data / "studies" / second["study_id"] / "result").exists()

            result = c.get(f"/v1/studies/{first['study_id']}/result")
            assert result.status_code == 200
            doc = result.json()  # whole JSON, of this study's own files
            uids = {p.stem for p in series["ID_9d97cf289b"].iterdir()}  # rsna-series: file name = SOPInstanceUID
            res = doc if isinstance(doc, dict) else doc[0]  # one series: one object
            assert {s["sop_instance_uid"] for s in res["slices"]} == uids
            sr = pydicom.dcmread(io.BytesIO(c.get(f"/v1/studies/{first['study_id']}/dicom/sr").content))
            assert sr.Modality == "SR"
            assert c.get(f"/v1/studies/{first['study_id']}/report").status_code == 200
    finally:
        server.close()
    leftovers = [p for p in (data / "studies").rglob("*") if p.name.startswith((".", STAGING_PREFIX))]
    assert not leftovers, leftovers  # no staged or temporary result file survived a kill
