"""Sequence models: masking/packing, slice order, options, registry, checkpoints, scan rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichd.errors import ConfigError, InputError, ModelError
from ichd.models import create_model, list_models
from ichd.models.feature_selection import FeatureSelector, SelectorConfig
from ichd.models.scan_rules import consecutive_score, radnet_positive, scan_probabilities
from ichd.models.sequence import (
    SeqModelConfig,
    SequenceModel,
    load_sequence_checkpoint,
    neighbour_differences,
    sequence_checkpoint_extra,
)

F = 12
ARCH_OPTIONS = [
    {"arch": "lstm"},
    {"arch": "gru"},
    {"arch": "conv1d", "conv_kernel": 3},
    {"arch": "lstm", "neighbour_diff": True},
    {"arch": "conv1d", "neighbour_diff": True, "probs_input": True},
    {"arch": "lstm", "use_features": False, "probs_input": True, "probs_head": False},
]


def _small(**kw) -> SequenceModel:
    torch.manual_seed(0)
    cfg = SeqModelConfig(hidden=8, layers=2, dropout=0.3, **kw)
    return SequenceModel(F if cfg.use_features else 0, cfg).eval()


def _batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    feats = torch.randn(len(lengths), t, F, generator=g)
    probs = torch.rand(len(lengths), t, 6, generator=g)
    # padding holds garbage on purpose: it must not leak into real positions
    for b, n in enumerate(lengths):
        feats[b, n:] = 100.0
        probs[b, n:] = 0.9
    return feats, probs, torch.tensor(lengths)


@pytest.mark.parametrize("opts", ARCH_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_padded_batch_equals_each_scan_alone(opts):
    model = _small(**opts)
    lengths = [9, 4, 1, 6]
    feats, probs, lens = _batch(lengths)
    with torch.no_grad():
        out = model(feats, probs, lens)
        for b, n in enumerate(lengths):
            alone = model(feats[b:b + 1, :n], probs[b:b + 1, :n], torch.tensor([n]))
            torch.testing.assert_close(out[b, :n], alone[0], rtol=1e-5, atol=1e-5)
            assert torch.all(out[b, n:] == 0)


@pytest.mark.parametrize("opts", ARCH_OPTIONS[:3], ids=["lstm", "gru", "conv1d"])
def test_slice_order_matters(opts):
    model = _small(**opts)
    feats, probs, lens = _batch([10])
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    with torch.no_grad():
        out = model(feats, probs, lens)[0]
        shuffled = model(feats[:, perm], probs[:, perm], lens)[0]
    # Per-slice outputs of the shuffled scan, put back in the original order, differ: context is used.
    back = torch.empty_like(shuffled)
    back[perm] = shuffled
    assert (back - out).abs().max() > 1e-4


def test_probs_reach_the_final_layer():
    cfg = SeqModelConfig(hidden=8, layers=1, dropout=0.0, probs_head=True)
    model = SequenceModel(F, cfg).eval()
    assert model.head.in_features == 2 * 8 + 6
    feats, probs, lens = _batch([5])
    with torch.no_grad():
        a = model(feats, probs, lens)
        b = model(feats, torch.zeros_like(probs), lens)
    assert (a - b).abs().max() > 1e-6


def test_seed_default_architecture():
    model = SequenceModel(120, SeqModelConfig())
    assert isinstance(model.encoder, torch.nn.LSTM)
    assert (model.encoder.num_layers, model.encoder.hidden_size, model.encoder.bidirectional) == (3, 256, True)
    assert model.encoder.dropout == pytest.approx(0.3)
    assert model.head.in_features == 512 + 6 and model.head.out_features == 6


def test_neighbour_differences_respect_lengths():
    x = torch.arange(8, dtype=torch.float32).view(2, 4, 1) ** 2
    d = neighbour_differences(x, torch.tensor([4, 2]))
    prev, nxt = d[..., 0], d[..., 1]
    assert prev[0].tolist() == [0.0, 1.0, 3.0, 5.0]
    assert nxt[0].tolist() == [-1.0, -3.0, -5.0, 0.0]
    assert prev[1].tolist() == [0.0, 9.0, 0.0, 0.0]
    assert nxt[1].tolist() == [-9.0, 0.0, 0.0, 0.0]  # the slice after the last real one is padding


def test_bad_inputs_are_input_errors():
    model = _small()
    feats, probs, lens = _batch([3, 2])
    with pytest.raises(InputError, match="features"):
        model(feats[..., :5], probs, lens)
    with pytest.raises(InputError, match="lengths"):
        model(feats, probs, torch.tensor([3, 4]))
    with pytest.raises(ConfigError):
        SeqModelConfig(use_features=False, probs_input=False)
    with pytest.raises(ConfigError, match="did you mean"):
        SeqModelConfig(arch="lstn")  # type: ignore[arg-type]


def test_registry_builds_sequence_models():
    assert {"seq_lstm", "seq_gru", "seq_conv1d"} <= set(list_models("sequence"))
    m = create_model("seq_gru", feature_dim=7, hidden=4, layers=1)
    assert isinstance(m.encoder, torch.nn.GRU) and m.feature_dim == 7
    with pytest.raises(ModelError):
        create_model("seq_lstm", pretrained=True, feature_dim=7)


def test_checkpoint_roundtrip_and_predict(tmp_path):
    from ichd.models.checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 30))
    selector = FeatureSelector(SelectorConfig("pca", k=F)).fit(emb)
    model = _small()
    path = save_checkpoint(tmp_path / "seq.pt", model, config={"name": "t"},
                           extra=sequence_checkpoint_extra(selector, scan_rule="consecutive",
                                                           cnn={"model_name": "x"}))
    bundle = load_sequence_checkpoint(path)
    assert bundle.scan_rule == "consecutive" and bundle.cnn == {"model_name": "x"}
    probs = rng.uniform(size=(9, 6)).astype(np.float32)
    slice_p, scan_p = bundle.predict(emb[:9], probs)
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(selector.transform(emb[:9]))[None],
                                  torch.from_numpy(probs)[None], torch.tensor([9])))[0].numpy()
    np.testing.assert_allclose(slice_p, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scan_p, consecutive_score(slice_p), rtol=1e-6)
    assert slice_p.shape == (9, 6) and scan_p.shape == (6,)
    with pytest.raises(ModelError, match="fitted on 30"):
        bundle.predict(emb[:9, :5], probs)
    with pytest.raises(InputError, match="probabilities"):
        bundle.predict(emb[:9], probs[:, :4])


def test_loading_a_non_sequence_checkpoint_fails(tmp_path):
    from ichd.models.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "plain.pt", _small())  # no selector in extra
    with pytest.raises(ModelError, match="not a sequence-model checkpoint"):
        load_sequence_checkpoint(path)


def test_scan_rules():
    p = np.zeros((8, 6))
    p[2, 0] = 0.99  # a single very positive slice
    p[4:7, 1] = [0.6, 0.7, 0.8]  # a run of three
    assert scan_probabilities(p, "max")[0] == pytest.approx(0.99)
    cons = scan_probabilities(p, "consecutive")
    assert cons[0] == pytest.approx(0.0)  # one slice is not a run of 3
    assert cons[1] == pytest.approx(0.6)
    assert radnet_positive(p >= 0.5).tolist() == [False, True, False, False, False, False]
    short = np.full((2, 6), 0.7)
    short[0, 3] = 0.2
    assert scan_probabilities(short, "consecutive")[3] == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="did you mean"):
        scan_probabilities(p, "maxx")


def test_cnn_head_init_starts_at_the_cnn_prediction():
    torch.manual_seed(0)
    cfg = SeqModelConfig(hidden=8, layers=2, probs_as_logits=True, head_init="cnn")
    model = SequenceModel(F, cfg).eval()
    feats, probs, lens = _batch([6, 3])
    with torch.no_grad():
        out = torch.sigmoid(model(feats, probs, lens))
    torch.testing.assert_close(out[0], probs[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[1, :3], probs[1, :3], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="probs_head"):
        SeqModelConfig(head_init="cnn", probs_head=False)
