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


class _WindowCache:
    """What :func:`negative_rows` reads of a training cache: ``config.windows`` and ``slice_image``."""

    def __init__(self, hus: dict[str, np.ndarray], cfg) -> None:
        from ichd.preprocessing.pipeline import preprocess_hu

        self.config = cfg
        self.images = {k: preprocess_hu(v[None], cfg)[0] for k, v in hus.items()}

    def slice_image(self, slice_id: str) -> np.ndarray:
        return self.images[slice_id].copy()


def test_negative_rows_sample_head_cells_of_bleed_free_slices_and_lower_their_map(cnn_path):
    from ichd.models.checkpoint import load_checkpoint
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.preprocessing.head_mask import head_mask
    from ichd.training.lesion_map import (
        _probabilities,
        attach_lesion_map,
        cell_mask,
        fit_lesion_head,
        negative_rows,
        window_head_mask,
    )

    ckpt = load_checkpoint(cnn_path)
    cfg = LesionMapTrainConfig(grid=16, blocks=(1, 3), C=0.1)
    attach_lesion_map(ckpt.model, cfg)
    pre = PreprocessConfig.from_dict(ckpt.preprocess)
    # bleed-free phantoms: the same heads with the 70 HU blob turned into brain, plus a bright 200 HU spot
    # (a calcification) the masks never show
    clean = {}
    for i, z in enumerate((-6.0, 0.0, 6.0)):
        hu = phantom_hu(SIZE, SIZE, z=z)
        hu[hu == 70.0] = 30.0
        hu[60:66, 40:46] = 200.0
        clean[f"n{i}"] = hu
    cache = _WindowCache(clean, pre)
    # the head mask recovered from the cached windows matches the one from HU
    img = cache.slice_image("n0")
    from_windows = window_head_mask(img, pre.windows)
    assert from_windows.shape == (64, 64)
    from_hu = head_mask(preprocess_hu_to_square(clean["n0"], 64))
    iou = (from_windows & from_hu).sum() / (from_windows | from_hu).sum()
    assert iou > 0.9  # the same head up to its edge pixels (the input's resize differs from this one's)
    x, owner = negative_rows(ckpt.model, cache, ["n0", "n1", "n2"], cells=20, seed=1, batch_size=2)
    assert x.shape == (60, ckpt.model.lesion_head.mean.numel()) and owner.tolist() == [0] * 20 + [1] * 20 + [2] * 20
    x2, _ = negative_rows(ckpt.model, cache, ["n0", "n1", "n2"], cells=20, seed=1)
    np.testing.assert_allclose(x, x2, rtol=1e-4, atol=1e-4)  # seeded: the same cells whatever the batch size
    big, _ = negative_rows(ckpt.model, cache, ["n0"], cells=10_000)
    assert len(big) == int(cell_mask(from_windows, 16).sum())  # every head cell at most once
    # with the negatives, the head scores bleed-free slices lower than the masks-only head does
    rows = [slice_rows(ckpt.model, pre, it) for it in _slices()]
    only = fit_lesion_head(rows, cfg)
    both = fit_lesion_head(rows, cfg, x)
    feats, _, head = slice_rows(ckpt.model, pre, MaskedCT("n1", "q", clean["n1"], np.zeros((SIZE, SIZE), bool)))
    row = (feats, None, head)
    assert _probabilities(row, both, 16).ravel()[head].max() < _probabilities(row, only, 16).ravel()[head].max()
    from ichd.errors import ConfigError

    with pytest.raises(ConfigError, match="cells"):
        negative_rows(ckpt.model, cache, ["n0"], cells=0)


def preprocess_hu_to_square(hu: np.ndarray, size: int) -> np.ndarray:
    """``hu`` resized to the model's square like the input (bilinear), for comparing head masks."""
    t = torch.from_numpy(hu)[None, None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def test_train_lesion_map_with_negatives_from_the_training_config(cnn_path, tmp_path):
    import yaml

    from ichd.errors import ConfigError
    from ichd.models.checkpoint import load_checkpoint
    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.testing.factories import write_ctich_tree

    patients = {49: 3, 50: 3, 51: 4}
    root = write_ctich_tree(tmp_path / "ctich", patients, size=40)
    lines = ["patient,slice,any,epidural,intraparenchymal,intraventricular,subarachnoid,subdural,fracture"]
    for p, n in patients.items():
        lines += [f"{p},{s},{int(p == 50 and s == 2)},{int(p == 50 and s == 2)},0,0,0,0,0" for s in range(1, n + 1)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")

    def config(cache: Path) -> Path:
        path = tmp_path / f"{cache.name}.yaml"
        path.write_text(yaml.safe_dump({"data": {"cache": str(cache), "labels": [str(tmp_path / "labels.csv")],
                                                 "sources": ["ct-ich"], "folds": 2, "fold_seeds": [1]},
                                        "out": str(tmp_path / "unused")}))
        return path

    build_cache([root], tmp_path / "c64", PreprocessConfig(image_size=64, normalization="half"), workers=0)
    cfg = LesionMapTrainConfig(grid=16, blocks=(1, 3), C=0.1)
    m = train_lesion_map(cnn_path, _slices(), tmp_path / "run", cfg, negatives_from=config(tmp_path / "c64"),
                         negative_cells=5)
    neg = m["negatives"]
    assert neg["rows"] == 5 * 9 and neg["patients"] == 3  # 9 of the 10 slices are bleed-free, 5 cells each
    assert "'any' = 0" in neg["what"]
    ckpt = load_checkpoint(tmp_path / "run" / "cnn.pt")
    assert "9 slices" in ckpt.extra["lesion_map"]["negatives"] and ckpt.model.lesion_head is not None
    # a cache that is not the model's input is refused, with what differs
    build_cache([root], tmp_path / "c96", PreprocessConfig(image_size=96, normalization="half"), workers=0)
    with pytest.raises(ConfigError, match="image_size"):
        train_lesion_map(cnn_path, _slices(), tmp_path / "run2", cfg, negatives_from=config(tmp_path / "c96"),
                         lopo=False)
