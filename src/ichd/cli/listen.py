"""``ichd listen``: a DICOM node (Storage SCP) that analyses every CT series it receives, see
:mod:`ichd.service.dicom_node`.

It runs the service core (job store, workers) on ``--data-dir`` without the HTTP API. A data folder belongs to
one process at a time, so to have both the HTTP API and the DICOM node on one data folder run
``ichd serve --dicom-port 11112`` instead of ``ichd serve`` and ``ichd listen`` side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ichd.service.config import DEFAULT_MAX_FILES
from ichd.service.dicom_config import DEFAULT_AET, DEFAULT_IDLE_TIMEOUT_S, DEFAULT_PORT, FORWARD_SYNTAX


def tls_options(prefix: str = "") -> tuple[Any, Any, Any]:
    """The typer options ``--{prefix}tls-cert``, ``--{prefix}tls-key``, ``--{prefix}tls-ca`` of a DICOM node:
    ``ichd listen`` (no prefix) and ``ichd serve`` (``dicom-``) declare the same three; :func:`dicom_config` checks
    them with the same prefix."""
    cert, key, ca = (f"--{prefix}tls-{name}" for name in ("cert", "key", "ca"))
    node = "The DICOM node accepts" if prefix else "Accept"
    return (
        typer.Option(None, cert, metavar="CERT.pem",
                     help=f"{node} only TLS associations (TLS 1.2 or later), with this PEM certificate of the node; "
                          f"needs {key}."),
        typer.Option(None, key, metavar="KEY.pem", help=f"The unencrypted PEM private key of {cert}."),
        typer.Option(None, ca, metavar="CA.pem",
                     help=f"With {cert}: callers must present a certificate signed by this PEM CA; others are refused "
                          "at the TLS handshake. Default: no client certificate asked for."),
    )


def register(app: typer.Typer) -> None:
    """Add the ``listen`` command to ``app``."""
    tls_cert_option, tls_key_option, tls_ca_option = tls_options()

    @app.command("listen")
    def listen(
        aet: str = typer.Option(DEFAULT_AET, "--aet", help="AE title of this node (senders must call it)."),
        port: int = typer.Option(DEFAULT_PORT, "--port", min=1, max=65535, help="TCP port for DICOM."),
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to listen on (0.0.0.0: every interface; DICOM has no "
                                      "authentication: restrict the callers with --allow-aet and a firewall, or "
                                      "require certificates with --tls-ca)."),
        data_dir: Path = typer.Option(Path("ichd-data"), "--data-dir",
                                      help="Service data folder (job store, studies, results, log); the same "
                                           "layout as `ichd serve`, but one process at a time."),
        idle_timeout: float = typer.Option(DEFAULT_IDLE_TIMEOUT_S, "--idle-timeout", min=0.01,
                                           help="Seconds without a new instance after which a series is complete "
                                                "and analysed."),
        forward: str | None = typer.Option(None, "--forward", metavar=FORWARD_SYNTAX,
                                           help="Send each result's DICOM SR and Secondary Captures to this node "
                                                "(C-STORE) once its job is done."),
        allow_aet: list[str] = typer.Option([], "--allow-aet", metavar="AET",
                                            help="Accept associations only from this calling AE title (repeat "
                                                 "for several); others are rejected, with the reason logged. "
                                                 "Default: any caller."),
        tls_cert: Path | None = tls_cert_option,
        tls_key: Path | None = tls_key_option,
        tls_ca: Path | None = tls_ca_option,
        model: str = typer.Option("default", "--model", "-m",
                                  help="Bundled model name, model bundle folder or checkpoint (as for predict)."),
        workers: int = typer.Option(1, "--workers", min=1,
                                    help="Studies predicted at once (each worker loads its own copy of the model)."),
        max_files: int = typer.Option(DEFAULT_MAX_FILES, "--max-files", min=1,
                                      help="Most instances in one series (more are refused)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
        threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
    ) -> None:
        """Run a DICOM node: receive CT series (C-STORE; C-ECHO answered), analyse each series once no instance
        arrived for --idle-timeout seconds, exactly as an upload to `ichd serve`, and optionally forward the
        DICOM results (research use only). Stop with Ctrl-C or SIGTERM."""
        from ichd.service.config import ServiceConfig

        dicom = dicom_config(aet=aet, host=host, port=port, idle_timeout=idle_timeout, forward=forward,
                             allow=allow_aet, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca)
        config = ServiceConfig(data_dir=data_dir, model=model, workers=workers, device=device, max_files=max_files)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        run_listener(config, dicom)


def dicom_config(*, aet: str, host: str, port: int, idle_timeout: float, forward: str | None,
                 allow: list[str] | None = None, tls_cert: Path | None = None, tls_key: Path | None = None,
                 tls_ca: Path | None = None, prefix: str = "") -> Any:
    """The :class:`~ichd.service.dicom_config.DicomNodeConfig` of the command line (InputError for bad values,
    naming the options ``--{prefix}aet``, ``--{prefix}forward``, ``--{prefix}allow-aet`` and
    ``--{prefix}tls-cert/-key/-ca``; the TLS files are loaded once here, so a bad one is reported before anything
    is opened)."""
    from ichd.errors import InputError
    from ichd.service.dicom_config import (
        DicomNodeConfig,
        TlsFiles,
        parse_aet,
        parse_forward,
        server_ssl_context,
    )

    aet = parse_aet(aet, option=f"--{prefix}aet")
    target = parse_forward(forward, option=f"--{prefix}forward") if forward is not None else None
    allowed = tuple(parse_aet(a, option=f"--{prefix}allow-aet") for a in allow or ())
    tls = None
    if tls_cert is not None or tls_key is not None or tls_ca is not None:
        if tls_cert is None or tls_key is None:
            c, k = f"--{prefix}tls-cert", f"--{prefix}tls-key"
            what = (f"{c} needs {k}" if tls_cert is not None else f"{k} needs {c}" if tls_key is not None
                    else f"--{prefix}tls-ca needs {c} and {k}")
            raise InputError(what, hint=f"give the node's PEM certificate ({c}) and its private key ({k}); see "
                                        f"docs/pacs.md, TLS")
        tls = TlsFiles(cert=tls_cert, key=tls_key, ca=tls_ca)
        server_ssl_context(tls, prefix=prefix)
    return DicomNodeConfig(aet=aet, host=host, port=port, idle_timeout_s=idle_timeout, forward=target,
                           allowed_aets=allowed, tls=tls)


def run_listener(config: Any, dicom: Any) -> None:
    """Open the data folder, bind the DICOM port, load the model, then receive until Ctrl-C / SIGTERM."""
    from ichd.service.dicom_node import attach_dicom_node
    from ichd.service.runner import StudyService
    from ichd.utils.progress import set_progress_enabled

    set_progress_enabled(False)  # a server's output is its log, not progress bars
    service = StudyService(config)
    node = attach_dicom_node(service, dicom)  # data-folder and port errors: one line, before the model loads
    try:
        service.start()
        forward = f", forwarding results to {dicom.forward}" if dicom.forward else ""
        tls = "" if dicom.tls is None else " (TLS only)"
        typer.echo(f"ichd listen: DICOM node {dicom.aet} on {dicom.host}:{node.port}{tls}{forward}, data in "
                   f"{config.data_dir}", err=True)
        wait_for_stop()
    finally:
        service.close()


def wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM (both end the node cleanly, exit code 0)."""
    import signal
    import threading

    stop = threading.Event()

    def _handler(_signum: int, _frame: Any) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _handler)
    except ValueError:  # not the main thread: Ctrl-C arrives as KeyboardInterrupt in the main thread instead
        pass
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
