"""Settings of the DICOM node (``ichd listen``, ``ichd serve --dicom-port``) and the checks of its arguments.

:func:`parse_aet` and :func:`parse_forward` turn a bad ``--aet`` / ``--forward`` into an
:class:`~ichd.errors.InputError` (one CLI line, exit code 2) before anything is opened or loaded. This module
imports nothing heavy (no pynetdicom), so the CLI can check arguments cheaply.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichd.errors import InputError

DEFAULT_AET = "ICHD"
DEFAULT_PORT = 11112
#: A series is complete when no instance of it arrived for this long (seconds).
DEFAULT_IDLE_TIMEOUT_S = 30.0
#: Most characters of an AE title (DICOM PS3.5, VR AE).
MAX_AET_LENGTH = 16
FORWARD_SYNTAX = "AET@HOST:PORT"


@dataclass(frozen=True)
class ForwardTarget:
    """A C-STORE destination: ``AET@HOST:PORT``."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a TLS DICOM node (``--tls-cert``, ``--tls-key``, ``--tls-ca``); see :func:`server_ssl_context`.

    Attributes:
        cert: this node's certificate (PEM; may be followed by its intermediate certificates).
        key: the certificate's private key (PEM, not encrypted).
        ca: CA certificate(s) (PEM) that callers' certificates must be signed by; None: callers need no certificate.
    """

    cert: Path
    key: Path
    ca: Path | None = None


class _ServerContext(ssl.SSLContext):
    """A server-side context whose sockets leave the TLS handshake to the connection's own thread.

    pynetdicom wraps each accepted connection in its accept loop; with the handshake there, one caller that
    connects and says nothing would hold up every other association. The node does the handshake when the
    connection opens (``DicomNode._on_connection``), within ``handshake_timeout_s``.
    """

    handshake_timeout_s: float | None = None

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["do_handshake_on_connect"] = False
        if self.handshake_timeout_s is not None:
            sock.settimeout(self.handshake_timeout_s)
        return super().wrap_socket(sock, *args, **kwargs)


def _encrypted_key(*_: Any) -> bytes:
    raise _EncryptedKey


class _EncryptedKey(Exception):
    """The private key asks for a password (raised by :func:`_encrypted_key` instead of prompting on the tty)."""


def server_ssl_context(tls: TlsFiles, *, prefix: str = "", timeout_s: float | None = None) -> ssl.SSLContext:
    """The server-side :class:`ssl.SSLContext` of a TLS DICOM node: TLS 1.2 or later, this node's certificate and
    key and, with ``tls.ca``, client certificates required and verified against it.

    Raises :class:`InputError` (one CLI line, naming the options ``--{prefix}tls-cert`` etc.) when a file is
    missing, unreadable, not PEM, the key does not match the certificate or is encrypted.
    """
    opt_cert, opt_key, opt_ca = (f"--{prefix}tls-{n}" for n in ("cert", "key", "ca"))
    for option, path in ((opt_cert, tls.cert), (opt_key, tls.key), (opt_ca, tls.ca)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{option} {path}: no such file",
                             hint="give the PEM file's path (see docs/pacs.md, TLS)")
    context = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.handshake_timeout_s = timeout_s
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key), password=_encrypted_key)
    except _EncryptedKey:
        raise InputError(f"{opt_key} {tls.key}: the private key is encrypted (password-protected)",
                         hint=f"give an unencrypted copy, readable only by ichd's user: openssl pkey -in {tls.key} "
                              f"-out KEY.pem") from None
    except ssl.SSLError as e:
        what = ("the key does not belong to the certificate" if "KEY_VALUES_MISMATCH" in str(e)
                else "not a PEM certificate and its private key" + (f" ({e.reason})" if e.reason else ""))
        raise InputError(f"{opt_cert} {tls.cert} / {opt_key} {tls.key}: {what}",
                         hint=f"give this node's PEM certificate to {opt_cert} and its private key to {opt_key}") from None
    except OSError as e:
        raise InputError(f"{opt_cert} {tls.cert} / {opt_key} {tls.key}: cannot be read ({e.strerror or e})",
                         hint="check the files' permissions for ichd's user") from None
    if tls.ca is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca))
        except ssl.SSLError as e:
            raise InputError(f"{opt_ca} {tls.ca}: not a PEM CA certificate ({e.reason or e})",
                             hint="give the PEM certificate of the CA that signs the callers' certificates") from None
        except OSError as e:
            raise InputError(f"{opt_ca} {tls.ca}: cannot be read ({e.strerror or e})",
                             hint="check the file's permissions for ichd's user") from None
        if not context.get_ca_certs():
            raise InputError(f"{opt_ca} {tls.ca}: holds no CA certificate",
                             hint="give the PEM certificate of the CA that signs the callers' certificates")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass
class DicomNodeConfig:
    """Everything a :class:`~ichd.service.dicom_node.DicomNode` needs.

    Attributes:
        aet: this node's AE title; associations must call it (others are rejected).
        host: address to listen on.
        port: TCP port to listen on (0: any free port, see ``DicomNode.port``).
        idle_timeout_s: a series is handed to the service after this many seconds without a new instance.
        forward: where to send the SR and Secondary Captures of each study received here once its job is done
            (None: nothing is forwarded).
        forward_attempts: attempts per study (only the files not yet sent are sent again).
        forward_retry_delay_s: wait before the second attempt (doubled for each further one).
        acse_timeout_s: association negotiation timeout.
        dimse_timeout_s: timeout waiting for a DIMSE message (a C-STORE request or response).
        network_timeout_s: an idle connection is closed after this long.
        connect_timeout_s: TCP connection timeout when forwarding.
        max_pdu: largest PDU this node receives (bytes; 0 = unlimited).
        allowed_aets: calling AE titles allowed to associate (``--allow-aet``); others are rejected at
            association ("calling AE title not recognised") with a logged reason. Empty: any caller.
        tls: with it the node accepts only TLS associations (:func:`server_ssl_context`); None: plain TCP.
    """

    aet: str = DEFAULT_AET
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    forward: ForwardTarget | None = None
    forward_attempts: int = 3
    forward_retry_delay_s: float = 5.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_pdu: int = 262_144
    allowed_aets: tuple[str, ...] = ()
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        self.aet = parse_aet(self.aet)
        self.allowed_aets = tuple(dict.fromkeys(parse_aet(a, option="--allow-aet") for a in self.allowed_aets))
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port {self.port} is not a TCP port", hint="use 1..65535 (11112 is usual)")
        if not self.idle_timeout_s > 0:
            raise InputError(f"--idle-timeout must be > 0 seconds, got {self.idle_timeout_s:g}",
                             hint="e.g. --idle-timeout 30")
        if self.forward_attempts < 1:
            raise InputError(f"forward_attempts must be >= 1, got {self.forward_attempts}")
        for name in ("forward_retry_delay_s", "acse_timeout_s", "dimse_timeout_s", "network_timeout_s",
                     "connect_timeout_s"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")


def parse_aet(text: str, *, option: str = "--aet") -> str:
    """An AE title without padding spaces, or :class:`InputError` saying what is wrong with it.

    DICOM allows 1-16 characters of the default repertoire (printable ASCII) without backslashes; leading and
    trailing spaces are not significant.
    """
    value = text.strip(" ")
    shown = text if len(text) <= 40 else text[:40] + "..."
    if not value:
        raise InputError(f"{option} {shown!r} is empty", hint="give 1-16 letters, digits or '-_.' (e.g. ICHD)")
    if len(value) > MAX_AET_LENGTH:
        raise InputError(f"{option} {shown!r} has {len(value)} characters; an AE title has at most "
                         f"{MAX_AET_LENGTH}", hint="use a shorter name, e.g. ICHD")
    bad = sorted({c for c in value if not (" " <= c <= "~") or c == "\\"})
    if bad:
        raise InputError(f"{option} {shown!r} holds characters an AE title may not have: "
                         f"{', '.join(repr(c) for c in bad)}",
                         hint="use printable ASCII without backslashes, e.g. ICHD")
    return value


def parse_port(text: str, *, option: str) -> int:
    """A TCP port 1..65535 from ``text``."""
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise InputError(f"{option}: port {text!r} is not a number in 1..65535")
    return port


def parse_forward(text: str, *, option: str = "--forward") -> ForwardTarget:
    """``AET@HOST:PORT`` (IPv6 hosts in brackets: ``PACS@[::1]:104``) as a :class:`ForwardTarget`."""
    shown = text if len(text) <= 80 else text[:80] + "..."
    hint = f"write it as {FORWARD_SYNTAX}, e.g. PACS@10.0.0.5:104"
    aet, at, rest = text.rpartition("@")
    if not at or not aet or not rest:
        raise InputError(f"{option} {shown!r} is not {FORWARD_SYNTAX}", hint=hint)
    host, colon, port_text = rest.rpartition(":")
    if not colon or not host or not port_text:
        raise InputError(f"{option} {shown!r} has no port: expected {FORWARD_SYNTAX}", hint=hint)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InputError(f"{option} {shown!r}: {host!r} is not an IPv6 address", hint=hint) from None
    elif ":" in host:
        raise InputError(f"{option} {shown!r}: put an IPv6 address in brackets", hint="e.g. PACS@[::1]:104")
    if any(c.isspace() for c in host) or "/" in host:
        raise InputError(f"{option} {shown!r}: {host!r} is not a host name or address", hint=hint)
    return ForwardTarget(aet=parse_aet(aet, option=f"{option} AE title"), host=host,
                         port=parse_port(port_text, option=f"{option} {shown!r}"))


def check_dicom_bind(host: str, tls: TlsFiles | None = None) -> str | None:
    """A warning to log when the DICOM node listens beyond this machine without client certificates (then DICOM
    has no authentication)."""
    from ichd.service.config import is_loopback

    if is_loopback(host) or (tls is not None and tls.ca is not None):
        return None
    return (f"the DICOM node listens on {host}: any node that can reach it and calls its AE title can send "
            f"studies (DICOM has no authentication here); restrict access with a firewall, or require client "
            f"certificates (--tls-ca)")
