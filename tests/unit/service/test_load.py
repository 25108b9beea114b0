"""A small load test of a real ``ichd serve`` process (ichd.testing.service_load): 10 concurrent clients, 60
requests mixing uploads of two synthetic series with reads of jobs, studies, the study list, results and slice
PNGs; nothing lost (every upload accepted, its job done, listed) and nothing mixed up (each result carries its own
upload's series and SOP UIDs; identical inputs give identical probabilities). The tiny test model is enough: the
model is not under test. benchmarks/service_load.py runs the same with the default model and real series."""

from __future__ import annotations

from pathlib import Path

import pytest

from ichd.testing.factories import make_ct_series, write_series

pytestmark = pytest.mark.timeout(180)


def test_concurrent_clients_lose_and_mix_up_nothing(tmp_path: Path, service_bundle: Path, h) -> None:
    from ichd.testing.server import ServeProcess
    from ichd.testing.service_load import LoadPlan, load_upload, run_load

    inputs = []
    for k, (n, z0) in enumerate([(4, 0.0), (5, 40.0)]):
        write_series(tmp_path / f"series{k}", make_ct_series(n, rows=32, columns=32, z0=z0, patient_id=f"LOAD-{k}"))
        inputs.append(load_upload(tmp_path / f"series{k}"))
    assert inputs[0].series_uid != inputs[1].series_uid
    # 6 requests/s: the 60 requests spread over ~10 s, so result and slice reads find done studies
    plan = LoadPlan(clients=10, requests=60, uploads=6, rate_rps=6.0, max_seconds=120, job_timeout_s=120,
                    request_timeout_s=60)
    with ServeProcess(tmp_path / "data", model=str(service_bundle), token=h.TOKEN,
                      log_path=tmp_path / "serve.log") as server:
        report = run_load(server.url, h.TOKEN, inputs, plan)
    assert report.ok, report.summary()
    assert report.requests_done == 60 and report.statuses["upload"] == {"202": 6}
    assert report.jobs["statuses"] == {"done": 6}
    assert set(report.latency_s) >= {"upload", "job", "studies", "result", "slice"}
