"""Every CT command on every case of the generated bad-input corpus (scripts/make_corpus.py, tests/corpus/).

For each case: exit 0 or 2 as the case expects, never a traceback, a one-line error on stderr for exit 2, a
warning in the result for ``warning`` cases, nothing written outside the command's output folder, and a time
bound per run. ``ingest``, ``predict``, ``preprocess`` and ``explain`` run on every case (the 10,000-file and
2,000-slice cases: ingest only); the service's upload in ``tests/unit/service/test_upload_corpus.py``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from ichd.cli.main import run
from ichd.utils.logging import LOGGER_NAME

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_corpus", ROOT / "scripts" / "make_corpus.py")
make_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_corpus)  # type: ignore[union-attr]

CASES = list(make_corpus.CASES)
EXPECT = {name: make_corpus.CASES[name][0] for name in CASES}
FULL = [c for c in CASES if c not in make_corpus.INGEST_ONLY]
ABS_ESCAPE = Path("/tmp/ichd-corpus-abs")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    from model_factories import single_thread_torch

    yield from single_thread_torch()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    make_corpus.generate(out)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_factories import make_bundle, make_cnn_checkpoint

    base = tmp_path_factory.mktemp("model")
    return make_bundle(base / "test-model", make_cnn_checkpoint(base / "cnn.pt"))


#: Folders of the repository that other processes of a developer's machine write while the tests run (training
#: runs, caches, background benchmarks, git itself): left out of the "nothing written outside" check, which would
#: otherwise fail on their writes. No ichd command in this module is given a path there.
BUSY = {str(ROOT / name) for name in (".git", "runs", "cache", "benchmarks/results", ".venv", ".pytest_cache")}


def _listing(*roots: Path, skip: Path) -> set[str]:
    """Every path under ``roots`` (symlinks not followed) except ``skip`` and below, and :data:`BUSY`."""
    found: set[str] = set()
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) != str(skip)
                       and os.path.join(dirpath, d) not in BUSY]
            found.update(os.path.join(dirpath, n) for n in dirs + files)
    return found


def _check(name: str, corpus: Path, argv_of, capsys: pytest.CaptureFixture[str], tmp_path: Path,
           *, warn_in, one_line: bool = True) -> None:
    """Run ``argv_of(input, out)`` on case ``name`` and check the outcome against its expectation.

    ``one_line``: exit 2 prints exactly one line on stderr; otherwise (``preprocess``, which logs each failed
    input before its summary) the last line is the error.
    """
    entry = json.loads((corpus / name / "case.json").read_text())
    inp = corpus / name / entry["input"]
    out = tmp_path / "out"
    roots = (corpus, tmp_path, ROOT)
    before = _listing(*roots, skip=out)
    capsys.readouterr()
    # configure_logging binds its handler to the sys.stderr of the first run: an earlier test's closed capture
    logging.getLogger(LOGGER_NAME).handlers.clear()
    code = run(["-q", *argv_of(inp, out), *entry.get("args", [])])
    cap = capsys.readouterr()
    after = _listing(*roots, skip=out)
    assert "Traceback" not in cap.out + cap.err, cap.err[-2000:]
    assert after == before, f"written outside {out}: {sorted(after ^ before)[:5]}"
    assert not ABS_ESCAPE.exists()
    expect = entry["expect"]
    if expect == "error":
        assert code == 2, f"{name}: expected exit 2, got {code}: {cap.err[-500:]}"
        lines = [ln for ln in cap.err.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("ichd: error: "), cap.err[-1000:]
        assert len(lines) == 1 or not one_line, cap.err[-1000:]
    else:
        assert code == 0, f"{name}: expected exit 0, got {code}: {cap.err[-500:]}"
        if expect == "warning" and warn_in is not None:
            assert warn_in(cap.out, out) > 0, f"{name}: no warning reported"
    if out.exists():
        shutil.rmtree(out)


def _ingest_warnings(stdout: str, out: Path) -> int:
    return sum(len(s["warnings"]) for s in json.loads(stdout)["series"])


def _predict_warnings(stdout: str, out: Path) -> int:
    return len(json.dumps(json.loads((out / "prediction.json").read_text())).split('"code"')) - 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", CASES)
def test_ingest(name: str, corpus: Path, capsys, tmp_path: Path) -> None:
    _check(name, corpus, lambda i, o: ["ingest", "--json", "--workers", "1", str(i)], capsys, tmp_path,
           warn_in=_ingest_warnings)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", FULL)
def test_predict(name: str, corpus: Path, model: Path, capsys, tmp_path: Path) -> None:
    _check(name, corpus, lambda i, o: ["predict", str(i), "--model", str(model), "--out", str(o), "--format", "json",
                                       "--no-gradcam", "--device", "cpu", "--workers", "1"],
           capsys, tmp_path, warn_in=_predict_warnings)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", FULL)
def test_preprocess(name: str, corpus: Path, capsys, tmp_path: Path) -> None:
    _check(name, corpus, lambda i, o: ["preprocess", str(i), "--out", str(o), "--size", "32", "--workers", "1"],
           capsys, tmp_path, warn_in=None, one_line=False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", FULL)
def test_explain(name: str, corpus: Path, model: Path, capsys, tmp_path: Path) -> None:
    _check(name, corpus, lambda i, o: ["explain", str(i), "--out", str(o), "--model", str(model), "--device", "cpu",
                                       "--threshold", "0.01", "--classes", "any", "--workers", "1"],
           capsys, tmp_path, warn_in=None)


def test_corpus_size() -> None:
    assert len(CASES) >= 40
    assert set(EXPECT.values()) <= {"error", "warning", "ok"}


#: Memory allowed per file of ``series_2000_slices`` above the one-slice baseline (header, geometry, bookkeeping;
#: ~4.5 KB measured on 2026-12-01); see "Memory bound" in tests/corpus/README.md.
MEMORY_PER_FILE = 10 * 1024


def _peak_rss(argv: list[str]) -> int:
    """Peak RSS in bytes of the largest process of ``ichd -q ARGV`` (itself or a worker), measured in a fresh wrapper
    process so that no other test's subprocess counts (``RUSAGE_CHILDREN`` keeps the maximum of all waited-for
    descendants)."""
    import subprocess
    import sys

    wrapper = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
               "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "ichd", "-q", *argv], check=True,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    code, kib = done.stdout.split()
    assert code == "0", done.stderr[-1000:]
    return int(kib) * 1024  # Linux reports KiB


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["default-workers", "workers-1"])
def test_ingest_2000_slices_stays_within_memory_bound(corpus: Path, workers: list[str]) -> None:
    """Peak RSS of ``ichd ingest`` on 2,000 slices <= its peak on one slice + 4 x the float32 volume + 10 KiB per
    file: memory grows with the volume and a small per-file record, never with whole datasets kept per file."""
    def case_input(name: str) -> str:
        return str(corpus / name / json.loads((corpus / name / "case.json").read_text())["input"])

    baseline = _peak_rss(["ingest", "--json", *workers, case_input("single_slice")])
    peak = _peak_rss(["ingest", "--json", *workers, case_input("series_2000_slices")])
    n, volume = 2000, 2000 * 8 * 8 * 4
    bound = baseline + 4 * volume + n * MEMORY_PER_FILE
    assert peak <= bound, (f"peak RSS {peak / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB "
                           f"(baseline {baseline / 2**20:.1f} MiB)")
