"""Coverage-guided fuzzing (atheris / libFuzzer) of ichd's CT readers: DICOM, NIfTI, PNG/JPG slices and zips.

Usage::

    pip install atheris                       # not in any extra: a fuzzing tool, not a test dependency
    python fuzz/fuzz_readers.py dicom --seconds 600
    python fuzz/fuzz_readers.py all --seconds 480 --out fuzz/out     # each target in turn
    python fuzz/fuzz_readers.py dicom --seeds-only                   # just write the seed corpus

Each target writes the fuzzer's bytes to one file (or, for ``zip``, an archive) in a private temporary folder and
calls :func:`ichd.io.read_ct` on it, the function every command that takes CT goes through. The contract is the
one the bad-input corpus checks: it returns series, or raises :class:`ichd.errors.IchdError` (a typed error the
CLI prints in one line with exit code 2). Anything else — another exception, a crash of the interpreter, a hang
past ``-timeout`` or memory past ``-rss_limit_mb`` — is a finding: libFuzzer stops and saves the input as
``OUT/<target>/crash-<sha1>`` (or ``timeout-``/``oom-``); the run is then continued, so one finding does not
end the time budget, and ``OUT/<target>/report.json`` lists executions and findings.

Seeds are generated (nothing hand-placed): small valid inputs of every kind the reader takes, from
:mod:`ichd.testing.factories` (DICOM in every transfer syntax ichd decodes, Enhanced CT), nibabel (NIfTI),
PIL (PNG/JPG) and zipfile. ichd, pydicom and nibabel are instrumented for coverage. Every finding that is a bug
becomes a case of the bad-input corpus (``scripts/make_corpus.py``) once fixed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

TARGETS = ("dicom", "nifti", "image", "zip")
#: Window of the PNG/JPG target's slices (level, width), as a user passes ``--window``.
IMAGE_WINDOW = "40,80"
#: Bounds passed to libFuzzer: a run of one input, the largest input, the process memory.
TIMEOUT_S = 30
MAX_LEN = 1 << 16
RSS_LIMIT_MB = 4096


# ------------------------------------------------------------------------------------------------------- seeds


def _dicom_seeds() -> dict[str, bytes]:
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        RLELossless,
    )

    from ichd.testing.factories import make_ct_slice, make_multiframe_ct, to_bytes

    seeds = {}
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
               JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1):
        seeds[f"ct_{ts.keyword or ts}"] = to_bytes(make_ct_slice(rows=32, columns=32, transfer_syntax=ts))
    seeds["ct_monochrome1_padding"] = to_bytes(make_ct_slice(rows=16, columns=16, monochrome1=True,
                                                             padding_value=-2000))
    seeds["ct_bad_intercept"] = to_bytes(make_ct_slice(rows=16, columns=16, bad_intercept=True))
    seeds["enhanced_ct"] = to_bytes(make_multiframe_ct(3, rows=16, columns=16)[0])
    return seeds


def _nifti_seeds() -> dict[str, bytes]:
    import gzip

    import nibabel as nib
    import numpy as np

    from ichd.testing.factories import phantom_hu

    volume = np.stack([phantom_hu(16, 16, z) for z in (0.0, 5.0, 10.0)], axis=-1).astype(np.int16)
    seeds = {}
    for name, image in (("int16", nib.Nifti1Image(volume, np.diag([0.5, 0.5, 5.0, 1.0]))),
                        ("float32", nib.Nifti1Image(volume.astype(np.float32), np.diag([0.5, 0.5, 5.0, 1.0]))),
                        ("nifti2", nib.Nifti2Image(volume, np.diag([0.5, 0.5, 5.0, 1.0])))):
        raw = image.to_bytes()
        seeds[f"{name}.nii"] = raw
        seeds[f"{name}.nii.gz"] = gzip.compress(raw, mtime=0)
    return seeds


def _image_seeds() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    from ichd.testing.factories import phantom_hu

    gray = np.clip((phantom_hu(16, 16) - 0.0) / 80.0 * 255.0, 0, 255).astype(np.uint8)
    seeds = {}
    for fmt in ("PNG", "JPEG"):
        for mode in ("L", "RGB"):
            buf = io.BytesIO()
            Image.fromarray(gray).convert(mode).save(buf, format=fmt)
            seeds[f"{mode}.{fmt.lower()}"] = buf.getvalue()
    return seeds


def _zip_seeds() -> dict[str, bytes]:
    from ichd.testing.factories import make_ct_series, to_bytes

    seeds = {}
    for method, name in ((zipfile.ZIP_STORED, "stored"), (zipfile.ZIP_DEFLATED, "deflated")):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", method) as zf:
            for k, ds in enumerate(make_ct_series(3, rows=16, columns=16)):
                zf.writestr(f"study/series/IM{k:04d}.dcm", to_bytes(ds))
        seeds[name] = buf.getvalue()
    return seeds


SEEDS: dict[str, Callable[[], dict[str, bytes]]] = {
    "dicom": _dicom_seeds, "nifti": _nifti_seeds, "image": _image_seeds, "zip": _zip_seeds}


def write_seeds(target: str, folder: Path) -> int:
    """Write ``target``'s seeds into ``folder`` (named by content hash, as libFuzzer does); returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[target]()
    for data in seeds.values():
        (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(seeds)


# ------------------------------------------------------------------------------------------------------ harness


def _suffix(target: str, data: bytes) -> str:
    if target == "dicom":
        return ".dcm"
    if target == "zip":
        return ".zip"
    if target == "nifti":
        return ".nii.gz" if data[:2] == b"\x1f\x8b" else ".nii"
    return ".jpg" if data[:2] == b"\xff\xd8" else ".png"


def make_one_input(target: str, workdir: Path) -> Callable[[bytes], None]:
    """The function libFuzzer calls with each input for ``target``."""
    from ichd.errors import IchdError
    from ichd.io import read_ct

    def one_input(data: bytes) -> None:
        folder = workdir / "in"
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        path = folder / f"input{_suffix(target, data)}"
        path.write_bytes(data)
        try:
            if target == "image":
                read_ct(folder, window=IMAGE_WINDOW, workers=1)
            else:
                read_ct(path, workers=1)
        except IchdError:
            pass  # the contract: a typed error the CLI reports in one line

    return one_input


def _fuzz(target: str, corpus: Path, artifacts: Path, libfuzzer_args: list[str]) -> None:
    """Run atheris in this process (called in a child by :func:`run_target`); never returns normally."""
    import atheris

    with atheris.instrument_imports(include=["ichd", "pydicom", "nibabel"]):
        import ichd.io
        import ichd.io.dicom
        import ichd.io.images
        import ichd.io.nifti  # noqa: F401

    from ichd.utils.progress import set_progress_enabled

    set_progress_enabled(False)
    with tempfile.TemporaryDirectory(prefix=f"ichd-fuzz-{target}-") as tmp:
        one_input = make_one_input(target, Path(tmp))
        atheris.Setup([sys.argv[0], str(corpus), f"-artifact_prefix={artifacts}/", f"-timeout={TIMEOUT_S}",
                       f"-max_len={MAX_LEN}", f"-rss_limit_mb={RSS_LIMIT_MB}", "-print_final_stats=1",
                       *libfuzzer_args], one_input)
        atheris.Fuzz()


_STATS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_COV = re.compile(r"#\d+\s+\w+\s+cov: (\d+) ft: (\d+)")


def run_target(target: str, seconds: float, out: Path) -> dict[str, object]:
    """Fuzz ``target`` for ``seconds`` (restarting after each finding); returns the report."""
    corpus, artifacts = out / target / "corpus", out / target
    n_seeds = write_seeds(target, corpus)
    log_path = out / target / "fuzz.log"
    executions, restarts, coverage = 0, 0, None
    t0 = time.monotonic()
    with log_path.open("a") as log:
        while (left := seconds - (time.monotonic() - t0)) > 5:
            cmd = [sys.executable, __file__, target, "--child", "--out", str(out), "--",
                   f"-max_total_time={int(left)}"]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  errors="replace", check=False)
            log.write(proc.stdout)
            stats = _STATS.findall(proc.stdout) or [m[0] for m in _DONE.findall(proc.stdout)]
            executions += int(stats[-1]) if stats else 0
            cov = _COV.findall(proc.stdout)
            coverage = {"cov": int(cov[-1][0]), "ft": int(cov[-1][1])} if cov else coverage
            if proc.returncode == 0:
                break
            restarts += 1
    findings = sorted(p.name for p in artifacts.iterdir() if p.name.split("-")[0] in ("crash", "timeout", "oom",
                                                                                        "leak", "slow"))
    report = {"target": target, "seconds": round(time.monotonic() - t0, 1), "executions": executions,
              "seeds": n_seeds, "corpus_size": sum(1 for _ in corpus.iterdir()), "restarts_after_findings": restarts,
              "coverage": coverage, "findings": findings}
    (out / target / "report.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=(*TARGETS, "all"), help="reader to fuzz, or all of them in turn")
    parser.add_argument("--seconds", type=float, default=600, help="time budget per target (default 600)")
    parser.add_argument("--out", type=Path, default=Path("fuzz/out"),
                        help="corpus, findings, log and report.json per target (default fuzz/out)")
    parser.add_argument("--seeds-only", action="store_true", help="write the seed corpus and stop")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    targets = TARGETS if args.target == "all" else (args.target,)
    if args.child:
        _fuzz(args.target, args.out / args.target / "corpus", args.out / args.target, extra)
        return 0
    if args.seeds_only:
        for target in targets:
            print(f"{target}: {write_seeds(target, args.out / target / 'corpus')} seeds")
        return 0
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    reports = [run_target(target, args.seconds, args.out) for target in targets]
    for r in reports:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
