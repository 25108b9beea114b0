"""The other seed papers' slice CNNs: VGG19 (LRCN), the progressive-resizing paper's custom CNN, RADnet's DenseNet
with segmentation attention; and user weight files for every comparison row's model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ichd.errors import ModelError
from ichd.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    from model_factories import single_thread_torch

    yield from single_thread_torch()


def test_vgg19_layout_shapes_and_head() -> None:
    model = create_model("vgg19", input_size=64).eval()
    keys = model.backbone.state_dict()
    assert "features.0.weight" in keys and "features.34.bias" in keys and len(keys) == 32  # 16 conv layers
    # torchvision's vgg19 has 20,024,384 parameters in its `features`
    assert sum(p.numel() for p in model.backbone.parameters()) == 20_024_384
    assert model.num_features == 1000 and model.default_cfg["gradcam_layer"] == "backbone.features.36"
    x = torch.rand(2, 3, 64, 64)
    seen: list[torch.Tensor] = []
    hook = model.get_submodule("backbone.features.36").register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        f = model.forward_features(x)
        assert torch.equal(model(x), model.forward_head(f))
    hook.remove()
    assert f.shape == (2, 1000) and seen[0].shape == (2, 512, 2, 2) and (f >= 0).all()  # ReLU'd dense output
    assert [type(m).__name__ for m in model.neck] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU"]
    assert model.neck[2].p == 0.5


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_caceres_cnn_any_size_and_paper_parameter_count(size: int) -> None:
    model = create_model("caceres_cnn", input_size=128).eval()
    # the paper's Keras summary: 4,482,085 parameters with a 5-unit output layer (645 of them)
    trunk = sum(p.numel() for p in model.backbone.parameters()) + sum(p.numel() for p in model.neck.parameters())
    assert trunk == 4_482_085 - 645
    with torch.no_grad():
        f = model.forward_features(torch.rand(2, 3, size, size))  # progressive resizing: every size works
    assert f.shape == (2, 128)


def test_radnet_aux_heads_and_attention() -> None:
    model = create_model("radnet_densenet121", input_size=64)
    x = torch.rand(2, 3, 64, 64)
    model.train()
    logits = model(x)
    aux = model.backbone.aux_logits
    assert logits.shape == (2, 6) and len(aux) == 3 and all(a.shape == (2, 1, 64, 64) for a in aux)
    model.eval()
    seen: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    hooks = [model.get_submodule("backbone.attend").register_forward_hook(lambda m, i, o: seen.append(o)),
             model.get_submodule("backbone.act").register_forward_hook(lambda m, i, o: maps.append(o))]
    with torch.no_grad():
        f = model.forward_features(x)
        assert model.backbone.aux_logits == []  # kept only in training mode
        model.backbone.aux[-1].score.bias.fill_(50.0)  # the last head's segmentation says "hemorrhage" everywhere
        f_att = model.forward_features(x)
    for h in hooks:
        h.remove()
    assert torch.allclose(seen[0].mean(dim=(2, 3)), f, atol=1e-5)  # the Grad-CAM layer pools into the embedding
    plain = maps[0].mean(dim=(2, 3))  # the DenseNet features before the attention
    assert torch.allclose(f_att, 2 * plain, atol=1e-4)  # fully attended: weight 1 + sigmoid(50) = 2
    assert (f >= plain - 1e-6).all() and (f <= 2 * plain + 1e-6).all()


def test_radnet_upsampling_starts_bilinear() -> None:
    from ichd.models.radnet import AuxHead

    head = AuxHead(4, 8)
    s = torch.ones(1, 1, 4, 4)
    up = head.upsample(s)
    assert up.shape == (1, 1, 32, 32)
    assert torch.allclose(up[..., 4:-4, 4:-4], torch.ones(1, 1, 24, 24))  # a constant map stays constant inside


def test_mask_loss_only_on_masked_slices() -> None:
    from torch.nn import functional as F

    from ichd.models.radnet import mask_loss

    logits = [torch.randn(3, 1, 8, 8, requires_grad=True), torch.randn(3, 1, 8, 8, requires_grad=True)]
    masks = (torch.rand(3, 1, 8, 8) > 0.5).float()
    has = torch.tensor([False, True, False])
    loss = mask_loss(logits, masks, has)
    expected = torch.stack([F.binary_cross_entropy_with_logits(s[1:2], masks[1:2]) for s in logits]).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    for s in logits:  # slices without masks get no gradient from the mask loss
        assert s.grad[[0, 2]].abs().sum() == 0 and s.grad[1].abs().sum() > 0
    none = mask_loss(logits, masks, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    small = mask_loss([torch.zeros(1, 1, 4, 4)], torch.ones(1, 1, 8, 8), torch.tensor([True]))  # masks resized
    assert torch.isclose(small, torch.tensor(0.6931), atol=1e-4)


def _monai_state(name: str) -> dict[str, torch.Tensor]:
    """The state dict the row's model is published in (MONAI / torchvision layout), randomly initialised."""
    from monai.networks import nets

    torch.manual_seed(3)
    if name == "efficientnet_b4":
        net = nets.EfficientNetBN("efficientnet-b4", pretrained=False, spatial_dims=2, in_channels=3, num_classes=1000)
    elif name == "seresnext50":
        net = nets.SEResNext50(spatial_dims=2, in_channels=3, num_classes=1000, pretrained=False)
    elif name == "resnet50":
        net = nets.resnet50(spatial_dims=2, n_input_channels=3, num_classes=1000)
    elif name in ("densenet121", "radnet_densenet121"):
        net = nets.DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000, pretrained=False)
    elif name == "vgg19":
        from ichd.models.vgg import VGGFeatures

        state = VGGFeatures().state_dict()
        state["classifier.0.weight"] = torch.zeros(2, 25088)  # torchvision's head (dropped on load)
        return state
    elif name == "resnext101_32x8d":
        from ichd.models.resnext import ResNeXtFeatures

        state = ResNeXtFeatures().state_dict()
        state["fc.weight"] = torch.zeros(1000, 2048)
        return state
    else:  # caceres_cnn: no published weights; a file saved from ichd's own backbone
        return create_model(name, input_size=64).backbone.state_dict()
    return net.state_dict()


ROW_MODELS = ["efficientnet_b4", "seresnext50", "resnet50", "radnet_densenet121", "vgg19", "caceres_cnn",
              pytest.param("resnext101_32x8d", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", ROW_MODELS)
def test_user_weights_file_loads_into_each_row_model(name: str, tmp_path: Path) -> None:
    state = _monai_state(name)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = create_model(name, input_size=64, weights=path)
    assert model.default_cfg["pretrained"] == "file:weights.pth"
    own = model.backbone.state_dict()
    loaded = 0
    for key, value in state.items():
        target = key
        for old, new in (("_conv_stem.", "stem."), ("_bn0.", "bn0."), ("_blocks.", "blocks."),
                         ("_conv_head.", "head."), ("_bn1.", "bn1.")):
            if name == "efficientnet_b4" and key.startswith(old):
                target = new + key.removeprefix(old)
        if target in own:
            assert torch.equal(own[target], value), key
            loaded += 1
    assert loaded == len(own) - (9 if name == "radnet_densenet121" else 0)  # RADnet's 3 aux heads are new
    # a file missing one of the architecture's keys is refused, naming the key
    first = next(k for k in state if k.endswith("weight") and not k.startswith(("fc.", "_fc.", "classifier.",
                                                                                   "last_linear.", "class_layers.")))
    broken = {k: v for k, v in state.items() if k != first}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ModelError, match="1 missing keys"):
        create_model(name, input_size=64, weights=tmp_path / "broken.pth")
