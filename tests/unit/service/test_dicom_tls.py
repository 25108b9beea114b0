"""The DICOM node with TLS (``--tls-cert/--tls-key/--tls-ca``), in-process against pynetdicom's own SCU: a caller
with a certificate of the CA is served, plain TCP and a certificate of another CA are refused at the handshake
(logged with the reason), and a connection that never speaks does not hold up the others; the CLI's one-line
errors for bad TLS files. Certificates are made with the ``openssl`` program (missing: skipped, failed under
``CI=true``). dcmtk's ``storescu +tls`` with a real series is in tests/integration/test_dicom_listener_tls.py."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from ichd.cli.main import run
from ichd.service.dicom_config import DicomNodeConfig, TlsFiles
from ichd.service.dicom_node import attach_dicom_node
from ichd.service.runner import StudyService
from ichd.testing.tls import make_test_certificates
from unit.service.test_dicom_node import echo as node_echo

AET = "ICHDTEST"


def _openssl() -> str:
    tool = shutil.which("openssl")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the openssl program is not installed; CI must install it (apt-get install openssl)")
        pytest.skip("the openssl program is not installed")
    return tool


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ca.pem``; ``server`` and ``client`` (``.pem`` + ``.key``) signed by it; ``rogue`` signed by ``other-ca``;
    ``locked.key``: ``server.key`` encrypted with a password."""
    return make_test_certificates(tmp_path_factory.mktemp("tls"), openssl=_openssl(), locked_key=True)


def client_context(certs: Path, name: str | None) -> ssl.SSLContext:
    """A TLS client trusting ``ca.pem``, presenting ``name``'s certificate (None: none)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs / "ca.pem"))
    context.check_hostname = False  # the test server's certificate names no host
    if name is not None:
        context.load_cert_chain(str(certs / f"{name}.pem"), str(certs / f"{name}.key"))
    return context


def echo(port: int, tls: ssl.SSLContext | None) -> int | None:
    """C-ECHO status over ``tls`` (None: plain TCP), or None when no association was established."""
    return node_echo(port, called=AET, tls=tls, timeout=10)


def test_only_callers_with_a_certificate_of_the_ca_are_served(tmp_path: Path, certs: Path, service_bundle: Path,
                                                               h: Any, caplog) -> None:
    service = StudyService(h.make_config(tmp_path / "data", service_bundle))
    tls = TlsFiles(cert=certs / "server.pem", key=certs / "server.key", ca=certs / "ca.pem")
    node = attach_dicom_node(service, DicomNodeConfig(aet=AET, port=0, tls=tls, acse_timeout_s=20.0))
    caplog.set_level(logging.INFO, logger="ichd")
    try:
        with socket.create_connection(("127.0.0.1", node.port)):
            # a connection that never speaks: the handshake waits in its own thread, not in the accept loop
            t0 = time.monotonic()
            assert echo(node.port, client_context(certs, "client")) == 0x0000
            assert time.monotonic() - t0 < 10
            assert echo(node.port, None) is None  # plain TCP
            assert echo(node.port, client_context(certs, None)) is None  # TLS without a certificate
            assert echo(node.port, client_context(certs, "rogue")) is None  # signed by another CA
        # the silent caller has hung up: its handshake fails too, and no refused connection keeps a thread
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            refused = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
            if len(refused) == 4 and not node._server.active_associations:
                break
            time.sleep(0.1)
        assert not node._server.active_associations
    finally:
        service.close()
    assert len(refused) == 4, refused
    assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in m for m in refused), refused
    assert any("CERTIFICATE_VERIFY_FAILED" in m for m in refused), refused
    accepted = [r.getMessage() for r in caplog.records if r.getMessage().endswith("accepted")]
    assert len(accepted) == 1 and "'TESTSCU'" in accepted[0]


def test_without_a_ca_no_client_certificate_is_asked_for(tmp_path: Path, certs: Path, service_bundle: Path,
                                                         h: Any) -> None:
    service = StudyService(h.make_config(tmp_path / "data", service_bundle))
    tls = TlsFiles(cert=certs / "server.pem", key=certs / "server.key")
    node = attach_dicom_node(service, DicomNodeConfig(aet=AET, port=0, tls=tls))
    try:
        assert echo(node.port, client_context(certs, None)) == 0x0000
        assert echo(node.port, None) is None  # still TLS only
    finally:
        service.close()


@pytest.mark.parametrize("args, words", [
    (["--tls-cert", "{d}/server.pem"], "--tls-cert needs --tls-key"),
    (["--tls-key", "{d}/server.key"], "--tls-key needs --tls-cert"),
    (["--tls-ca", "{d}/ca.pem"], "--tls-ca needs --tls-cert and --tls-key"),
    (["--tls-cert", "{d}/nothere.pem", "--tls-key", "{d}/server.key"], "--tls-cert {d}/nothere.pem: no such file"),
    (["--tls-cert", "{d}/server.pem", "--tls-key", "{d}/client.key"], "the key does not belong to the certificate"),
    (["--tls-cert", "{d}/server.pem", "--tls-key", "{d}/locked.key"], "the private key is encrypted"),
    (["--tls-cert", "{d}/server.key", "--tls-key", "{d}/server.key"], "not a PEM certificate and its private key"),
    (["--tls-cert", "{d}/server.pem", "--tls-key", "{d}/server.key", "--tls-ca", "{d}/server.csr"],
     "--tls-ca {d}/server.csr: not a PEM CA certificate"),
])
def test_listen_rejects_bad_tls_files_in_one_line(args: list[str], words: str, certs: Path, tmp_path: Path,
                                                  capsys) -> None:
    args = [a.format(d=certs) for a in args]
    assert run(["listen", "--data-dir", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err
    assert words.format(d=certs) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "d").exists()  # checked before anything is opened


def test_serve_names_its_own_tls_options(certs: Path, tmp_path: Path, capsys) -> None:
    assert run(["serve", "--data-dir", str(tmp_path / "d"), "--dicom-tls-cert", str(certs / "server.pem"),
                "--dicom-tls-key", str(certs / "server.key")]) == 2
    err = capsys.readouterr().err
    assert "need --dicom-port" in err and len(err.strip().splitlines()) == 1, err
    assert run(["serve", "--data-dir", str(tmp_path / "d"), "--dicom-port", "11112", "--dicom-tls-cert",
                str(certs / "server.pem"), "--dicom-tls-key", str(certs / "client.key")]) == 2
    err = capsys.readouterr().err
    assert "--dicom-tls-cert" in err and "--dicom-tls-key" in err and "does not belong" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "d").exists()
