"""Model bundles: manifest, sha256 check at load, lookup by name/alias, listing of the shipped bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ichd.constants import LABELS
from ichd.errors import ModelError
from ichd.models import bundled
from ichd.models.bundled import get_bundled, read_bundle, sha256_file, write_bundle


def test_write_and_read_bundle(bundle_dir: Path, cnn_checkpoint: Path):
    b = read_bundle(bundle_dir)
    assert b.name == "test-model" and b.version == "0.0.1"
    assert b.files["cnn"].read_bytes() == cnn_checkpoint.read_bytes()
    assert b.sha256 == sha256_file(cnn_checkpoint)  # one file: the digest is that file's
    assert b.thresholds == dict.fromkeys(LABELS, 0.5)
    b.verify()
    info = b.info()
    assert info["files"]["cnn"]["bytes"] == cnn_checkpoint.stat().st_size
    assert "Random weights" in b.model_card()


def test_sha256_mismatch_is_a_model_error(bundle_dir: Path, tmp_path: Path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    with open(copy / "cnn.pt", "r+b") as f:  # flip one byte
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="sha256"):
        read_bundle(copy).verify()
    (copy / "cnn.pt").unlink()
    with pytest.raises(ModelError, match="missing"):
        read_bundle(copy).verify()


def test_several_files_get_one_combined_digest(cnn_checkpoint: Path, seq_checkpoint: Path, tmp_path: Path):
    b = write_bundle(tmp_path / "two", name="two", version="1", files={"cnn": cnn_checkpoint, "sequence": seq_checkpoint},
                     thresholds=dict.fromkeys(LABELS, 0.5), model_card="x")
    digests = {sha256_file(cnn_checkpoint), sha256_file(seq_checkpoint)}
    assert b.sha256 not in digests and len(b.sha256) == 64


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("thresholds"), "thresholds"),
    (lambda m: m["thresholds"].pop("subdural"), "subdural"),
    (lambda m: m.update(format="other"), "not an ichd model bundle"),
    (lambda m: m["files"].update(extra={"path": "x.pt", "sha256": "0" * 64}), "unknown file role"),
    (lambda m: m["files"]["cnn"].update(path="../cnn.pt"), "relative"),
    (lambda m: m.update(format_version=99), "newer"),
    (lambda m: m.update(training_sources="ct-ich"), "training_sources must be a list"),
    (lambda m: m.update(training_sources=[{"patients": "all"}]), "training_sources must be a list"),
    (lambda m: m.update(training_sources=[{"source": "ct-ich", "patients": "some"}]), "patients"),
    (lambda m: m.update(training_sources=[{"source": "ct-ich", "patients": [True]}]), "patients"),
])
def test_bad_manifests_are_rejected(bundle_dir: Path, tmp_path: Path, change, message):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    change(m)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match=message):
        read_bundle(tmp_path)


def test_lookup_by_name_and_alias(bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "models"
    write_bundle(root / "m1", name="m1", version="1", files={"cnn": read_bundle(bundle_dir).files["cnn"]},
                 thresholds=dict.fromkeys(LABELS, 0.5), model_card="x", aliases=("default",))
    (root / "half-written").mkdir()  # no manifest: never listed
    monkeypatch.setattr(bundled, "bundled_models_dir", lambda: root)
    assert [b.name for b in bundled.list_bundled()] == ["m1"]
    assert get_bundled("default").name == "m1" and get_bundled("m1").name == "m1"
    with pytest.raises(ModelError, match="did you mean 'm1'"):
        get_bundled("m2")
    # windowed PNG/JPG input: "default" stands for the windowed variant only when one is installed
    assert bundled.model_for_input("default", windowed=True) == "default"
    write_bundle(root / "m1w", name="m1w", version="1", files={"cnn": read_bundle(bundle_dir).files["cnn"]},
                 thresholds=dict.fromkeys(LABELS, 0.5), model_card="x", aliases=(bundled.WINDOWED_ALIAS,))
    assert bundled.model_for_input("default", windowed=True) == "default-windowed"
    assert get_bundled(bundled.model_for_input("default", windowed=True)).name == "m1w"
    assert bundled.model_for_input("default", windowed=False) == "default"
    assert bundled.model_for_input("m1", windowed=True) == "m1"  # an explicit model is never replaced


def test_no_bundles_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bundled, "bundled_models_dir", lambda: tmp_path / "none")
    assert bundled.list_bundled() == []
    with pytest.raises(ModelError, match="ships no model bundles"):
        get_bundled("default")


def test_shipped_bundles_have_valid_manifests_and_hashes():
    for b in bundled.list_bundled():
        b.verify()
        assert b.model_card().strip(), f"bundle {b.name} has no model card"
        assert b.files["cnn"].stat().st_size < 20 * 1024 * 1024, "bundled weights must stay small"


def test_training_sources_say_which_patients_were_trained_on(cnn_checkpoint: Path, tmp_path: Path):
    sources = [{"source": "ct-ich", "patients": "all"}, {"source": "rsna-series", "patients": ["ID_a", "ID_b"]}]
    b = write_bundle(tmp_path / "b", name="b", version="1", files={"cnn": cnn_checkpoint},
                     thresholds=dict.fromkeys(LABELS, 0.5), model_card="x", extra={"training_sources": sources})
    assert read_bundle(b.root).training_sources == sources and b.info()["training_sources"] == sources
    assert b.trained_on("ct-ich", "071") is True and b.trained_on("CT-ICH", 71) is True  # names and ids normalised
    assert b.trained_on("ctich") is True
    assert b.trained_on("rsna-series", "id_b") is True and b.trained_on("rsna-series", "ID_c") is False
    assert b.trained_on("cq500", "CQ500-CT-0") is False  # listed sources are exhaustive
    listed = write_bundle(tmp_path / "p", name="p", version="1", files={"cnn": cnn_checkpoint},
                          thresholds=dict.fromkeys(LABELS, 0.5), model_card="x",
                          extra={"training_sources": [{"source": "ct-ich", "patients": ["049", 50]}]})
    assert listed.trained_on("ct-ich", "50") is True and listed.trained_on("ct-ich", "071") is False
    unknown = write_bundle(tmp_path / "u", name="u", version="1", files={"cnn": cnn_checkpoint},
                           thresholds=dict.fromkeys(LABELS, 0.5), model_card="x")
    assert unknown.training_sources is None and unknown.trained_on("ct-ich", "071") is None


def test_shipped_default_bundle_lists_its_training_data():
    try:
        b = get_bundled("default")
    except ModelError:
        pytest.skip("no bundled default model in this checkout")
    assert b.training_sources is not None, "the shipped bundle must list training_sources"
    assert b.trained_on("ct-ich", "071") is True  # the demo study is CT-ICH patient 071


def test_exactly_one_shipped_bundle_is_the_default():
    owners = [b.name for b in bundled.list_bundled() if "default" in b.aliases]
    assert len(owners) <= 1, f"several shipped bundles carry the alias 'default': {owners}"
    names = [b.name for b in bundled.list_bundled()]
    aliases = [a for b in bundled.list_bundled() for a in b.aliases]
    assert len(set(names + aliases)) == len(names + aliases), "bundle names and aliases must be unique"
