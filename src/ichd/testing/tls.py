"""Throwaway TLS certificates for the DICOM node's TLS tests, made with the ``openssl`` program.

    make_test_certificates(folder, openssl=shutil.which("openssl"))

writes into ``folder``: ``ca.pem``; ``server`` and ``client`` (``.pem`` + ``.key``) signed by it; ``rogue`` signed
by another CA (``other-ca.pem``); with ``locked_key`` also ``locked.key``, ``server.key`` encrypted with the
password ``secret``. Keys are unencrypted 2048-bit RSA, certificates valid for 2 days. Callers decide what a
missing ``openssl`` means (skip, or fail on CI).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_test_certificates(folder: Path, *, openssl: str, locked_key: bool = False) -> Path:
    """Write the certificates described in the module docstring into ``folder``; returns ``folder``."""

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, cwd=folder, capture_output=True, timeout=60)

    for ca in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "2", "-subj", f"/CN=ichd test {ca}")
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "other-ca")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj",
            f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2")
    if locked_key:
        run("pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out", "locked.key")
    return folder
