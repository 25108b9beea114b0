"""DICOMweb on ``ichd serve`` with a real client (dicomweb-client over HTTP to uvicorn on a loopback port): STOW-RS
of a real RSNA series -> the job -> QIDO-RS finds the study and its series -> WADO-RS returns the SR and the
Secondary Captures that reference the source; the token is needed everywhere; bad input gets a clear 4xx."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: 34 slices, with hemorrhage (rsna-series/README.md); its files hold the SOP Class UID in the file meta only.
SERIES = "ID_7518324893"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_CLASSES = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.4"}  # (multi-frame true colour) SC


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, service_bundle: Path, h: Any) -> Iterator[dict[str, Any]]:
    """``ichd serve``'s app (tiny test model) under uvicorn on a free loopback port, in a thread."""
    import uvicorn

    from ichd.service.app import create_app
    from ichd.service.runner import StudyService

    service = StudyService(h.make_config(tmp_path_factory.mktemp("dicomweb") / "data", service_bundle))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "service": service}
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def _client(server: dict[str, Any], h: Any, token: str | None = None) -> Any:
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(f"{server['url']}/dicomweb", headers={"Authorization": f"Bearer {token or h.TOKEN}"})


def _wait_done(server: dict[str, Any], h: Any, job_id: str, timeout: float = 50.0) -> dict[str, Any]:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{server['url']}/v1/jobs/{job_id}", headers=h.AUTH, timeout=10).json()
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.1)


def _stow(server: dict[str, Any], h: Any, datasets: list[Any]) -> tuple[Any, dict[str, str]]:
    """store_instances through the real client; the response data set and the ichd headers of the response."""
    client = _client(server, h)
    seen: dict[str, str] = {}
    hook = client._session.hooks.setdefault("response", [])  # the client's own requests session

    def record(r: Any, *_args: Any, **_kwargs: Any) -> None:
        seen.update({name: r.headers.get(name, "") for name in ("X-Ichd-Study-Id", "X-Ichd-Job-Id")})

    hook.append(record)
    try:
        return client.store_instances(datasets), seen
    finally:
        hook.remove(record)


def test_stow_qido_wado_round_trip_with_dicomweb_client(server, h, data_root: Path) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    files = sorted((data_root / "rsna-series" / "dicom" / SERIES).glob("*.dcm"))
    assert len(files) == 34
    datasets = []
    for f in files:
        ds = pydicom.dcmread(f)
        assert "SOPClassUID" not in ds  # the RSNA files: SOP Class in the file meta only
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID  # as a PACS holds it
        # the RSNA pseudo-UIDs (ID_...) are not DICOM UIDs, so ichd's results would go to a new study: give the
        # series valid UIDs (derived from the old ones), as a PACS that re-identifies it would
        for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, name, generate_uid(entropy_srcs=[str(ds.get(name))]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        datasets.append(ds)
    study_uid, series_uid = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    t0 = time.monotonic()
    response, ids = _stow(server, h, datasets)
    stored = {str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in datasets}
    assert response.RetrieveURL == f"{server['url']}/dicomweb/studies/{study_uid}"
    assert "FailedSOPSequence" not in response
    job = _wait_done(server, h, ids["X-Ichd-Job-Id"])
    assert job["status"] == "done", job
    print(f"STOW + analysis of {len(files)} slices: {time.monotonic() - t0:.1f} s")
    import requests

    study = requests.get(f"{server['url']}/v1/studies/{ids['X-Ichd-Study-Id']}", headers=h.AUTH, timeout=10).json()
    assert study["source"] == "dicomweb" and study["n_files"] == 34

    client = _client(server, h)
    found = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
    assert [pydicom.Dataset.from_json(s).StudyInstanceUID for s in found] == [study_uid]
    assert client.search_for_studies(search_filters={"StudyInstanceUID": "1.2.3.4"}) == []
    series = [pydicom.Dataset.from_json(s) for s in client.search_for_series(study_uid)]
    by_modality = {str(s.Modality): s for s in series}
    assert set(by_modality) == {"CT", "SR", "OT"}, [s.Modality for s in series]
    assert by_modality["CT"].SeriesInstanceUID == series_uid
    assert by_modality["CT"].NumberOfSeriesRelatedInstances == 34
    assert "RetrieveURL" not in by_modality["CT"]  # the source is not served
    assert by_modality["SR"].NumberOfSeriesRelatedInstances == 1
    assert by_modality["OT"].SeriesDescription.startswith("ichd evidence overlays")

    sr_series = by_modality["SR"].SeriesInstanceUID
    (sr,) = client.retrieve_series(study_uid, sr_series)
    assert sr.SOPClassUID == SR_CLASS and sr.StudyInstanceUID == study_uid
    scs = client.retrieve_series(study_uid, by_modality["OT"].SeriesInstanceUID)
    assert len(scs) == by_modality["OT"].NumberOfSeriesRelatedInstances >= 1
    for sc in scs:  # each Secondary Capture is of one stored source slice
        assert str(sc.SOPClassUID) in SC_CLASSES and sc.StudyInstanceUID == study_uid
        (source,) = sc.SourceImageSequence
        assert str(source.ReferencedSOPInstanceUID) in stored
    # the SR references its Secondary Captures (and, for a positive call, source slices) and nothing else
    referenced = {str(e.value) for e in sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert {str(sc.SOPInstanceUID) for sc in scs} <= referenced <= stored | {str(sc.SOPInstanceUID) for sc in scs}
    one = client.retrieve_instance(study_uid, sr_series, str(sr.SOPInstanceUID))
    assert one.SOPInstanceUID == sr.SOPInstanceUID

    r = requests.get(f"{server['url']}/dicomweb/studies/{study_uid}/series/{series_uid}", headers=h.AUTH, timeout=10)
    assert r.status_code == 404 and "source series" in r.json()["error"]


def test_every_dicomweb_endpoint_needs_the_token(server, h) -> None:
    import requests
    from requests import HTTPError

    uid = "1.2.826.0.1.3680043.8.498.1"
    base = f"{server['url']}/dicomweb"
    for method, path in [("POST", "/studies"), ("POST", f"/studies/{uid}"), ("GET", "/studies"),
                         ("GET", f"/studies/{uid}/series"), ("GET", f"/studies/{uid}"),
                         ("GET", f"/studies/{uid}/series/{uid}"), ("GET", f"/studies/{uid}/series/{uid}/instances/{uid}")]:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}):
            r = requests.request(method, base + path, headers=headers, timeout=10)
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json()["error"].endswith("bearer token")
    with pytest.raises(HTTPError) as e:
        _client(server, h, token="wrong-token").search_for_studies()
    assert e.value.response.status_code == 401


def test_bad_stow_requests_get_a_clear_4xx_and_store_nothing(server, h, tmp_path: Path) -> None:
    import requests

    from ichd.testing.factories import make_ct_series, write_series

    url = f"{server['url']}/dicomweb/studies"
    before = requests.get(f"{server['url']}/v1/studies", headers=h.AUTH, timeout=10).json()["studies"]
    write_series(tmp_path / "ct", make_ct_series(2, rows=16, columns=16))
    dicom = min((tmp_path / "ct").rglob("*.dcm")).read_bytes()

    def multipart(parts: list[tuple[str, bytes]], boundary: str = "b0undary") -> bytes:
        out = b"".join(f"--{boundary}\r\nContent-Type: {t}\r\n\r\n".encode() + data + b"\r\n" for t, data in parts)
        return out + f"--{boundary}--\r\n".encode()

    related = 'multipart/related; type="application/dicom"; boundary=b0undary'
    cases = [
        ("application/zip", b"PK\x03\x04", 415, "unsupported content type"),
        ('multipart/related; type="application/dicom+json"; boundary=b0undary', b"", 415, "multipart type"),
        ('multipart/related; type="application/dicom"', multipart([("application/dicom", dicom)]), 400, "boundary"),
        (related, b"", 400, "empty"),
        (related, b"--other\r\n\r\nxx\r\n--other--\r\n", 400, "boundary"),
        (related, multipart([("application/dicom", dicom)])[:-30], 400, "closing boundary"),
        (related, multipart([("application/dicom", dicom), ("application/dicom", b"not dicom at all")]), 409,
         "part 2 is not a DICOM file"),
        (related, multipart([("text/plain", dicom)]), 409, "part 1 is 'text/plain'"),
        (related, multipart([("application/dicom", dicom[:400])]), 409, "part 1 lacks StudyInstanceUID"),
        (related, multipart([("application/dicom", dicom[:-100])]), 409, "part 1 is truncated"),
    ]
    for ctype, body, status, words in cases:
        r = requests.post(url, data=body, headers={**h.AUTH, "Content-Type": ctype}, timeout=10)
        assert r.status_code == status, (ctype, r.status_code, r.text)
        assert words in r.json()["error"], r.json()
        assert r.json()["hint"]
    r = requests.post(f"{url}/1.2.3.4", data=multipart([("application/dicom", dicom)]),
                      headers={**h.AUTH, "Content-Type": related}, timeout=10)
    assert r.status_code == 409 and "not to 1.2.3.4" in r.json()["error"]
    after = requests.get(f"{server['url']}/v1/studies", headers=h.AUTH, timeout=10).json()["studies"]
    assert len(after) == len(before)


def test_bad_qido_and_wado_requests_get_a_clear_4xx(server, h) -> None:
    import requests

    base = f"{server['url']}/dicomweb"
    for path, status, words in [("/studies/not%3Ba%20uid/series", 400, "invalid StudyInstanceUID"),
                                ("/studies?StudyInstanceUID=x/y", 400, "invalid StudyInstanceUID"),
                                ("/studies?limit=-1", 400, "invalid limit"),
                                ("/studies/1.2.3.4/series", 404, "no analysed study"),
                                ("/studies/1.2.3.4", 404, "no analysed study"),
                                ("/studies/1.2.3.4/series/1.2.3.5/instances/1.2", 404, "no analysed study")]:
        r = requests.get(base + path, headers=h.AUTH, timeout=10)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert words in r.json()["error"], r.json()
    r = requests.get(f"{base}/studies?PatientName=DOE", headers=h.AUTH, timeout=10)
    assert r.status_code == 200 and "PatientName" in r.headers["Warning"]
    assert r.headers["Content-Type"].startswith("application/dicom+json")
    r = requests.get(f"{base}/studies/1.2.3.4", headers={**h.AUTH, "Accept": "image/jpeg"}, timeout=10)
    assert r.status_code == 406 and "multipart/related" in r.json()["hint"]


def test_a_series_with_rsna_pseudo_uids_is_stored_and_its_results_sit_in_a_new_study(server, h, data_root: Path) -> None:
    """The RSNA files as they are (``ID_...`` UIDs, not DICOM UIDs): STOW-RS takes them (SOP Class from the file
    meta), QIDO-RS lists the source under its own study and ichd's results under the new study they start."""
    import pydicom
    import requests

    files = sorted((data_root / "rsna-series" / "dicom" / SERIES).glob("*.dcm"))[:12]
    response, ids = _stow(server, h, [pydicom.dcmread(f) for f in files])
    assert len(response.ReferencedSOPSequence) == 12
    assert response.ReferencedSOPSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # from the meta
    assert _wait_done(server, h, ids["X-Ichd-Job-Id"])["status"] == "done"
    study = requests.get(f"{server['url']}/v1/studies/{ids['X-Ichd-Study-Id']}", headers=h.AUTH, timeout=10).json()
    source_study = study["series"][0]["study_instance_uid"]
    assert source_study.startswith("ID_")

    client = _client(server, h)
    client_permissive = type(client)(f"{server['url']}/dicomweb", headers={"Authorization": f"Bearer {h.TOKEN}"},
                                     permissive_uid=True)
    (source,) = [pydicom.Dataset.from_json(s) for s in client_permissive.search_for_series(source_study)]
    assert source.Modality == "CT" and source.NumberOfSeriesRelatedInstances == 12
    sr_path = f"{server['url']}/v1/studies/{ids['X-Ichd-Study-Id']}/dicom/sr"
    sr = pydicom.dcmread(io.BytesIO(requests.get(sr_path, headers=h.AUTH, timeout=10).content))
    assert str(sr.StudyInstanceUID) != source_study
    series = {str(pydicom.Dataset.from_json(s).Modality) for s in client.search_for_series(str(sr.StudyInstanceUID))}
    assert series == {"SR", "OT"}
    (got,) = client.retrieve_series(str(sr.StudyInstanceUID), str(sr.SeriesInstanceUID))
    assert got.SOPInstanceUID == sr.SOPInstanceUID
