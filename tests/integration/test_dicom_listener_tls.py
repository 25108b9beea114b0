"""``ichd listen --tls-cert/--tls-key/--tls-ca`` against dcmtk: a throwaway CA, server and client certificates
(``openssl``), the listener on a free port with TLS only and client certificates required, and a real RSNA series
(JPEG-LS) sent with ``storescu +tls``.

Checked: the TLS association stores every instance and the series is analysed (one done study, its files and its
result are the ones sent); a plain TCP ``storescu``, a TLS one without a client certificate (``+tla``) and one whose
certificate another CA signed are refused, and nothing of theirs reaches the node; the listener stops cleanly.

Without dcmtk or openssl the tests are skipped, except in CI (``CI=true``), where they fail (as in
tests/integration/test_dicom_listener_dcmtk.py, whose helpers this module uses).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ichd.testing.tls import make_test_certificates
from integration.test_dicom_listener_dcmtk import (
    CT_IMAGE_STORAGE,
    RSNA_SERIES,
    _finished_studies,
    _missing,
    _studies,
    dcmtk,
    free_port,
    read,
    wait_until,
)

IDLE_S = 2
#: Calling AE titles, one per attempt, so the node's log tells which association reached it.
GOOD, PLAIN, ANONYMOUS, ROGUE, PROBE = "TLSSCU", "PLAINSCU", "ANONSCU", "ROGUESCU", "PROBESCU"


def openssl_tool() -> str:
    """The ``openssl`` program (missing: skipped, failed under CI)."""
    tool = shutil.which("openssl")
    if tool is None:
        _missing("openssl")
    return str(tool)


def tls_args(certs: Path, key: str | None) -> list[str]:
    """dcmtk's TLS options: ``+tls KEY CERT`` (or ``+tla`` without a certificate), trusting ``ca.pem``."""
    own = ["+tla"] if key is None else ["+tls", str(certs / f"{key}.key"), str(certs / f"{key}.pem")]
    return [*own, "+cf", str(certs / "ca.pem")]


def storescu(folder: Path, port: int, calling: str, tls: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [dcmtk("storescu"), *tls, "-R", "-xt", "-v", "-aec", "ICHD", "-aet", calling, "-to", "10", "-ta", "10",
           "-td", "30", "+sd", "127.0.0.1", str(port), str(folder)]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=90)


@dataclass
class Outcome:
    root: Path
    series: Path
    data: Path
    sent: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    studies: list[dict[str, Any]] = field(default_factory=list)
    received_after_refused: list[Any] = field(default_factory=list)  # staged files and studies, before GOOD
    listener_output: str = ""
    listener_code: int | None = None


@pytest.fixture(scope="module")
def scenario(data_root: Path, test_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    for tool in ("storescu", "echoscu", "dcmodify"):
        dcmtk(tool)
    root = tmp_path_factory.mktemp("dicom-tls")
    certs = root / "certs"
    certs.mkdir()
    make_test_certificates(certs, openssl=openssl_tool())
    series = root / "rsna"
    series.mkdir()
    for p in sorted((data_root / "rsna-series" / "dicom" / RSNA_SERIES).glob("*.dcm")):
        shutil.copy2(p, series / p.name)
    # storescu needs the SOP Class UID in the data set; the RSNA files hold it only in the file meta
    subprocess.run([dcmtk("dcmodify"), "-nb", "-q", "-i", f"(0008,0016)={CT_IMAGE_STORAGE}",
                    *map(str, sorted(series.iterdir()))], check=True, timeout=60)
    out = Outcome(root=root, series=series, data=root / "data")
    port = free_port()
    listener_log = open(root / "listener.log", "w")  # noqa: SIM115 - closed in the finally below
    listener = subprocess.Popen(
        [sys.executable, "-m", "ichd", "listen", "--aet", "ICHD", "--port", str(port), "--host", "127.0.0.1",
         "--data-dir", str(out.data), "--idle-timeout", str(IDLE_S), "--tls-cert", str(certs / "server.pem"),
         "--tls-key", str(certs / "server.key"), "--tls-ca", str(certs / "ca.pem"), "--model", str(test_bundle),
         "--device", "cpu", "--threads", "1"],
        stdout=listener_log, stderr=subprocess.STDOUT, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    try:
        def echo() -> bool:
            assert listener.poll() is None, (root / "listener.log").read_text()
            r = subprocess.run([dcmtk("echoscu"), *tls_args(certs, "client"), "-aec", "ICHD", "-aet", PROBE, "-to",
                                "5", "127.0.0.1", str(port)], check=False, capture_output=True, timeout=30)
            return r.returncode == 0

        wait_until("the listener to answer C-ECHO over TLS", echo, timeout=90, every=0.5)
        out.sent[PLAIN] = storescu(series, port, PLAIN, [])
        out.sent[ANONYMOUS] = storescu(series, port, ANONYMOUS, tls_args(certs, None))
        out.sent[ROGUE] = storescu(series, port, ROGUE, tls_args(certs, "rogue"))
        out.received_after_refused = [*(out.data / "dicom" / "incoming").rglob("*.dcm"), *_studies(out.data)]
        out.sent[GOOD] = storescu(series, port, GOOD, tls_args(certs, "client"))
        out.studies = wait_until("the analysed study", lambda: _finished_studies(out.data, 1), timeout=120)
        listener.send_signal(signal.SIGTERM)
        out.listener_code = listener.wait(timeout=60)
    finally:
        if listener.poll() is None:
            listener.terminate()
            try:
                listener.wait(timeout=20)
            except subprocess.TimeoutExpired:
                listener.kill()
        listener_log.close()
    out.listener_output = (root / "listener.log").read_text()
    return out


def test_storescu_over_tls_stores_and_the_series_is_analysed(scenario: Outcome) -> None:
    sent = scenario.sent[GOOD]
    assert sent.returncode == 0, sent.stdout + sent.stderr
    sops = {read(p, stop_before_pixels=True).SOPInstanceUID for p in scenario.series.iterdir()}
    assert len(sops) == 28
    (study,) = scenario.studies
    assert study["status"] == "done" and study["source"] == "dicom" and study["n_files"] == len(sops), study
    folder = scenario.data / "studies" / study["id"]
    assert {read(p, stop_before_pixels=True).SOPInstanceUID for p in (folder / "input").iterdir()} == sops
    result = json.loads((folder / "result" / "prediction.json").read_text())
    assert {s["sop_instance_uid"] for s in result["slices"]} == sops
    assert all(len(s["probabilities"]) > 0 for s in result["slices"])
    service_log = (scenario.data / "logs" / "service.log").read_text()
    assert f"association from '{GOOD}'" in service_log and "28 instance(s) stored, 0 refused" in service_log


@pytest.mark.parametrize("calling, reason", [(PLAIN, "WRONG_VERSION_NUMBER"),
                                             (ANONYMOUS, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
                                             (ROGUE, "CERTIFICATE_VERIFY_FAILED")])
def test_callers_without_a_trusted_tls_certificate_are_refused(scenario: Outcome, calling: str, reason: str) -> None:
    """Plain TCP, TLS without a client certificate, and a certificate of another CA: no association, nothing
    stored, the reason in the node's log."""
    sent = scenario.sent[calling]
    report = sent.stdout + sent.stderr
    assert sent.returncode != 0, report
    assert "Association Request Failed" in report or "TLS" in report, report
    assert scenario.received_after_refused == []
    service_log = (scenario.data / "logs" / "service.log").read_text()
    assert f"'{calling}'" not in service_log  # pynetdicom never saw an A-ASSOCIATE from it
    refused = [line for line in service_log.splitlines() if "refused: TLS handshake failed" in line]
    assert len(refused) == 3, refused  # one per refused caller, and none for the others
    assert sum(f"({reason})" in line for line in refused) == 1, refused


def test_tls_listener_stops_cleanly(scenario: Outcome) -> None:
    assert scenario.listener_code == 0, scenario.listener_output
    assert "Traceback" not in scenario.listener_output
    assert "(TLS only)" in scenario.listener_output
