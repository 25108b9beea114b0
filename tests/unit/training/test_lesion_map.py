"""ichd train lesion-map: the per-pixel lesion head of a frozen-encoder model, fitted on masks, measured out of
sample, saved in the model's checkpoint and used as its evidence map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ichd.explain.localization import pointing_game
from ichd.testing.factories import phantom_hu
from ichd.training.lesion_map import (
    LesionMapTrainConfig,
    MaskedCT,
    lopo_lesion_maps,
    slice_rows,
    train_lesion_map,
)

SIZE = 128


def _slices() -> list[MaskedCT]:
    """Phantom heads (skull ring, 30 HU brain) with a 70 HU blob at a different place on each slice."""
    out = []
    for i, z in enumerate((-9.0, -4.0, 0.0, 4.0, 9.0, 12.0)):
        hu = phantom_hu(SIZE, SIZE, z=z)
        mask = hu == 70.0
        hu = np.roll(hu, (i % 3 - 1) * 12, axis=1)  # move the head (and its blob) sideways too
        mask = np.roll(mask, (i % 3 - 1) * 12, axis=1)
        out.append(MaskedCT(f"s{i}", f"p{i // 2}", hu.astype(np.float32), mask, (0.8, 0.8)))
    return out


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ichd.models import create_model
    from ichd.models.checkpoint import save_checkpoint
    from ichd.preprocessing.config import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("frozen_encoder", pretrained=True, num_classes=6,
                         encoders=[{"name": "efficientnet_lite0", "input_size": 64}])
    return save_checkpoint(tmp_path_factory.mktemp("cnn") / "cnn.pt", model,
                           preprocess=PreprocessConfig(image_size=64, normalization="half"))


def test_rows_cover_the_head_and_label_the_mask(cnn_path):
    from ichd.models.checkpoint import load_checkpoint
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.training.lesion_map import attach_lesion_map

    ckpt = load_checkpoint(cnn_path)
    cfg = LesionMapTrainConfig(grid=16, blocks=(1, 3))
    attach_lesion_map(ckpt.model, cfg)
    feats, label, head = slice_rows(ckpt.model, PreprocessConfig.from_dict(ckpt.preprocess), _slices()[0])
    assert feats.shape[0] == label.shape[0] == head.shape[0] == 16 * 16
    assert label.any() and head.sum() > label.sum() and not (label & ~head).any()  # the blob lies in the head


def test_lopo_maps_point_at_the_lesion_and_the_head_travels_in_the_checkpoint(cnn_path, tmp_path):
    from ichd.explain.lesion import LesionMap, slice_explainer
    from ichd.explain.pipeline import map_to_image
    from ichd.models.checkpoint import load_checkpoint
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.preprocessing.pipeline import preprocess_hu

    items = _slices()
    m = train_lesion_map(cnn_path, items, tmp_path / "run", LesionMapTrainConfig(grid=32, blocks=(1, 3), C=0.1))
    assert m["slices"] == 6 and m["patients"] == 3
    maps = np.load(tmp_path / "run" / "lopo_maps.npz")["maps"]
    hits = 0
    for item, g in zip(items, maps):
        up = torch.nn.functional.interpolate(torch.from_numpy(g)[None, None], size=(64, 64), mode="bilinear")[0, 0]
        hits += pointing_game(map_to_image(up.numpy(), item.mask.shape), item.mask)
    assert hits >= 5  # out of sample: each map from a head that never saw the slice's patient
    ckpt = load_checkpoint(tmp_path / "run" / "cnn.pt")
    assert ckpt.default_cfg["evidence_map"] == "lesion" and ckpt.model.lesion_head is not None
    explainer = slice_explainer(ckpt.model)
    assert isinstance(explainer, LesionMap)
    x = torch.from_numpy(preprocess_hu(items[2].hu[None], PreprocessConfig.from_dict(ckpt.preprocess)))
    res = explainer.compute(x, ["any", "subdural"])
    assert res.maps.shape == (1, 2, 64, 64) and np.array_equal(res.maps[0, 0], res.maps[0, 1])
    assert res.maps.max() == pytest.approx(1.0)
    # the slice model's outputs are unchanged by the head
    plain = load_checkpoint(cnn_path).model
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), plain(x))
    from ichd.errors import InputError

    with pytest.raises(InputError, match="already holds"):
        train_lesion_map(cnn_path, items, tmp_path / "run")


def test_lopo_needs_two_patients_and_lesion_maps_need_a_lesion_head(cnn_path):
    from ichd.errors import InputError, ModelError
    from ichd.explain.gradcam import GradCAM
    from ichd.explain.lesion import LesionMap, slice_explainer
    from ichd.models.checkpoint import load_checkpoint
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.training.lesion_map import attach_lesion_map

    ckpt = load_checkpoint(cnn_path)
    assert isinstance(slice_explainer(ckpt.model), GradCAM)  # no lesion head: Grad-CAM
    with pytest.raises(ModelError, match="no lesion map head"):
        LesionMap(ckpt.model)
    with pytest.raises(InputError, match="unknown map method"):
        slice_explainer(ckpt.model, "lesoin")
    cfg = LesionMapTrainConfig(grid=16, blocks=(1,))
    attach_lesion_map(ckpt.model, cfg)
    one = [s for s in _slices() if s.patient_id == "p0"]
    with pytest.raises(InputError, match="at least two patients"):
        lopo_lesion_maps(ckpt.model, PreprocessConfig.from_dict(ckpt.preprocess), one, cfg)
