"""Grad-CAM / Grad-CAM++: shapes, values, hooks, zero-gradient classes, errors, registry layers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from explain_toy import SIZE, ToyCNN, synthetic_hu, to_input
from ichd.errors import InputError, ModelError
from ichd.explain.gradcam import GradCAM, class_index, gradcam_layer_name
from ichd.explain.localization import pointing_game


def test_trained_toy_learned_the_task(trained_toy: ToyCNN) -> None:
    hu, has, _ = synthetic_hu(np.random.default_rng(7), 64)
    with torch.no_grad():
        p = torch.sigmoid(trained_toy(to_input(hu)))[:, 0].numpy()
    assert ((p > 0.5) == has).mean() >= 0.9


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_map_shape_finite_non_constant_and_points_at_the_blob(trained_toy, toy_data, method) -> None:
    hu, _, masks = toy_data
    maps = GradCAM(trained_toy, method=method)(to_input(hu), "any")
    assert maps.shape == (len(hu), SIZE, SIZE)
    assert maps.dtype == np.float32
    assert np.all(np.isfinite(maps))
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for m in maps:
        assert m.max() == pytest.approx(1.0) and m.std() > 0.01
    hits = [pointing_game(m, k, tolerance_px=2) for m, k in zip(maps, masks, strict=True)]
    assert np.mean(hits) >= 0.8


def test_output_size_upsamples_to_the_original_matrix(trained_toy, toy_data) -> None:
    hu, _, _ = toy_data
    maps = GradCAM(trained_toy)(to_input(hu[:2]), 0, output_size=(50, 65))
    assert maps.shape == (2, 50, 65)


def test_matches_the_grad_cam_formula_on_a_linear_head() -> None:
    """logit_c = mean_ij sum_k v_ck A_k[i,j] + b, so w_k = v_ck / (h w) and the map is ReLU(sum_k v_ck A_k)."""
    torch.manual_seed(3)
    model = ToyCNN().eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        acts = model.features((x - model.mean) / model.std)
        v = model.classifier.weight[2]
        expected = torch.relu((v[None, :, None, None] * acts).sum(1))
        expected = expected / expected.flatten(1).amax(1)[:, None, None]
    result = GradCAM(model).compute(x, [2])
    np.testing.assert_allclose(result.maps[:, 0], expected.numpy(), atol=1e-5)
    with torch.no_grad():
        raw_expected = torch.relu((v[None, :, None, None] * acts).sum(1)) / (16 * 16)
    np.testing.assert_allclose(result.raw[:, 0], raw_expected.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.logits, model(x).detach().numpy(), atol=1e-6)


def test_grad_cam_pp_matches_the_paper_formula_on_a_linear_head() -> None:
    """With g_k = v_ck / (h w) constant over pixels: alpha_k = 1 / (2 + g_k sum_ab A_k[a,b]) (Chattopadhay et
    al. 2018, eq. 19 with the exponential score) and w_k = h w alpha_k ReLU(g_k)."""
    torch.manual_seed(4)
    model = ToyCNN().eval()
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        acts = model.features((x - model.mean) / model.std).double()
        g = (model.classifier.weight[1].double() / (12 * 12))[None, :]
        alpha = 1.0 / (2.0 + g * acts.sum(dim=(2, 3)))
        w = 12 * 12 * alpha * torch.relu(g)
        expected = torch.relu((w[:, :, None, None] * acts).sum(1))
    result = GradCAM(model, method="gradcam++").compute(x, [1])
    np.testing.assert_allclose(result.raw[:, 0], expected.numpy(), rtol=1e-4, atol=1e-6)


def test_grad_cam_equals_monai_on_the_layer_grid(trained_toy, toy_data) -> None:
    """Cross-check against MONAI's Grad-CAM (un-normalised maps at the layer's resolution)."""
    from monai.visualize import GradCAM as MonaiGradCAM

    x = to_input(toy_data[0][:3])
    ours = GradCAM(trained_toy).compute(x, [0]).raw[:, 0]
    # MONAI's backward hooks need an input that requires grad (else torch warns the hook fires on outputs).
    monai_cam = MonaiGradCAM(copy.deepcopy(trained_toy), target_layers="features")
    theirs = monai_cam.compute_map(x.clone().requires_grad_(True), class_idx=0)
    np.testing.assert_allclose(ours, theirs.detach().numpy()[:, 0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_zero_gradient_class_gives_an_all_zero_map_not_nan(trained_toy, toy_data, method) -> None:
    model = copy.deepcopy(trained_toy)
    with torch.no_grad():
        model.classifier.weight[3].zero_()  # "intraventricular" no longer depends on the features
    maps = GradCAM(model, method=method).compute(to_input(toy_data[0][:4]), ["intraventricular", "any"]).maps
    assert np.all(np.isfinite(maps))
    assert np.all(maps[:, 0] == 0.0)
    assert maps[:, 1].max() == pytest.approx(1.0)


def test_hooks_released_mode_restored_and_no_parameter_grads(trained_toy, toy_data) -> None:
    model = copy.deepcopy(trained_toy).train()
    cam = GradCAM(model)
    cam.compute(to_input(toy_data[0][:2]), [0, 5])
    assert len(cam.layer._forward_hooks) == 0
    assert all(len(m._forward_hooks) == 0 and len(m._backward_hooks) == 0 for m in model.modules())
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_hooks_released_when_the_forward_fails(trained_toy) -> None:
    cam = GradCAM(copy.deepcopy(trained_toy))
    with pytest.raises(RuntimeError):
        cam.compute(torch.rand(1, 5, SIZE, SIZE), [0])  # wrong channel count fails inside the model
    assert len(cam.layer._forward_hooks) == 0


def test_works_with_frozen_weights_and_batch_independence(trained_toy, toy_data) -> None:
    model = copy.deepcopy(trained_toy)
    for p in model.parameters():
        p.requires_grad_(False)
    x = to_input(toy_data[0][:3])
    batch = GradCAM(model)(x, 0)
    single = GradCAM(model)(x[1:2], 0)
    np.testing.assert_allclose(batch[1], single[0], atol=1e-4)


def test_layer_comes_from_the_registry_cfg_and_errors_are_clear() -> None:
    model = ToyCNN()
    assert gradcam_layer_name(model) == "features"
    assert GradCAM(model).layer is model.features
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    with pytest.raises(ModelError, match="gradcam_layer"):
        GradCAM(plain)
    with pytest.raises(ModelError, match="did you mean"):
        GradCAM(model, layer="featurez")
    with pytest.raises(InputError, match="unknown Grad-CAM method"):
        GradCAM(model, method="cam")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="feature map"):
        GradCAM(model, layer="classifier").compute(torch.rand(1, 3, 16, 16), [0])
    with pytest.raises(InputError):
        GradCAM(model)(torch.rand(3, 16, 16), 0)


def test_class_index_accepts_names_abbreviations_and_indices() -> None:
    assert class_index("subdural") == 5
    assert class_index("SDH") == 5
    assert class_index(2) == 2
    with pytest.raises(InputError, match="did you mean"):
        class_index("subdurall")
    with pytest.raises(InputError):
        class_index(6)


# One model per Grad-CAM layer family of the registry (ResNet-like "layer4", EfficientNet "head_act", DenseNet "act").
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "efficientnet_b0", "densenet121"])
def test_every_registered_backbone_names_a_usable_layer(name: str) -> None:
    from ichd.models import create_model

    torch.manual_seed(0)
    model = create_model(name, input_size=64).eval()
    cam = GradCAM(model)
    assert cam.layer_name == model.default_cfg["gradcam_layer"]
    result = cam.compute(torch.rand(2, 3, 64, 64), ["any", "epidural"])
    assert result.maps.shape == (2, 2, 64, 64)
    assert np.all(np.isfinite(result.maps))
    assert result.raw.ndim == 4 and result.raw.shape[-1] < 64  # the last block's coarse resolution
    assert len(cam.layer._forward_hooks) == 0
