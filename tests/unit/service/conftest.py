"""Fixtures for the service tests: a tiny untrained model bundle (tests/model_factories.py), service factories,
upload helpers. Services run their workers as threads in the test process; every service a test starts is
closed by the fixture (TestClient's lifespan)."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def service_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained EfficientNet-Lite0 bundle at 64 px, thresholds 0.5 (fast on the CPU)."""
    from model_factories import make_bundle, make_cnn_checkpoint

    ckpt = make_cnn_checkpoint(tmp_path_factory.mktemp("svc-ckpt") / "cnn.pt")
    return make_bundle(tmp_path_factory.mktemp("svc-bundle") / "test-model", ckpt)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    from model_factories import single_thread_torch

    yield from single_thread_torch()


def make_config(data_dir: Path, bundle: Path | None, **overrides: Any):
    """A fast test configuration: tiny model on the CPU, the test token, quick polling."""
    from ichd.service.config import ServiceConfig

    kwargs: dict[str, Any] = {"data_dir": data_dir, "model": str(bundle) if bundle else "default", "workers": 1,
                              "token": TOKEN, "device": "cpu", "poll_interval_s": 0.05, "shutdown_grace_s": 10.0,
                              "decode_workers": 1}
    kwargs.update(overrides)
    return ServiceConfig(**kwargs)


@pytest.fixture
def client_for(service_bundle: Path) -> Iterator[Callable[..., Any]]:
    """``client_for(data_dir, **config)`` -> a started TestClient (closed at the end of the test)."""
    from fastapi.testclient import TestClient

    from ichd.service.app import create_app
    from ichd.service.runner import StudyService

    opened: list[Any] = []

    def make(data_dir: Path, *, raise_server_exceptions: bool = True, **overrides: Any):
        service = StudyService(make_config(data_dir, service_bundle, **overrides))
        client = TestClient(create_app(service), raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        client.service = service  # type: ignore[attr-defined]
        opened.append(client)
        return client

    yield make
    for client in reversed(opened):
        client.__exit__(None, None, None)


def zip_folder(folder: Path) -> bytes:
    """The files of ``folder`` as zip bytes (relative names)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


def wait_job(client: Any, job_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until done or failed; the job's JSON."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/jobs/{job_id}", headers=AUTH)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in ("done", "failed"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(0.05)


def files_under(root: Path) -> set[str]:
    """Relative paths of every file and folder under ``root``."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture(scope="session")
def h() -> Any:
    """The helpers above as one object (test modules cannot import this conftest by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(TOKEN=TOKEN, AUTH=AUTH, make_config=make_config, zip_folder=zip_folder, wait_job=wait_job,
                           files_under=files_under)
