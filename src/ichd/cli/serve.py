"""``ichd serve``: the HTTP service (upload a study, poll its job, read results), see :mod:`ichd.service`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ichd.service.config import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_UNPACKED_MB,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MAX_ZIP_RATIO,
    TOKEN_ENV_VAR,
    MiB,
)
from ichd.service.dicom_config import DEFAULT_AET, DEFAULT_IDLE_TIMEOUT_S, FORWARD_SYNTAX


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""
    from ichd.cli.listen import tls_options

    dicom_tls_cert_option, dicom_tls_key_option, dicom_tls_ca_option = tls_options("dicom-")

    @app.command("serve")
    def serve(
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to listen on. Anything but a loopback address needs a token."),
        port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
        data_dir: Path = typer.Option(Path("ichd-data"), "--data-dir",
                                      help="Folder for the job store (SQLite), the uploaded studies, their "
                                           "results and the service log."),
        model: str = typer.Option("default", "--model", "-m",
                                  help="Bundled model name, model bundle folder or checkpoint (as for predict)."),
        workers: int = typer.Option(1, "--workers", min=1,
                                    help="Studies predicted at once (each worker loads its own copy of the model)."),
        token_file: Path | None = typer.Option(None, "--token-file",
                                               help=f"File whose first line is the bearer token (else "
                                                    f"${TOKEN_ENV_VAR}). Every endpoint but /health needs it."),
        max_upload_mb: int = typer.Option(DEFAULT_MAX_UPLOAD_MB, "--max-upload-mb", min=1,
                                          help="Largest upload (request body) in MB."),
        max_files: int = typer.Option(DEFAULT_MAX_FILES, "--max-files", min=1, help="Most files in one study."),
        max_unpacked_mb: int = typer.Option(DEFAULT_MAX_UNPACKED_MB, "--max-unpacked-mb", min=1,
                                            help="Largest total size an uploaded zip may unpack to, in MB."),
        max_zip_ratio: float = typer.Option(DEFAULT_MAX_ZIP_RATIO, "--max-zip-ratio", min=2.0,
                                            help="Largest compression ratio of a zip entry (zip bomb guard)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
        threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
        dicom_port: int | None = typer.Option(None, "--dicom-port", min=1, max=65535,
                                              help="Also run a DICOM node (as `ichd listen`) on this port, on "
                                                   "--host, in this process and on the same data folder."),
        dicom_aet: str = typer.Option(DEFAULT_AET, "--dicom-aet", help="AE title of the DICOM node."),
        dicom_idle_timeout: float = typer.Option(DEFAULT_IDLE_TIMEOUT_S, "--dicom-idle-timeout", min=0.01,
                                                 help="Seconds without a new instance after which a received "
                                                      "series is complete."),
        dicom_forward: str | None = typer.Option(None, "--dicom-forward", metavar=FORWARD_SYNTAX,
                                                 help="Send the DICOM SR and Secondary Captures of each study "
                                                      "received over DICOM to this node once its job is done."),
        dicom_allow_aet: list[str] = typer.Option([], "--dicom-allow-aet", metavar="AET",
                                                  help="Accept DICOM associations only from this calling AE title "
                                                       "(repeat for several; default: any caller)."),
        dicom_tls_cert: Path | None = dicom_tls_cert_option,
        dicom_tls_key: Path | None = dicom_tls_key_option,
        dicom_tls_ca: Path | None = dicom_tls_ca_option,
        second_reader: str | None = typer.Option(
            None, "--second-reader",
            help="Segment every study with a second reader too: 'blast-ct' (the blast-ct extra). Its lesion volumes "
                 "go into the results, its labels into the viewer (Seg toggle); a job reports its progress while "
                 "it runs (GET /v1/jobs/ID: progress). One model costs ~4 CPU-minutes per head CT (~2 min on 2 "
                 "free cores); each further model as much."),
        blast_ct_models: Path | None = typer.Option(None, "--blast-ct-models", metavar="DIR",
                                                    help="Folder of the BLAST-CT weights (as for predict)."),
        blast_ct_ensemble: str | None = typer.Option(None, "--blast-ct-ensemble", metavar="NAMES",
                                                     help="BLAST-CT weight files to average (default model_1)."),
    ) -> None:
        """Serve the HTTP API: upload a study, poll its job, read the JSON result, HTML report, DICOM SR and slice
        images (OpenAPI docs at /docs). Jobs persist in DATA_DIR and survive restarts (research use only)."""
        from ichd.service.config import ServiceConfig, check_bind, load_token

        token = load_token(token_file)
        check_bind(host, token)  # before anything is loaded or opened
        dicom = None
        if dicom_port is not None:
            from ichd.cli.listen import dicom_config

            dicom = dicom_config(aet=dicom_aet, host=host, port=dicom_port, idle_timeout=dicom_idle_timeout,
                                 forward=dicom_forward, allow=dicom_allow_aet, tls_cert=dicom_tls_cert,
                                 tls_key=dicom_tls_key, tls_ca=dicom_tls_ca, prefix="dicom-")
        elif dicom_tls_cert is not None or dicom_tls_key is not None or dicom_tls_ca is not None:
            from ichd.errors import InputError

            raise InputError("--dicom-tls-cert/--dicom-tls-key/--dicom-tls-ca need --dicom-port",
                             hint="add --dicom-port 11112 to run the DICOM node, or leave the TLS options out")
        config = ServiceConfig(data_dir=data_dir, model=model, workers=workers, token=token, device=device,
                               max_upload_bytes=max_upload_mb * MiB, max_files=max_files,
                               max_unpacked_bytes=max_unpacked_mb * MiB, max_zip_ratio=max_zip_ratio,
                               second_reader=second_reader, blast_ct_models=blast_ct_models,
                               blast_ct_ensemble=blast_ct_ensemble)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        run_server(config, host=host, port=port, dicom=dicom)


def run_server(config, *, host: str, port: int, dicom: Any = None) -> None:
    """Open the data folder, load the model, then serve until interrupted (Ctrl-C / SIGTERM); with ``dicom`` (a
    :class:`~ichd.service.dicom_config.DicomNodeConfig`) a DICOM node runs on the same service too."""
    import logging

    import uvicorn

    from ichd.service.app import create_app
    from ichd.service.runner import StudyService
    from ichd.utils.logging import get_logger
    from ichd.utils.progress import set_progress_enabled

    set_progress_enabled(False)  # a server's output is its log, not progress bars
    service = StudyService(config)
    if dicom is not None:
        from ichd.service.dicom_node import attach_dicom_node

        node = attach_dicom_node(service, dicom)  # port in use: one CLI line, before the model loads
        tls = "" if dicom.tls is None else " (TLS only)"
        typer.echo(f"ichd serve: DICOM node {dicom.aet} on {dicom.host}:{node.port}{tls}", err=True)
    service.start()  # model and data-folder errors are one CLI line, before the port is opened
    log = get_logger("ichd.service")
    try:
        uv = logging.getLogger("uvicorn")
        uv.setLevel(logging.INFO)
        if service.log_handler is not None:
            uv.addHandler(service.log_handler)
        if not uv.handlers or uv.handlers == [service.log_handler]:
            stream = logging.StreamHandler()
            stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            uv.addHandler(stream)
        if config.token is None:
            log.warning("no token: anyone who can connect to %s:%d can use the API (loopback only)", host, port)
        typer.echo(f"ichd serve: http://{host}:{port} (docs at /docs), data in {config.data_dir}", err=True)
        _announce_viewer(config.token, host=host, port=port, log=log, data_dir=config.data_dir)
        uvicorn.run(create_app(service), host=host, port=port, log_config=None, access_log=True)
    finally:
        service.close()


def _announce_viewer(token: str | None, *, host: str, port: int, log: Any, data_dir: Path | None = None) -> None:
    """Log the web viewer's address and print the link that opens it signed in (the token in the URL fragment,
    which browsers never send). The token never goes to the log or to redirected output: on a terminal the link is
    printed; otherwise (a service manager, ``2>&1 | tee``) it is written to ``DATA/viewer-link.txt``, readable by
    its owner only, and the line printed says where it is."""
    import sys

    from ichd.service.viewer import viewer_url

    log.info("web viewer at %s", viewer_url(host, port))
    if token is None:
        typer.echo(f"ichd serve: viewer at {viewer_url(host, port)} (no token: open to this machine only)", err=True)
        return
    link = viewer_url(host, port, token)
    if sys.stderr.isatty():
        typer.echo(f"ichd serve: viewer at {link} (this link holds the token)", err=True)
        return
    where = _write_link_file(data_dir, link) if data_dir is not None else None
    if where is not None:
        typer.echo(f"ichd serve: viewer at {viewer_url(host, port)}; the link with the token (#token=...) is in "
                   f"{where} (readable by you only)", err=True)
    else:
        typer.echo(f"ichd serve: viewer at {viewer_url(host, port)} (it asks for the token, or append "
                   f"#token=<token> to the address)", err=True)


LINK_FILE = "viewer-link.txt"


def _write_link_file(data_dir: Path, link: str) -> Path | None:
    """Write ``link`` to ``DATA/viewer-link.txt`` with mode 0600 (created so, never readable by others); the path,
    or None when it cannot be written."""
    import os

    path = Path(data_dir) / LINK_FILE
    tmp = path.with_name(f".{LINK_FILE}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(link + "\n")
        os.replace(tmp, path)
    except OSError:
        return None
    return path
