"""The DICOM node against pynetdicom's own SCU and SCP, in-process: C-ECHO, C-STORE of synthetic series (kept
byte-for-byte in their transfer syntax), one study per series after the idle timeout, predicted exactly like
``ichd predict``; forwarding of the SR and Secondary Captures (and a failed forward that loses nothing); called-AE
and SOP-class checks; recovery after a restart; port errors; no patient identifiers in any log record; the CLI's
one-line errors. The dcmtk tests (storescu/storescp/echoscu/dciodvfy on real data) are in
tests/integration/test_dicom_listener_dcmtk.py."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from ichd.cli.main import run
from ichd.errors import InputError
from ichd.service.dicom_config import DicomNodeConfig, ForwardTarget
from ichd.service.dicom_node import DicomNode, attach_dicom_node
from ichd.service.runner import StudyService
from ichd.testing.factories import JPEG_LOSSLESS_SV1, make_ct_series, make_multiframe_ct, write_series
from ichd.testing.server import free_port

AET = "ICHDTEST"
CT = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_NAME = "Zqxname^Wvsecret"
PATIENT_ID = "PID-5512-QZX"
BIRTH_DATE = "19230417"
STUDY_DATE = "20240229"
SECRETS = ("Zqxname", "Wvsecret", PATIENT_ID, BIRTH_DATE, STUDY_DATE)


@pytest.fixture
def node_for(service_bundle: Path, h: Any) -> Iterator[Callable[..., tuple[StudyService, DicomNode]]]:
    """``node_for(data_dir, settings={...}, **node_config)`` -> a started service (``settings``: ServiceConfig
    overrides) with a DICOM node on a free port."""
    opened: list[StudyService] = []

    def make(data_dir: Path, *, settings: dict[str, Any] | None = None,
             **overrides: Any) -> tuple[StudyService, DicomNode]:
        service = StudyService(h.make_config(data_dir, service_bundle, **(settings or {})))
        kwargs: dict[str, Any] = {"aet": AET, "port": 0, "idle_timeout_s": 0.4, "forward_retry_delay_s": 0.1}
        kwargs.update(overrides)
        node = attach_dicom_node(service, DicomNodeConfig(**kwargs))
        opened.append(service)
        service.start()
        return service, node

    yield make
    for service in reversed(opened):
        service.close()


def send(port: int, files: list[Path], *, called: str = AET, calling: str = "TESTSCU") -> list[int]:
    """C-STORE ``files`` in one association, each in its own transfer syntax; the statuses (-1: not sent)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for sop, ts in sorted({(str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID),
                            str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID))
                           for f in files}):
        ae.add_requested_context(sop, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return [-1] * len(files)
    try:
        return [int(getattr(assoc.send_c_store(f), "Status", -1)) for f in files]
    finally:
        assoc.release()


def echo(port: int, *, called: str = AET, tls: ssl.SSLContext | None = None,
         timeout: float | None = None) -> int | None:
    """C-ECHO status, or None when no association was established (over TLS with the client context ``tls``;
    ``timeout``: the ACSE and network timeouts in seconds, pynetdicom's defaults when None)."""
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    if timeout is not None:
        ae.acse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=(tls, None) if tls is not None else None)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def wait_studies(service: StudyService, n: int, *, timeout: float = 60.0) -> list[Any]:
    """The service's studies once ``n`` of them exist and all their jobs are done or failed."""
    deadline = time.monotonic() + timeout
    while True:
        studies = service.require_store().list_studies()
        if len(studies) >= n and all(s.job.status in ("done", "failed") for s in studies):
            return studies
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(studies)} studies, jobs {[s.job.status for s in studies]} after {timeout} s")
        time.sleep(0.05)


def wait_file(path: Path, *, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not written after {timeout} s")
        time.sleep(0.05)
    return json.loads(path.read_text())


def dataset_bytes(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, Pixel Data bytes as stored) of a file."""
    ds = pydicom.dcmread(path)
    return str(ds.file_meta.TransferSyntaxUID), bytes(ds.PixelData)


class StorageSCP:
    """A pynetdicom storage SCP (the forward destination) collecting what it receives."""

    def __init__(self, aet: str = "DEST") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title=aet)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


# -------------------------------------------------------------------------------------------------- tests

def test_echo_and_the_called_ae_title(tmp_path: Path, node_for) -> None:
    _, node = node_for(tmp_path / "data")
    assert echo(node.port) == 0x0000
    assert echo(node.port, called="SOMEONE") is None  # associations must call this node's AE title


def test_only_allowed_calling_ae_titles_may_associate(tmp_path: Path, node_for, caplog) -> None:
    """--allow-aet: an unknown calling AE title is rejected at association, with the reason in the log; nothing
    of it is stored. An allowed one stores as usual."""
    service, node = node_for(tmp_path / "data", allowed_aets=("CTSCANNER", "PACS"), idle_timeout_s=30.0)
    series = write_series(tmp_path / "s", make_ct_series(2, transfer_syntax=JPEGLSLossless))
    with caplog.at_level(logging.INFO, logger="ichd"):
        assert send(node.port, series, calling="INTRUDER") == [-1, -1]
        assert node.staging.receiving() == [] and not list((tmp_path / "data" / "dicom" / "incoming").rglob("*.dcm"))
        assert send(node.port, series, calling="CTSCANNER") == [0, 0]
    assert node.staging.receiving()[0]["calling_ae"] == "CTSCANNER"
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1 and "'INTRUDER'" in rejected[0] and "is not allowed" in rejected[0]
    assert "CTSCANNER, PACS" in rejected[0]
    assert service.receiving()[0]["source"] == "dicom"


@pytest.mark.parametrize("syntax", [JPEGLSLossless, RLELossless, JPEG_LOSSLESS_SV1, DeflatedExplicitVRLittleEndian])
def test_received_series_is_kept_as_sent_and_predicted_like_ichd_predict(syntax: str, tmp_path: Path, node_for,
                                                                         service_bundle: Path) -> None:
    from ichd.inference.run import PredictOptions, run_predict

    series = write_series(tmp_path / "sent", make_ct_series(5, transfer_syntax=syntax, rows=32, columns=32),
                          shuffle_seed=1)
    service, node = node_for(tmp_path / "data")
    assert send(node.port, series) == [0] * 5
    (study,) = wait_studies(service, 1)
    assert study.job.status == "done" and study.source == "dicom" and study.n_files == 5
    paths = service.paths(study.id)
    got = {pydicom.dcmread(p).SOPInstanceUID: p for p in paths.input.iterdir()}
    for f in series:  # the same transfer syntax and the same compressed bytes as the sender's files
        assert dataset_bytes(got[pydicom.dcmread(f).SOPInstanceUID]) == dataset_bytes(f)
    assert not list((tmp_path / "data" / "dicom" / "incoming").iterdir())  # staging emptied after the hand-over
    listener = json.loads((paths.result / "prediction.json").read_text())
    assert (paths.result / "dicom" / "sr.dcm").is_file() and (paths.result / "report.html").is_file()
    direct = run_predict(tmp_path / "sent", PredictOptions(model=str(service_bundle), device="cpu", formats=("json",),
                                                            out=tmp_path / "direct", gradcam=False, workers=1))
    assert len(direct.results) == 1
    expected = json.loads((tmp_path / "direct" / "prediction.json").read_text())
    assert [s["sop_instance_uid"] for s in listener["slices"]] == [s["sop_instance_uid"] for s in expected["slices"]]
    for a, b in zip(listener["slices"], expected["slices"]):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    assert listener["scan"] == pytest.approx(expected["scan"], abs=1e-6)


def test_one_study_per_series_enhanced_ct_included(tmp_path: Path, node_for) -> None:
    a = write_series(tmp_path / "a", make_ct_series(3, series_uid="1.2.826.0.1.1.1", study_uid="1.2.826.0.1.1"))
    b = write_series(tmp_path / "b", make_ct_series(4, series_uid="1.2.826.0.1.1.2", study_uid="1.2.826.0.1.1"))
    enhanced, _ = make_multiframe_ct(5)
    assert enhanced.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1"
    c = write_series(tmp_path / "c", [enhanced])
    service, node = node_for(tmp_path / "data")
    assert send(node.port, a + b + c) == [0] * 8
    studies = wait_studies(service, 3)
    assert sorted(s.n_files for s in studies) == [1, 3, 4] and all(s.job.status == "done" for s in studies)
    by_files = {s.n_files: s.summary[0] for s in studies}
    assert by_files[3]["series_instance_uid"] == "1.2.826.0.1.1.1" and by_files[4]["n_slices"] == 4
    assert by_files[1]["series_instance_uid"] == enhanced.SeriesInstanceUID and by_files[1]["n_slices"] == 5


def test_non_ct_objects_are_not_accepted(tmp_path: Path, node_for) -> None:
    mr = make_ct_series(1, sop_class="1.2.840.10008.5.1.4.1.1.4", modality="MR")
    files = write_series(tmp_path / "mr", mr)
    _, node = node_for(tmp_path / "data")
    assert send(node.port, files) == [-1]  # no presentation context for MR Image Storage: nothing is sent


def test_instances_without_uids_and_beyond_the_file_limit_are_refused(tmp_path: Path, node_for) -> None:
    no_study = write_series(tmp_path / "a", make_ct_series(1, drop_tags=["StudyInstanceUID"]))
    many = write_series(tmp_path / "b", make_ct_series(3))
    service, node = node_for(tmp_path / "data", settings={"max_files": 2})
    assert send(node.port, no_study) == [0xA900]
    assert send(node.port, many) == [0, 0, 0xA700]  # a study holds at most --max-files files
    (study,) = wait_studies(service, 1)
    assert study.n_files == 2 and study.job.status == "done"


def test_forward_sends_the_sr_and_secondary_captures(tmp_path: Path, node_for) -> None:
    dest = StorageSCP()
    try:
        series = write_series(tmp_path / "s", make_ct_series(4, transfer_syntax=JPEGLSLossless))
        service, node = node_for(tmp_path / "data", forward=ForwardTarget("DEST", "127.0.0.1", dest.port))
        assert send(node.port, series) == [0] * 4
        (study,) = wait_studies(service, 1)
        record = wait_file(service.paths(study.id).root / "forward.json")
    finally:
        dest.close()
    assert record["status"] == "sent" and record["destination"] == f"DEST@127.0.0.1:{dest.port}"
    sent = sorted(f["file"] for f in record["files"] if f["sent"])
    files = sorted(p.relative_to(service.paths(study.id).root).as_posix()
                   for p in (service.paths(study.id).result / "dicom").iterdir())
    assert sent == files and "result/dicom/sr.dcm" in sent and len(sent) >= 2
    modalities = sorted(str(ds.Modality) for ds in dest.received)
    assert modalities.count("SR") == 1 and modalities.count("OT") + modalities.count("CT") == len(files) - 1
    assert not list((tmp_path / "data" / "dicom" / "forward").iterdir())  # nothing pending


def test_a_failed_forward_keeps_the_job_done_and_records_why(tmp_path: Path, node_for, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ichd")
    series = write_series(tmp_path / "s", make_ct_series(3))
    closed = free_port()  # nothing listens there
    service, node = node_for(tmp_path / "data", forward=ForwardTarget("DEST", "127.0.0.1", closed),
                             forward_attempts=2, connect_timeout_s=2)
    assert send(node.port, series) == [0] * 3
    (study,) = wait_studies(service, 1)
    root = service.paths(study.id).root
    deadline = time.monotonic() + 30
    while (record := wait_file(root / "forward.json"))["status"] != "failed":
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    assert record["attempts"] == 2 and record["n_sent"] == 0 and record["n_failed"] >= 2
    assert all(f["error"] for f in record["files"])
    assert service.require_store().get_study(study.id).job.status == "done"
    assert (root / "result" / "dicom" / "sr.dcm").is_file() and (root / "result" / "prediction.json").is_file()
    # the node writes forward.json first and logs the outcome just after it: wait for the line, not only the file
    while "failed after 2 attempt(s)" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "failed after 2 attempt(s)" in caplog.text


def test_series_left_by_a_stopped_node_are_analysed_after_a_restart(tmp_path: Path, node_for) -> None:
    series = write_series(tmp_path / "s", make_ct_series(3))
    data = tmp_path / "data"
    service, node = node_for(data, idle_timeout_s=60)
    assert send(node.port, series) == [0] * 3
    service.close()  # stopped before the series was complete
    left = list((data / "dicom" / "incoming").rglob("*.dcm"))
    assert len(left) == 3
    service, _ = node_for(data, idle_timeout_s=0.3)
    (study,) = wait_studies(service, 1)
    assert study.job.status == "done" and study.n_files == 3
    assert not list((data / "dicom" / "incoming").rglob("*.dcm"))


def test_the_http_api_lists_studies_received_over_dicom(tmp_path: Path, service_bundle: Path, h: Any) -> None:
    """``ichd serve --dicom-port``: one service, the HTTP API and the DICOM node on it; closing the app (its
    lifespan closes the service) stops the node first."""
    from fastapi.testclient import TestClient

    from ichd.service.app import create_app

    service = StudyService(h.make_config(tmp_path / "data", service_bundle))
    node = attach_dicom_node(service, DicomNodeConfig(aet=AET, port=0, idle_timeout_s=0.3))
    series = write_series(tmp_path / "s", make_ct_series(3, transfer_syntax=JPEGLSLossless))
    with TestClient(create_app(service)) as client:
        assert send(node.port, series) == [0] * 3
        (study,) = wait_studies(service, 1)
        r = client.get("/v1/studies", headers=h.AUTH)
        assert r.status_code == 200
        (listed,) = r.json()["studies"]
        assert listed["study_id"] == study.id and listed["source"] == "dicom" and listed["status"] == "done"
        assert client.get(f"/v1/studies/{study.id}/dicom/sr", headers=h.AUTH).status_code == 200
        assert node.running
    assert not node.running and service.store is None


def test_a_series_being_received_shows_as_receiving_until_the_idle_timeout(tmp_path: Path, service_bundle: Path,
                                                                          h: Any) -> None:
    """GET /v1/studies lists a series arriving over DICOM as "receiving n instances" (with the sender and the
    series description) until the idle timeout makes it a study."""
    from fastapi.testclient import TestClient

    from ichd.service.app import create_app

    service = StudyService(h.make_config(tmp_path / "data", service_bundle))
    node = attach_dicom_node(service, DicomNodeConfig(aet=AET, port=0, idle_timeout_s=5.0))
    datasets = make_ct_series(4, transfer_syntax=JPEGLSLossless)
    for ds in datasets:
        ds.SeriesDescription = "Head 5mm axial"
    series = write_series(tmp_path / "s", datasets)
    with TestClient(create_app(service)) as client:
        assert client.get("/v1/studies", headers=h.AUTH).json() == {"studies": [], "receiving": []}
        assert send(node.port, series[:3], calling="CTSCANNER") == [0] * 3
        listed = client.get("/v1/studies", headers=h.AUTH).json()
        assert listed["studies"] == []
        (receiving,) = listed["receiving"]
        assert receiving["status"] == "receiving" and receiving["source"] == "dicom"
        assert receiving["n_instances"] == 3 and receiving["calling_ae"] == "CTSCANNER"
        assert receiving["series_description"] == "Head 5mm axial"
        assert receiving["series_instance_uid"] == str(datasets[0].SeriesInstanceUID)
        assert receiving["study_instance_uid"] == str(datasets[0].StudyInstanceUID)
        assert 0 < receiving["complete_in_s"] <= 5.0
        assert send(node.port, series[3:], calling="CTSCANNER") == [0]
        assert client.get("/v1/studies", headers=h.AUTH).json()["receiving"][0]["n_instances"] == 4
        assert client.get("/v1/studies?offset=1", headers=h.AUTH).json()["receiving"] == []  # first page only
        (study,) = wait_studies(service, 1)
        listed = client.get("/v1/studies", headers=h.AUTH).json()
        assert listed["receiving"] == [] and [s["study_id"] for s in listed["studies"]] == [study.id]
        assert study.n_files == 4


def test_a_port_in_use_is_an_input_error_and_releases_the_data_folder(tmp_path: Path, service_bundle: Path,
                                                                      h: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        service = StudyService(h.make_config(tmp_path / "data", service_bundle))
        with pytest.raises(InputError, match="already in use") as e:
            attach_dicom_node(service, DicomNodeConfig(port=port))
        assert e.value.exit_code == 2 and service.store is None
    service.open()  # the lock was released
    service.close()


def test_no_patient_identifiers_in_any_log_record(tmp_path: Path, node_for, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every logger (pynetdicom's too), every level
    extra = {"PatientName": PATIENT_NAME, "PatientBirthDate": BIRTH_DATE, "StudyDate": STUDY_DATE}
    series = write_series(tmp_path / "s", make_ct_series(3, patient_id=PATIENT_ID, extra=extra))
    dest = StorageSCP()
    try:
        service, node = node_for(tmp_path / "data", forward=ForwardTarget("DEST", "127.0.0.1", dest.port))
        assert send(node.port, series) == [0] * 3
        (study,) = wait_studies(service, 1)
        wait_file(service.paths(study.id).root / "forward.json")
        assert any(str(ds.get("PatientName", "")) == PATIENT_NAME for ds in dest.received)  # it did flow through
        service.close()
    finally:
        dest.close()
    log_text = (tmp_path / "data" / "logs" / "service.log").read_text()
    assert "association from 'TESTSCU'" in log_text and "sent (status 0x0000)" in log_text
    records = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for secret in SECRETS:
        assert secret not in log_text, secret
        assert secret not in records, secret


# ------------------------------------------------------------------------------------------------------ CLI

@pytest.mark.parametrize("args, words", [
    (["--aet", "WAYTOOLONGAETITLE1"], "--aet 'WAYTOOLONGAETITLE1' has 18 characters"),
    (["--aet", "A\\B"], "may not have"),
    (["--forward", "PACS@host"], "--forward 'PACS@host' has no port"),
    (["--forward", "nonsense"], "is not AET@HOST:PORT"),
    (["--allow-aet", "CT1", "--allow-aet", "NAME\\WITH"], "--allow-aet 'NAME\\\\WITH' holds characters"),
    (["--allow-aet", " "], "--allow-aet ' ' is empty"),
])
def test_listen_rejects_bad_arguments_in_one_line(args: list[str], words: str, tmp_path: Path, capsys) -> None:
    assert run(["listen", "--data-dir", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()  # checked before anything is opened


def test_serve_names_its_own_dicom_options(tmp_path: Path, capsys) -> None:
    assert run(["serve", "--data-dir", str(tmp_path / "d"), "--dicom-port", "11112", "--dicom-forward", "x"]) == 2
    err = capsys.readouterr().err
    assert "--dicom-forward 'x'" in err and len(err.strip().splitlines()) == 1
    assert run(["serve", "--data-dir", str(tmp_path / "d"), "--dicom-port", "11112", "--dicom-allow-aet",
                "X" * 17]) == 2
    err = capsys.readouterr().err
    assert "--dicom-allow-aet 'XXXXXXXXXXXXXXXXX' has 17 characters" in err and len(err.strip().splitlines()) == 1


def test_serve_with_a_dicom_port_in_use_is_one_line(tmp_path: Path, service_bundle: Path, capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("ichd"), "handlers", [])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = run(["serve", "--dicom-port", str(port), "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                    "--model", str(service_bundle), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "the port is already in use" in err and "Traceback" not in err, err


def test_listen_on_a_port_in_use_is_one_line(tmp_path: Path, service_bundle: Path, capsys,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the CLI's log handler is made once per process; here it must write to this test's captured stderr
    monkeypatch.setattr(logging.getLogger("ichd"), "handlers", [])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = run(["listen", "--port", str(port), "--data-dir", str(tmp_path / "d"), "--model", str(service_bundle),
                    "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("ichd: error")]) == 1
