"""MONAI-style array and dict transforms."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ichd.preprocessing.transforms import (
    Compose,
    Normalize,
    Normalized,
    Resize,
    Resized,
    ToFloat,
    ToFloatd,
    WindowChannels,
    WindowChannelsd,
)


def test_array_pipeline() -> None:
    hu = np.full((2, 32, 32), 40.0, dtype=np.float32)
    t = Compose([WindowChannels(), Resize(16), Normalize.from_preset("half")])
    out = t(hu)
    assert out.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-6)  # 40 HU is the brain window's middle -> 0.5 -> 0.0


def test_dict_pipeline_and_pickle() -> None:
    data = {"image": np.full((1, 16, 16), 80.0, np.float32), "label": 1}
    t = Compose([WindowChannelsd("image"), Resized(["image"], 8), Normalized("image", preset="none")])
    t = pickle.loads(pickle.dumps(t))
    out = t(data)
    assert out["image"].shape == (1, 3, 8, 8) and out["label"] == 1
    assert data["image"].shape == (1, 16, 16)  # input dict untouched


def test_missing_keys() -> None:
    with pytest.raises(KeyError, match="image"):
        ToFloatd("image")({"x": 1})
    assert ToFloatd("image", allow_missing_keys=True)({"x": 1}) == {"x": 1}
    with pytest.raises(TypeError):
        Normalized("image")


def test_to_float() -> None:
    np.testing.assert_allclose(ToFloat()(np.array([0, 255], np.uint8)), [0.0, 1.0])
    t = ToFloat()(torch.tensor([0, 255], dtype=torch.uint8))
    assert t.dtype == torch.float32 and t.tolist() == [0.0, 1.0]
    np.testing.assert_allclose(Normalized("x", mean=(1, 1, 1), std=(2, 2, 2))({"x": np.ones((3, 1, 1))})["x"], 0)
