"""The service's second-reader plumbing without a BLAST-CT run (that is in
tests/integration/test_second_reader_real.py, slow set): the per-deployment option is checked at start, a running
job reports its progress, and the slice PNG draws a stored label map (here a tiny synthetic one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ichd.testing.factories import make_ct_series, write_series


def test_an_unknown_second_reader_stops_the_start(tmp_path: Path, service_bundle: Path, h: Any):
    from ichd.errors import InputError
    from ichd.service.runner import StudyService

    service = StudyService(h.make_config(tmp_path / "data", service_bundle, second_reader="blastct"))
    with pytest.raises(InputError, match="unknown second reader 'blastct'"):
        service.start()
    assert not service.started


def test_missing_weights_stop_the_start(tmp_path: Path, service_bundle: Path, h: Any):
    pytest.importorskip("blast_ct", reason="the blast-ct extra is not installed")
    from ichd.errors import ModelError
    from ichd.service.runner import StudyService

    service = StudyService(h.make_config(tmp_path / "data", service_bundle, second_reader="blast-ct",
                                         blast_ct_models=tmp_path / "no-weights"))
    with pytest.raises(ModelError, match="BLAST-CT weights folder"):
        service.start()


def test_progress_is_reported_while_running_only(tmp_path: Path, service_bundle: Path, h: Any):
    from ichd.service.app import job_out
    from ichd.service.runner import StudyService
    from ichd.service.store import Job

    service = StudyService(h.make_config(tmp_path / "data", service_bundle))
    report = service._progress_callback("a" * 32)
    report("1.2.3", 4, 9)
    progress = service.progress("a" * 32)
    assert progress == {"stage": "second_reader", "series_instance_uid": "1.2.3", "done": 4, "total": 9}
    assert service.progress("b" * 32) is None
    job = Job(id="a" * 32, study_id="c" * 32, status="running", attempts=1, created_at=0.0, started_at=1.0,
              finished_at=None, error=None)
    assert job_out(job, progress).progress == progress
    done = Job(id="a" * 32, study_id="c" * 32, status="done", attempts=1, created_at=0.0, started_at=1.0,
               finished_at=2.0, error=None)
    assert job_out(done, progress).progress is None


def test_slice_png_draws_a_stored_segmentation(tmp_path: Path, client_for: Any, h: Any):
    src = tmp_path / "ct"
    write_series(src, make_ct_series(4, rows=40, columns=40))
    client = client_for(tmp_path / "data")
    r = client.post("/v1/studies", content=h.zip_folder(src), headers={**h.AUTH, "Content-Type": "application/zip"})
    job = h.wait_job(client, r.json()["job_id"])
    assert job["status"] == "done"
    study = job["study_id"]
    assert client.get(f"/v1/studies/{study}", headers=h.AUTH).json()["series"][0]["second_reader"] is None
    missing = client.get(f"/v1/studies/{study}/slices/1.png?seg=true", headers=h.AUTH)
    assert missing.status_code == 400 and "--second-reader blast-ct" in missing.json()["hint"]
    labels = np.zeros((4, 40, 40), np.uint8)
    labels[1, 10:20, 10:20] = 1
    np.save(client.service.paths(study).segmentation(0), labels)
    plain = client.get(f"/v1/studies/{study}/slices/1.png", headers=h.AUTH)
    drawn = client.get(f"/v1/studies/{study}/slices/1.png?seg=true", headers=h.AUTH)
    empty = client.get(f"/v1/studies/{study}/slices/2.png?seg=true", headers=h.AUTH)
    assert plain.status_code == drawn.status_code == empty.status_code == 200
    from io import BytesIO

    from PIL import Image

    img = np.asarray(Image.open(BytesIO(drawn.content)).convert("RGB"))
    assert tuple(img[10, 10]) == (230, 40, 40)  # the IPH outline, in the overlay's colour
    assert np.asarray(Image.open(BytesIO(plain.content))).ndim == 2  # grey without the overlay
