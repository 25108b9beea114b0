"""The BLAST-CT second reader's set-up, errors and helpers (no segmentation run: see
tests/integration/test_second_reader_real.py for that, in the slow set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichd.errors import InputError, ModelError
from ichd.inference import second_reader as sr


def test_parse_models():
    assert sr.parse_models(None) == ("model_1",)
    assert sr.parse_models("model_1, model_3.pt,model_1") == ("model_1", "model_3")
    assert sr.parse_models(["model_6"]) == ("model_6",)
    with pytest.raises(InputError, match="names no model"):
        sr.parse_models(" , ")


def test_default_models_dir(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(sr.MODELS_ENV, str(tmp_path))
    assert sr.default_models_dir() == tmp_path
    monkeypatch.delenv(sr.MODELS_ENV)
    monkeypatch.setenv("ICHD_DATA", str(tmp_path / "data"))
    assert sr.default_models_dir() == tmp_path / "models" / "blast-ct"


def test_missing_or_wrong_weights_say_what_to_do(tmp_path: Path):
    pytest.importorskip("blast_ct", reason="the blast-ct extra is not installed")
    with pytest.raises(ModelError, match="does not exist") as e:
        sr.BlastCT(tmp_path / "nowhere")
    assert e.value.exit_code == 2 and "--blast-ct-models" in str(e.value)
    (tmp_path / "model_3.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"model_1\.pt not found .*it holds: model_3") as e:
        sr.BlastCT(tmp_path)
    assert "--blast-ct-ensemble" in str(e.value)
    with pytest.raises(ModelError, match="not a BLAST-CT v1 state dict"):
        sr.BlastCT(tmp_path, "model_3")
    import torch

    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a BLAST-CT v1 state dict"):
        sr.BlastCT(tmp_path, "other")
    with pytest.raises(InputError, match="multiple of 30"):
        sr.BlastCT(tmp_path, "other", block=45)


def test_unknown_reader_and_none():
    assert sr.load_reader(None) is None and sr.load_reader("none") is None
    with pytest.raises(InputError, match="unknown second reader 'blastct'.*blast-ct"):
        sr.load_reader("blastct")


def test_missing_extra_is_a_dependency_error(monkeypatch):
    import builtins

    from ichd.errors import DependencyError

    real_import = builtins.__import__

    def no_blast(name, *args, **kwargs):
        if name == "blast_ct" or name.startswith("blast_ct."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_blast)
    with pytest.raises(DependencyError, match=r"needs the blast-ct package") as e:
        sr.BlastCT()
    assert 'pip install -e ".[blast-ct]"' in str(e.value)


def test_blocks_cover_the_tiles_on_blast_cts_lattice():
    assert sr.BlastCT._cells((238, 238, 170)) == (8, 8, 6)  # BLAST-CT's s // 30 + 1 tiles per axis
    assert sr.BlastCT._chunks(0, 8, 3) == [(0, 3), (3, 5), (5, 8)]
    assert sr.BlastCT._chunks(2, 4, 3) == [(2, 4)]
    array = np.full((70, 70, 70), -1.0, np.float32)
    array[5, 5, 5] = 0.5
    constant = sr.BlastCT._constant_cells(array, (3, 3, 3), margin=40)
    # tile (i, j, k)'s input window is [30 i - 40, 30 i + 70): the voxel at 5 is in the windows of tiles 0 and 1
    assert constant[2, 2, 2] and not constant[0, 0, 0] and not constant[1, 1, 1] and constant[2, 0, 0]


def test_overlay_and_shown_slices():
    hu = np.full((3, 20, 20), 40.0, np.float32)
    labels = np.zeros((3, 20, 20), np.uint8)
    labels[1, 5:10, 5:10] = 1
    labels[2, 2:4, 2:4] = 4
    labels[0, 0:2, 0:2] = 3  # oedema is not hemorrhage
    rgb = sr.overlay_rgb(hu[1], labels[1])
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[5, 5]) == sr.CLASS_COLORS["iph"]  # the outline is opaque
    assert rgb[7, 7, 0] > rgb[7, 7, 1]  # the inside is tinted red
    assert rgb[15, 15, 0] == rgb[15, 15, 1] == rgb[15, 15, 2]  # gray elsewhere
    assert sr.shown_slices(labels) == [1, 2]
    assert sr.shown_slices(labels, [0], most=2) == [0, 1]


def test_reading_block():
    labels = np.zeros((3, 4, 4), np.uint8)
    labels[1, 0, 0] = 2
    reading = sr.SecondReading(labels=labels, volumes_ml={"iph": 1.234, "eah": 0.0, "oedema": 2.0, "ivh": 0.5},
                               hemorrhage_ml=1.734, models=[{"file": "model_1.pt", "sha256_16": "0" * 16}],
                               seconds=3.0, settings={"threads": 1})
    block = reading.to_dict()
    assert block["volumes_ml"] == {"iph": 1.23, "eah": 0.0, "oedema": 2.0, "ivh": 0.5}
    assert block["hemorrhage_ml"] == 1.73 and block["slices_with_hemorrhage"] == [1]
