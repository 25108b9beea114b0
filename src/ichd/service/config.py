"""Settings of ``ichd serve``: the data folder, the model, the worker pool, the token and the upload limits.

The token comes from ``--token-file`` or the ``ICHD_TOKEN`` environment variable (:func:`load_token`);
:func:`check_bind` refuses to listen on a non-loopback address without one.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ichd.errors import InputError

#: Environment variable that holds the bearer token.
TOKEN_ENV_VAR = "ICHD_TOKEN"
#: Shortest token accepted (a guessable token is no protection).
MIN_TOKEN_LENGTH = 16
MiB = 1024 * 1024

#: Default limits: a 1 mm head CT is ~300-600 slices of ~0.5 MB each.
DEFAULT_MAX_UPLOAD_MB = 2048
DEFAULT_MAX_FILES = 5000
DEFAULT_MAX_UNPACKED_MB = 8192
#: Largest allowed uncompressed/compressed ratio of a zip entry (or of the whole archive) above
#: :data:`RATIO_MIN_BYTES`; real DICOM compresses 2-10x, a zip bomb 1000x.
DEFAULT_MAX_ZIP_RATIO = 100.0
RATIO_MIN_BYTES = 1 * MiB
#: A job whose run was interrupted (service stopped or killed while it ran) is run at most this many times.
MAX_ATTEMPTS = 2


@dataclass
class ServiceConfig:
    """Everything a :class:`~ichd.service.runner.StudyService` needs.

    Attributes:
        data_dir: where the job store (``ichd.sqlite``), the studies' files and ``logs/service.log`` live.
        model: bundled model name, bundle folder or checkpoint (as ``ichd predict --model``).
        workers: studies predicted at once (each worker thread holds its own loaded Predictor); 0 accepts
            uploads but runs nothing (tests).
        token: the bearer token every endpoint but ``/health`` requires; None: no authentication (loopback only).
        device: torch device (``auto``, ``cpu``, ``cuda[:N]``).
        max_upload_bytes: largest request body of ``POST /v1/studies``.
        max_files: most files in one study (multipart parts or zip entries).
        max_unpacked_bytes: largest total uncompressed size of an uploaded zip.
        max_zip_ratio: largest compression ratio of a zip entry or archive (zip bomb guard).
        decode_workers: DICOM decoding processes per read (``ichd predict --workers``); None: the default.
        batch_size: slices per chunk through the CNN.
        poll_interval_s: how often idle workers look for jobs enqueued by another path than this process' API.
        shutdown_grace_s: how long stopping waits for running jobs before handing them back to the queue.
        second_reader: ``"blast-ct"`` to segment every series with BLAST-CT too (``ichd serve --second-reader``;
            per deployment: its volumes go into the results, its label map into the viewer's overlay); None: off.
        blast_ct_models: the BLAST-CT weights folder (None: ``ICHD_BLAST_CT`` or ``models/blast-ct`` beside the
            data folder); blast_ct_ensemble: its weight files to average (None: ``model_1``).
    """

    data_dir: Path
    model: str = "default"
    workers: int = 1
    token: str | None = None
    device: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * MiB
    max_files: int = DEFAULT_MAX_FILES
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_MB * MiB
    max_zip_ratio: float = DEFAULT_MAX_ZIP_RATIO
    decode_workers: int | None = None
    batch_size: int = 16
    poll_interval_s: float = 1.0
    shutdown_grace_s: float = 30.0
    second_reader: str | None = None
    blast_ct_models: Path | None = None
    blast_ct_ensemble: str | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.workers < 0:
            raise InputError(f"--workers must be >= 0, got {self.workers}")
        for name in ("max_upload_bytes", "max_files", "max_unpacked_bytes", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_zip_ratio <= 1:
            raise InputError(f"max_zip_ratio must be > 1, got {self.max_zip_ratio}")
        if self.token is not None:
            check_token(self.token)


def check_token(token: str) -> str:
    """The token, or :class:`InputError` when it is too short or holds whitespace/control characters."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise InputError(f"the service token is {len(token)} characters long; at least {MIN_TOKEN_LENGTH} needed",
                         hint="generate one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise InputError("the service token holds whitespace or control characters",
                         hint="use letters, digits and punctuation only")
    return token


def load_token(token_file: str | os.PathLike[str] | None = None, *,
               environ: dict[str, str] | None = None) -> str | None:
    """The bearer token: the first line of ``token_file`` when given, else ``$ICHD_TOKEN``; None when neither."""
    env = os.environ if environ is None else environ
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot read --token-file {str(path)!r}: {e.strerror or e}",
                             hint="give a readable file holding the token on its first line") from e
        lines = text.strip().splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise InputError(f"--token-file {str(path)!r} is empty", hint="write the token on its first line")
        return check_token(token)
    token = env.get(TOKEN_ENV_VAR, "").strip()
    return check_token(token) if token else None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for everything else."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen on a non-loopback address without a token (:class:`InputError`, exit code 2)."""
    if token is None and not is_loopback(host):
        raise InputError(f"refusing to listen on {host} without a token: anyone who can reach it could read "
                         f"and delete studies",
                         hint=f"set {TOKEN_ENV_VAR} or pass --token-file FILE, or listen on 127.0.0.1 only")
