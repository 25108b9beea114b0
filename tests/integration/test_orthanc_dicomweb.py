"""Orthanc's DICOMweb plugin (Debian package ``orthanc-dicomweb``) as the client of ``ichd serve``'s DICOMweb
endpoints, as docs/pacs.md sets it up.

Orthanc runs on loopback with a generated configuration that loads the plugin and names ichd as a DICOMweb server
(``DicomWeb.Servers.ichd``: ichd's ``/dicomweb/`` URL and the ``Authorization: Bearer`` header). ``ichd serve`` runs
as a subprocess with a token and the tiny test model. A real rsna-series series (given valid UIDs and its SOP Class
UID, as in the DIMSE round trip) is stored into Orthanc with its REST API; Orthanc pushes the study to ichd with
STOW-RS (``POST /dicom-web/servers/ichd/stow``); once ichd's job is done Orthanc finds ichd's result series with
QIDO-RS (``POST /dicom-web/servers/ichd/qido``) and fetches them with WADO-RS
(``POST /dicom-web/servers/ichd/retrieve``). The test then reads Orthanc's REST API: the SR and the Secondary
Captures are stored in the source study and reference its instances.

Without Orthanc or its DICOMweb plugin the tests are skipped, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

from ichd.testing import orthanc
from ichd.testing.orthanc import orthanc_config, pacs_ready_copy, running_orthanc
from ichd.testing.server import free_port, stop_process, wait_until

RSNA_SERIES = "ID_3d2ee1643b"  # 36 slices, JPEG-LS lossless
TOKEN = "orthanc-dicomweb-test-token"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed; CI must install it (apt-get install orthanc orthanc-dicomweb)")
    pytest.skip(f"{what} is not installed (apt-get install orthanc orthanc-dicomweb)")


def read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(io.BytesIO(data))
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]
    return ds


def _ichd(url: str, path: str) -> Any:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@dataclass
class Outcome:
    files: list[Path]
    study_uid: str = ""
    study_id: str = ""  # Orthanc's id of the source study
    stow: Any = None  # Orthanc's answer to the STOW-RS push
    qido: list[dict[str, Any]] = field(default_factory=list)  # ichd's series, as Orthanc's QIDO-RS found them
    retrieve: Any = None  # Orthanc's answer to the WADO-RS retrieve
    ichd_studies: list[dict[str, Any]] = field(default_factory=list)  # GET /v1/studies at the end
    series: list[dict[str, Any]] = field(default_factory=list)  # the source study's series in Orthanc, at the end
    objects: dict[str, bytes] = field(default_factory=dict)  # SOPInstanceUID -> file, ichd's objects from Orthanc
    seconds: float = 0.0  # from the STOW-RS push to the results stored in Orthanc
    serve_code: int | None = None
    serve_output: str = ""


@pytest.fixture(scope="module")
def calling_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny untrained test model with every threshold at 0 (every label called: the SR cites source slices)."""
    from model_factories import make_bundle, make_cnn_checkpoint

    root = tmp_path_factory.mktemp("calling-model")
    return make_bundle(root / "bundle", make_cnn_checkpoint(root / "cnn.pt"), threshold=0.0)


@pytest.fixture(scope="module")
def outcome(data_root: Path, calling_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    orthanc_bin = orthanc.find_orthanc()
    if orthanc_bin is None:
        _missing("Orthanc")
    plugin = orthanc.find_dicomweb_plugin()
    if plugin is None:
        _missing("Orthanc's DICOMweb plugin (orthanc-dicomweb)")
    root = tmp_path_factory.mktemp("orthanc-dicomweb")
    out = Outcome(files=pacs_ready_copy(data_root / "rsna-series" / "dicom" / RSNA_SERIES, root / "series"))
    http_port, dicom_port, serve_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{serve_port}"
    servers = {"ichd": {"Url": f"{url}/dicomweb/", "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}}
    config = orthanc_config(root, http_port=http_port, dicom_port=dicom_port, ichd_port=free_port(),
                            dicomweb_plugin=plugin, dicomweb_servers=servers)
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "ICHD_TOKEN"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    serve_log = root / "serve.log"
    with open(serve_log, "wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "ichd", "serve", "--host", "127.0.0.1", "--port", str(serve_port),
             "--data-dir", str(root / "ichd-data"), "--token-file", str(token_file), "--model", str(calling_bundle),
             "--device", "cpu", "--threads", "1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with running_orthanc(orthanc_bin, config, root) as pacs:
            plugins = pacs.get("/plugins")
            assert "dicom-web" in plugins, plugins

            def serve_up() -> bool:
                assert serve.poll() is None, serve_log.read_text()
                try:
                    return _ichd(url, "/v1/model") is not None
                except (urllib.error.URLError, OSError):
                    return False

            wait_until("ichd serve", serve_up, timeout=60, every=0.25)
            for p in out.files:
                stored = pacs.post("/instances", p.read_bytes())
                assert stored["Status"] == "Success", stored
                out.study_id = stored["ParentStudy"]
            out.study_uid = pacs.get(f"/studies/{out.study_id}")["MainDicomTags"]["StudyInstanceUID"]
            t0 = time.monotonic()
            # Orthanc pushes the study to ichd with STOW-RS
            out.stow = pacs.post("/dicom-web/servers/ichd/stow", {"Resources": [out.study_id], "Synchronous": True})

            def job_done() -> dict[str, Any] | None:
                assert serve.poll() is None, serve_log.read_text()
                studies = _ichd(url, "/v1/studies")["studies"]
                return studies if studies and all(s["status"] in ("done", "failed") for s in studies) else None

            out.ichd_studies = wait_until("ichd's job", job_done, timeout=60, every=0.25)
            # Orthanc finds ichd's series of the study (QIDO-RS) and fetches them (WADO-RS)
            out.qido = pacs.post("/dicom-web/servers/ichd/qido",
                                 {"Uri": f"/studies/{out.study_uid}/series"})
            # (the plugin answers with Orthanc's own JSON: tag -> {"Name", "Value", ...}, a string Value)
            results = [s["0020000E"]["Value"] for s in out.qido if s["00080060"]["Value"] in ("SR", "OT")]
            assert results, out.qido
            out.retrieve = pacs.post("/dicom-web/servers/ichd/retrieve", {"Resources": [
                {"Study": out.study_uid, "Series": series} for series in results]})
            out.seconds = time.monotonic() - t0
            out.series = pacs.get(f"/studies/{out.study_id}/series?expand")
            for data in pacs.instance_files(out.series):
                out.objects[str(read(data).SOPInstanceUID)] = data
    finally:
        out.serve_code = stop_process(serve)
        out.serve_output = serve_log.read_text()
    return out


def test_orthanc_pushes_the_study_to_ichd_with_stow_rs(outcome: Outcome) -> None:
    assert outcome.stow["InstancesCount"] == str(len(outcome.files)), outcome.stow  # Orthanc's (string) count
    (study,) = outcome.ichd_studies
    assert study["status"] == "done" and study["source"] == "dicomweb", study
    assert study["n_files"] == len(outcome.files)


def test_orthanc_finds_and_retrieves_ichd_results_over_qido_and_wado(outcome: Outcome) -> None:
    # QIDO-RS: ichd lists the source CT series and its SR and Secondary Capture series
    modalities = sorted(s["00080060"]["Value"] for s in outcome.qido)
    assert modalities == ["CT", "OT", "SR"], outcome.qido
    # Orthanc holds exactly what its WADO-RS retrieve received from ichd
    assert outcome.retrieve["ReceivedInstancesCount"] == str(len(outcome.objects)), outcome.retrieve
    modalities = sorted(s["MainDicomTags"]["Modality"] for s in outcome.series)
    assert modalities == ["CT", "OT", "SR"], modalities  # in the source study, next to the CT
    classes = [str(read(d).SOPClassUID) for d in outcome.objects.values()]
    assert classes.count(COMPREHENSIVE_SR) == 1 and classes.count(SECONDARY_CAPTURE) == len(classes) - 1 >= 1
    assert outcome.seconds < 60


def test_the_results_belong_to_the_source_study_and_reference_its_instances(outcome: Outcome) -> None:
    headers = [orthanc.read_quietly(p) for p in outcome.files]
    sops = {str(h.SOPInstanceUID) for h in headers}
    objects = [read(d) for d in outcome.objects.values()]
    for ds in objects:
        assert str(ds.StudyInstanceUID) == outcome.study_uid and ds.PatientID == headers[0].PatientID
    (sr,) = [ds for ds in objects if ds.Modality == "SR"]
    cited = {str(e.value) for e in sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert cited & sops and cited <= sops | {str(ds.SOPInstanceUID) for ds in objects}
    for ds in objects:
        if ds.Modality != "SR":
            (source,) = ds.SourceImageSequence
            assert str(source.ReferencedSOPInstanceUID) in sops and source.ReferencedSOPClassUID == CT_IMAGE_STORAGE


def test_a_clean_stop(outcome: Outcome) -> None:
    # stopped with SIGTERM: uvicorn shuts down gracefully, then ends by the signal it got (or exits 0)
    assert outcome.serve_code in (0, -signal.SIGTERM), outcome.serve_output[-3000:]
    assert "Finished server process" in outcome.serve_output and "Traceback" not in outcome.serve_output, \
        outcome.serve_output[-3000:]
