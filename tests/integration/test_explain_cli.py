"""``ichd explain`` end to end on a real DICOM slice, with an (untrained) registered CNN saved as a checkpoint."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ichd.cli.main import run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from ichd.constants import LABELS
    from ichd.models import create_model
    from ichd.models.checkpoint import save_checkpoint
    from ichd.preprocessing.config import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("resnet18", input_size=64)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pt"
    return save_checkpoint(path, model, preprocess=PreprocessConfig(image_size=64),
                           extra={"thresholds": dict.fromkeys(LABELS, 0.5)})


def test_explain_writes_overlays_and_montage(data_root, checkpoint, tmp_path, capsys) -> None:
    src = data_root / "cq500" / "CQ500-CT-1" / "series-2_2.5-5mm"
    out = tmp_path / "out"
    args = ["explain", str(src), "--model", str(checkpoint), "--classes", "any,SDH", "--threshold", "0.01",
            "--out", str(out), "--device", "cpu"]
    assert run(args) == 0
    [scan_dir] = list(out.iterdir())
    index = json.loads((scan_dir / "explain.json").read_text())
    assert index["n_slices"] == 1 and index["flagged_slices"] == [0]
    assert sorted(f["class"] for f in index["findings"]) == ["any", "subdural"]
    for f in index["findings"]:
        assert Image.open(scan_dir / f["overlay"]).format == "PNG"
    assert Image.open(scan_dir / "montage.png").format == "PNG"
    assert "1 finding" not in capsys.readouterr().err  # two findings reported
    # a second run does not replace the results without --overwrite; bad options are one-line errors
    assert run(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run(args[:-4] + ["--classes", "subdurall", "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert run(args[:6] + ["--method", "cam", "--out", str(tmp_path / "y")]) == 2
