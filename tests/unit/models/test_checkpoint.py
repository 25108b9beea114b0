"""Checkpoints: round trip restores identical outputs; metadata travels; bad files give clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ichd.constants import LABELS
from ichd.errors import InputError, ModelError
from ichd.models import create_model
from ichd.models.checkpoint import (
    load_checkpoint,
    model_from_checkpoint_dict,
    read_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = create_model("efficientnet_lite0", pretrained=True, input_size=64, dropout=0.3)
    with torch.no_grad():  # make the head non-trivial
        m.classifier.weight.normal_(std=0.2)
    return m.eval()


def test_round_trip_identical_outputs(tmp_path: Path, model) -> None:
    x = torch.rand(3, 3, 64, 64)
    path = save_checkpoint(tmp_path / "m.pt", model, config={"optim": {"lr": 1e-4}},
                           preprocess={"image_size": 64}, metrics={"val/auc/any": 0.9}, fold=2, epoch=3,
                           extra={"val_patients": ["ctich-049"]})
    ckpt = load_checkpoint(path)
    assert not ckpt.model.training
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), model(x))
        assert torch.equal(ckpt.model.forward_features(x), model.forward_features(x))
    assert ckpt.model_name == "efficientnet_lite0" and ckpt.labels == LABELS
    assert ckpt.config == {"optim": {"lr": 1e-4}} and ckpt.preprocess == {"image_size": 64}
    assert ckpt.metrics["val/auc/any"] == 0.9 and ckpt.fold == 2 and ckpt.epoch == 3
    assert ckpt.extra["val_patients"] == ["ctich-049"]
    assert ckpt.default_cfg["input_size"] == 64 and ckpt.model.model_kwargs["dropout"] == 0.3
    assert ckpt.raw["ichd_version"]

    again = model_from_checkpoint_dict(read_checkpoint(path))
    with torch.no_grad():
        assert torch.equal(again.model(x), model(x))


def test_half_weights(tmp_path: Path, model) -> None:
    full = save_checkpoint(tmp_path / "f.pt", model)
    half = save_checkpoint(tmp_path / "h.pt", model, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    ckpt = load_checkpoint(half)
    assert next(ckpt.model.parameters()).dtype == torch.float32
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # float16 keeps ~3 significant digits per weight: logits agree to about 1 %.
        assert torch.allclose(ckpt.model(x), model(x), rtol=2e-2, atol=0.2)


def test_bad_files(tmp_path: Path, model) -> None:
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ModelError, match="not an ichd checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    raw = torch.load(save_checkpoint(tmp_path / "m.pt", model), weights_only=False)
    raw["labels"] = list(reversed(LABELS))
    torch.save(raw, tmp_path / "swapped.pt")
    with pytest.raises(ModelError, match="label order"):
        load_checkpoint(tmp_path / "swapped.pt")
    raw["labels"] = list(LABELS)
    raw["state_dict"].pop("classifier.bias")
    with pytest.raises(ModelError, match="do not fit"):
        model_from_checkpoint_dict(raw, where="x")


def test_save_needs_registry_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="create_model"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2))


def test_damaged_checkpoints_are_refused_never_loaded(tmp_path: Path, model) -> None:
    """A truncated file fails to open; changed bytes inside a tensor (torch.load does not notice them) fail the
    digest written with the file; a checkpoint from before the digest still loads."""
    opt = torch.optim.Adam(model.parameters())
    path = save_checkpoint(tmp_path / "last.pt", model, epoch=1,
                           training_state={"optimizer": opt.state_dict(), "rng": torch.get_rng_state()})
    raw = read_checkpoint(path)
    assert str(raw["digest"]).startswith("sha256:") and len(raw["digest"]) == 7 + 64
    data = path.read_bytes()

    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot read checkpoint") as err:
        read_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in err.value.message and "truncated" in (err.value.hint or "")

    # flip bytes in the middle of the largest stored tensor (same size, a valid zip: torch.load accepts it)
    import zipfile

    with zipfile.ZipFile(path) as zf:
        big = max(zf.infolist(), key=lambda i: i.file_size)
        assert big.compress_type == zipfile.ZIP_STORED
        name_len, extra_len = (int.from_bytes(data[big.header_offset + k:big.header_offset + k + 2], "little")
                               for k in (26, 28))  # the local header's own lengths
        start = big.header_offset + 30 + name_len + extra_len
    flipped = bytearray(data)
    for k in range(start + big.file_size // 2, start + big.file_size // 2 + 8):
        flipped[k] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    torch.load(tmp_path / "flipped.pt", weights_only=False)  # loads silently: only the digest tells
    with pytest.raises(ModelError, match="damaged"):
        load_checkpoint(tmp_path / "flipped.pt")

    legacy = dict(raw)
    del legacy["digest"]
    torch.save(legacy, tmp_path / "legacy.pt")
    assert load_checkpoint(tmp_path / "legacy.pt").epoch == 1
