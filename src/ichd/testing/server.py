"""A real ``ichd serve`` process on a loopback port, for tests and benchmarks that need the service as users run
it (its own process, HTTP, the SQLite job store on disk), e.g. to ``kill -9`` it or to load it with many clients.

    with ServeProcess(data_dir, model="default", token=token) as server:
        r = server.client().get("/v1/studies")
    server.kill9()     # SIGKILL the process group: the service and any worker process it started

The process runs ``python -m ichd [-vv] serve --host 127.0.0.1 --port PORT --data-dir DATA --token-file FILE``
in its own process group, with stdout and stderr appended to ``log_path``. Needs ``httpx2`` (a dev dependency),
imported when a client is made.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(what: str, check: Callable[[], Any], *, timeout: float, every: float = 0.2) -> Any:
    """``check()``'s first truthy value, polled every ``every`` s; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def stop_process(proc: subprocess.Popen[Any], *, timeout: float = 20) -> int:
    """Stop ``proc`` if it still runs (SIGTERM, then SIGKILL after ``timeout`` s), reap it; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return int(proc.returncode)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ichd subprocesses: this one, one OpenMP thread, no albumentations update check."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    return env


@dataclass
class ServeProcess:
    """One ``ichd serve`` subprocess (see the module docstring).

    Args:
        data_dir: the service's data folder (kept across :meth:`start` calls: a restart sees the same jobs).
        model: ``--model`` (bundled name, bundle folder or checkpoint).
        token: the bearer token (written to a private token file, never on the command line).
        port: the port; 0 picks a free one at the first :meth:`start` and keeps it for restarts.
        log_path: where stdout/stderr go (appended); default ``DATA_DIR/../serve.log``.
        verbosity: ``-v`` count before ``serve`` (2: debug logging).
        threads: ``--threads`` for torch.
        args: more ``ichd serve`` options (e.g. ``("--workers", "2")``).
    """

    data_dir: Path
    model: str = "default"
    token: str = field(default="", repr=False)
    port: int = 0
    log_path: Path | None = None
    verbosity: int = 0
    threads: int | None = 1
    args: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _token_dir: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def command(self) -> list[str]:
        """The command line (the token file is made on :meth:`start`)."""
        cmd = [sys.executable, "-m", "ichd"]
        if self.verbosity > 0:
            cmd.append("-" + "v" * self.verbosity)
        cmd += ["serve", "--host", self.host, "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--model", self.model, "--device", "cpu"]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        if self.token:
            cmd += ["--token-file", str(self._token_file())]
        return cmd + list(self.args)

    def _token_file(self) -> Path:
        if self._token_dir is None:
            self._token_dir = tempfile.TemporaryDirectory(prefix="ichd-token-")
        path = Path(self._token_dir.name) / "token"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token + "\n")
        return path

    def start(self, timeout: float = 180.0) -> Self:
        """Start the process and wait until ``/health`` says ok; :class:`RuntimeError` (with the log's tail) when
        it exits first or does not come up within ``timeout`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if self.port == 0:
            self.port = free_port(self.host)
        log = self.log_path or Path(self.data_dir).parent / "serve.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=child_env(),
                                         start_new_session=True)
        self.log_path = log
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        import httpx2

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ichd serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx2.get(self.url + "/health", timeout=2.0)
                if r.status_code == 200 and r.json().get("status") == "ok":
                    return
            except (httpx2.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"ichd serve did not come up within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the process' output."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]

    def client(self, timeout: float = 60.0) -> Any:
        """An ``httpx2.Client`` on the service's address, with the token."""
        import httpx2

        return httpx2.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL the process group (no clean-up runs: as a crash or an OOM kill) and reap the process."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a graceful stop: running jobs are handed back), SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        proc = self.proc
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None
        self.proc = None
        return code

    def close(self) -> None:
        """Stop the process and delete the token file."""
        self.stop()
        if self._token_dir is not None:
            self._token_dir.cleanup()
            self._token_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
