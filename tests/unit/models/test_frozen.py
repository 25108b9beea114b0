"""Frozen-encoder family: the frozen slice model, neighbour context at scan edges, the context heads."""

from __future__ import annotations

import pytest
import torch

from ichd.errors import ConfigError, InputError
from ichd.models import create_model
from ichd.models.frozen import (
    ContextHead,
    ContextHeadConfig,
    EncoderSpec,
    FrozenEncoderConfig,
    neighbour_mean,
    scan_mean_features,
)

SIZE = 64


def test_neighbour_mean_handles_scan_edges_padding_and_single_slices():
    x = torch.arange(5.0).view(1, 5, 1)
    # k=1: ends average their one existing neighbour
    assert neighbour_mean(x, torch.tensor([5]), 1).flatten().tolist() == [1.0, 1.0, 2.0, 3.0, 3.0]
    # a scan of 3 padded to 5: slices 3, 4 are padding (zero) and never counted as neighbours
    assert neighbour_mean(x, torch.tensor([3]), 2).flatten().tolist() == [1.5, 1.0, 0.5, 0.0, 0.0]
    # one slice: its own value
    assert neighbour_mean(torch.tensor([[[7.0]]]), torch.tensor([1]), 1).flatten().tolist() == [7.0]
    # k larger than the scan: every other slice
    assert neighbour_mean(x, torch.tensor([5]), 9).flatten().tolist() == pytest.approx(
        [(10 - i) / 4 for i in range(5)])


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_context_head_batch_equals_each_scan_alone(kind):
    torch.manual_seed(0)
    head = ContextHead(8, ContextHeadConfig(kind=kind, context=2, hidden=16)).eval()
    a, b = torch.randn(1, 6, 8), torch.randn(1, 3, 8)
    batch = torch.zeros(2, 6, 8)
    batch[0], batch[1, :3] = a[0], b[0]
    out = head(batch, None, torch.tensor([6, 3]))
    assert torch.allclose(out[0], head(a, None, torch.tensor([6]))[0], atol=1e-6)
    assert torch.allclose(out[1, :3], head(b, None, torch.tensor([3]))[0], atol=1e-6)
    assert torch.all(out[1, 3:] == 0)


def test_context_zero_is_a_slice_head_and_neighbours_matter_otherwise():
    torch.manual_seed(0)
    alone = ContextHead(4, ContextHeadConfig(context=0)).eval()
    x = torch.randn(1, 5, 4)
    y = x.clone()
    y[0, 0] += 10.0  # change one slice: only that slice's output changes without context
    d = (alone(x) - alone(y)).abs().sum(-1)[0]
    assert d[0] > 0 and torch.all(d[1:] == 0)
    ctx = ContextHead(4, ContextHeadConfig(context=1)).eval()
    d = (ctx(x) - ctx(y)).abs().sum(-1)[0]
    assert d[1] > 0 and torch.all(d[2:] < 1e-5)  # cumulative sums: float rounding only


def test_scan_mean_features_ignore_padding():
    x = torch.tensor([[[1.0], [2.0], [6.0], [100.0]]])
    assert scan_mean_features(x, torch.tensor([3])).flatten().tolist() == [3.0, 3.0, 3.0, 0.0]
    assert scan_mean_features(x, torch.tensor([1])).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_scan_mean_head_sees_the_whole_scan_and_batches_like_single_scans(kind):
    torch.manual_seed(0)
    head = ContextHead(4, ContextHeadConfig(kind=kind, context=1, scan_mean=True, hidden=8)).eval()
    assert head.inputs(torch.randn(1, 5, 4), torch.tensor([5])).shape == (1, 5, 12)
    x = torch.randn(1, 7, 4)
    y = x.clone()
    y[0, 0] += 10.0  # one slice changes: through the scan mean every slice's output moves, far ones included
    d = (head(x) - head(y)).abs().sum(-1)[0]
    assert torch.all(d > 0)
    # padding: a scan of 3 in a batch padded to 7 gives the same logits as the scan alone
    batch = torch.zeros(2, 7, 4)
    batch[0], batch[1, :3] = x[0], x[0, :3]
    out = head(batch, None, torch.tensor([7, 3]))
    assert torch.allclose(out[1, :3], head(x[:, :3], None, torch.tensor([3]))[0], atol=1e-6)
    # the option travels with the weights (model_kwargs), as every sequence checkpoint's config does
    rebuilt = create_model(f"seq_context_{kind}", **head.model_kwargs)
    rebuilt.load_state_dict(head.state_dict())
    assert rebuilt.config.scan_mean and torch.allclose(rebuilt.eval()(x), head(x))
    old = create_model(f"seq_context_{kind}", feature_dim=4, context=1, hidden=8)  # checkpoints before the option
    assert not old.config.scan_mean


def test_a_one_slice_input_sees_the_scan_prior_not_itself():
    head = ContextHead(3, ContextHeadConfig(context=1, scan_mean=True)).eval()
    head.scan_prior.copy_(torch.tensor([5.0, 6.0, 7.0]))
    one = torch.tensor([[[1.0, 2.0, 3.0]]])
    assert head.inputs(one, torch.tensor([1]))[0, 0, 6:].tolist() == [5.0, 6.0, 7.0]
    two = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]])
    assert head.inputs(two, torch.tensor([2]))[0, 0, 6:].tolist() == [2.0, 3.0, 4.0]  # a real scan: its mean
    # in a batch, only the one-slice scan takes the prior
    batch = torch.zeros(2, 2, 3)
    batch[0], batch[1, :1] = two[0], one[0]
    out = scan_mean_features(batch, torch.tensor([2, 1]), head.scan_prior)
    assert out[0, 0].tolist() == [2.0, 3.0, 4.0] and out[1, 0].tolist() == [5.0, 6.0, 7.0]
    assert torch.all(out[1, 1] == 0)
    assert "scan_prior" in head.state_dict()
    assert "scan_prior" not in ContextHead(3, ContextHeadConfig(context=1)).state_dict()  # old checkpoints load


def test_context_head_errors_and_registry():
    with pytest.raises(ConfigError, match="did you mean"):
        ContextHeadConfig(kind="linaer")
    head = create_model("seq_context_mlp", feature_dim=4, context=1, hidden=8)
    assert head.uses_features and head.default_cfg["name"] == "seq_context_mlp"
    with pytest.raises(InputError, match="features must be"):
        head(torch.randn(1, 3, 5))


def test_frozen_encoder_is_frozen_and_pools_as_configured():
    model = create_model("frozen_encoder", encoders=[{"name": "efficientnet_lite0", "input_size": SIZE}])
    assert model.num_features == 1280 and model.default_cfg["input_size"] == SIZE
    assert all(not p.requires_grad for p in model.encoders.parameters())
    assert model.classifier.weight.requires_grad
    model.train()
    assert not model.encoders.training and model.classifier.training
    both = create_model("frozen_encoder", depth="last_stage", pool="avgmax",
                        encoders=[{"name": "efficientnet_lite0", "input_size": SIZE},
                                  {"name": "efficientnet_lite2", "input_size": 2 * SIZE}])
    assert both.num_features == 2 * 320 + 2 * 352 and both.default_cfg["input_size"] == 2 * SIZE
    with torch.no_grad():
        f = both.forward_features(torch.rand(2, 3, 2 * SIZE, 2 * SIZE))
    assert f.shape == (2, both.num_features)


def test_frozen_encoder_gradcam_layer_exists_and_checkpoint_round_trips(tmp_path):
    from ichd.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model("frozen_encoder", encoders=[{"name": "efficientnet_lite1", "input_size": SIZE}],
                         pool="avgmax").eval()
    model.get_submodule(model.default_cfg["gradcam_layer"])
    x = torch.rand(2, 3, SIZE, SIZE)
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_checkpoint(path).model
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-5)


def test_encoder_config_errors():
    with pytest.raises(ConfigError, match="did you mean"):
        EncoderSpec(name="efficientnet_lite3")
    with pytest.raises(ConfigError, match="multiple of 32"):
        EncoderSpec(input_size=100)
    with pytest.raises(ConfigError, match="did you mean"):
        FrozenEncoderConfig(pool="avgmx")
