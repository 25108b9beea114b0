"""``ichd predict`` end to end through the CLI entry point: results, warnings, and bad input (exit 2, one line,
no traceback, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ichd.cli.main import run
from ichd.inference.report_json import validate_result
from ichd.testing.factories import make_ct_series, write_series


def _predict(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(["-q", "predict", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _series(folder: Path, n: int = 3) -> Path:
    write_series(folder, make_ct_series(n, rows=48, columns=48))
    return folder


def test_json_goes_to_stdout(tmp_path: Path, test_bundle: Path, capsys):
    code, out, err = _predict(capsys, str(_series(tmp_path / "ct")), "--model", str(test_bundle), "--device", "cpu")
    assert code == 0, err
    data = json.loads(out)
    validate_result(data)
    assert data["n_slices"] == 3 and data["model"]["name"] == "test-model"


def test_files_are_written_with_a_summary_on_stderr(tmp_path: Path, test_bundle: Path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = _predict(capsys, str(_series(tmp_path / "ct")), "--model", str(test_bundle), "--out",
                              str(out_dir), "--format", "json,html,dicom", "--no-gradcam")
    assert code == 0, err
    assert out == "" and "wrote" in err and "any=" in err
    assert (out_dir / "prediction.json").is_file() and (out_dir / "report.html").is_file()
    assert (out_dir / "dicom" / "sr.dcm").is_file()
    code, _, err = _predict(capsys, str(tmp_path / "ct"), "--model", str(test_bundle), "--out", str(out_dir))
    assert code == 2 and "--overwrite" in err


def test_corrupt_files_are_skipped_and_listed(tmp_path: Path, test_bundle: Path, capsys):
    folder = _series(tmp_path / "ct", 4)
    (folder / "broken.dcm").write_bytes((folder / "IM0000.dcm").read_bytes()[:400])
    (folder / "notes.txt").write_text("not an image")
    code, out, err = _predict(capsys, str(folder), "--model", str(test_bundle))
    assert code == 0, err
    data = json.loads(out)
    assert data["n_slices"] == 4
    skipped = [w for w in data["warnings"] if w["code"].startswith("skipped")]
    assert any("broken.dcm" in f for w in skipped for f in w["files"])


def test_one_slice_gives_a_result_with_a_warning(tmp_path: Path, test_bundle: Path, capsys):
    code, out, err = _predict(capsys, str(_series(tmp_path / "one", 1)), "--model", str(test_bundle))
    assert code == 0, err
    data = json.loads(out)
    assert data["n_slices"] == 1 and "single_slice" in [w["code"] for w in data["warnings"]]


@pytest.mark.parametrize("case", ["empty_folder", "no_ct", "missing_path", "unknown_model", "unknown_bundle",
                                  "html_without_out", "bad_format", "demo_and_input", "no_input"])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, test_bundle: Path, capsys, case: str):
    good = _series(tmp_path / "ct")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_ct = tmp_path / "no_ct"
    no_ct.mkdir()
    (no_ct / "readme.txt").write_text("hello")
    (no_ct / "data.csv").write_text("a,b\n1,2\n")
    model = ["--model", str(test_bundle)]
    args = {
        "empty_folder": [str(empty), *model],
        "no_ct": [str(no_ct), *model],
        "missing_path": [str(tmp_path / "nope"), *model],
        "unknown_model": [str(good), "--model", str(tmp_path / "missing.pt")],
        "unknown_bundle": [str(good), "--model", "no-such-model"],
        "html_without_out": [str(good), *model, "--format", "html"],
        "bad_format": [str(good), *model, "--format", "pdf"],
        "demo_and_input": [str(good), "--demo", *model],
        "no_input": [*model],
    }[case]
    out_dir = tmp_path / "out"
    code, out, err = _predict(capsys, *args, "--out", str(out_dir)) if case in ("empty_folder", "no_ct") \
        else _predict(capsys, *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ichd: error:"), err
    assert "Traceback" not in err and out == ""
    assert not out_dir.exists()


def test_demo_runs_on_a_fresh_install(tmp_path: Path, test_bundle: Path, capsys):
    from ichd.paths import package_resource

    if not package_resource("resources", "demo").exists():
        pytest.skip("the demo study is not in this checkout yet")
    out_dir = tmp_path / "demo"
    code, _, err = _predict(capsys, "--demo", "--model", str(test_bundle), "--out", str(out_dir), "--no-gradcam")
    assert code == 0, err
    data = json.loads((out_dir / "prediction.json").read_text())
    assert data["input_kind"] == "ctich" and data["n_slices"] > 10
    assert (out_dir / "report.html").stat().st_size > 10_000


def test_default_model_on_the_demo(tmp_path: Path, capsys):
    """The README's first command: the shipped default model on the shipped demo study."""
    from ichd.errors import ModelError
    from ichd.models.bundled import get_bundled

    try:
        bundle = get_bundled("default")
    except ModelError:
        pytest.skip("no bundled default model in this checkout")
    out_dir = tmp_path / "demo"
    code, _, err = _predict(capsys, "--demo", "--out", str(out_dir))
    assert code == 0, err
    data = json.loads((out_dir / "prediction.json").read_text())
    validate_result(data)
    assert data["model"] == {"name": bundle.name, "version": bundle.version, "sha256": bundle.sha256,
                             "scan_rule": data["model"]["scan_rule"], "tta": False}
    assert data["thresholds"] == pytest.approx(bundle.thresholds, abs=1e-6)
    html = (out_dir / "report.html").read_text()
    assert bundle.name in html and "Not for clinical use" in html


def test_thin_slices_are_read_as_slabs_unless_no_slabs(tmp_path: Path, test_bundle: Path, capsys):
    write_series(tmp_path / "thin", make_ct_series(8, spacing=1.25, rows=48, columns=48))
    code, out, err = _predict(capsys, str(tmp_path / "thin"), "--model", str(test_bundle), "--device", "cpu")
    assert code == 0, err
    data = json.loads(out)
    validate_result(data)
    assert [sl["source_slices"] for sl in data["slabs"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert any(w["code"] == "thin_slices_as_slabs" for w in data["warnings"])
    code, out, err = _predict(capsys, str(tmp_path / "thin"), "--model", str(test_bundle), "--device", "cpu",
                              "--no-slabs")
    assert code == 0, err
    assert "slabs" not in json.loads(out)
