"""Feature selectors: each method picks what it should, fits on train only, and round-trips through a state."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ichd.errors import ConfigError, ModelError
from ichd.models.feature_selection import FeatureSelector, SelectorConfig, rank_by_class_weights


@pytest.fixture()
def emb() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20))
    x[:, 3] *= 10.0  # the widest dimension
    x[:, 11] *= 5.0
    return x


def test_pca_matches_sklearn(emb):
    from sklearn.decomposition import PCA

    sel = FeatureSelector(SelectorConfig("pca", k=5, standardize=False)).fit(emb)
    ours = sel.transform(emb)
    ref = PCA(n_components=5, svd_solver="full").fit_transform(emb)
    # same subspace and same values up to the sign of each component
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), rtol=1e-4, atol=1e-4)
    assert np.allclose(ours.mean(axis=0), 0.0, atol=1e-5)
    assert np.all(np.diff(ours.var(axis=0)) <= 1e-6)  # decreasing variance


def test_top_std_keeps_widest_dimensions(emb):
    sel = FeatureSelector(SelectorConfig("top_std", k=2, standardize=False)).fit(emb)
    assert sel.indices.tolist() == [3, 11]
    np.testing.assert_allclose(sel.transform(emb), emb[:, [3, 11]].astype(np.float32))


def test_weight_magnitude_per_class_round_robin():
    w = np.array([[0.9, 0.1, 0.0, 0.5, 0.05],
                  [-0.2, -0.8, 0.3, 0.0, 0.01]])
    # largest: class0 rank0 -> 0, class1 rank0 -> 1, class0 rank1 -> 3, class1 rank1 -> 2
    assert rank_by_class_weights(w, 3, largest=True).tolist() == [0, 1, 3]
    assert rank_by_class_weights(w, 4, largest=True).tolist() == [0, 1, 2, 3]
    # smallest: class0 rank0 -> 2, class1 rank0 -> 3, class0 rank1 -> 4
    assert rank_by_class_weights(w, 3, largest=False).tolist() == [2, 3, 4]
    with pytest.raises(ConfigError):
        rank_by_class_weights(w, 6, largest=True)


def test_weight_methods_need_weights(emb):
    with pytest.raises(ModelError, match="classifier weights"):
        FeatureSelector(SelectorConfig("weight_largest", k=3)).fit(emb)
    w = np.zeros((6, 20))
    w[:, 7] = 1.0
    sel = FeatureSelector(SelectorConfig("weight_largest", k=1, standardize=False)).fit(emb, head_weight=w)
    assert sel.indices.tolist() == [7]
    with pytest.raises(ModelError, match="does not match"):
        FeatureSelector(SelectorConfig("weight_largest", k=1)).fit(emb, head_weight=w[:, :5])


def test_fitted_on_train_only(emb):
    """Statistics come from the rows passed to fit(); transform() of other rows does not change them."""
    train, test = emb[:150], emb[150:] + 50.0
    for method in ("pca", "top_std", "none"):
        sel = FeatureSelector(SelectorConfig(method, k=4)).fit(train)
        before = sel.state_dict()
        z_train = sel.transform(train)
        z_test = sel.transform(test)
        after = sel.state_dict()
        for key, value in before.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, after[key])
        np.testing.assert_allclose(z_train.mean(axis=0), 0.0, atol=1e-4)  # standardised with train stats
        np.testing.assert_allclose(z_train.std(axis=0), 1.0, atol=1e-3)
        assert not np.allclose(z_test.mean(axis=0), 0.0, atol=1.0)  # shifted test data stays shifted
        refit = FeatureSelector(SelectorConfig(method, k=4)).fit(np.vstack([train, test]))
        assert not np.allclose(refit.transform(test), z_test)


@pytest.mark.parametrize("method", ["none", "pca", "top_std", "weight_smallest"])
def test_state_roundtrip_weights_only(emb, method):
    w = np.random.default_rng(1).normal(size=(6, 20))
    sel = FeatureSelector(SelectorConfig(method, k=6)).fit(emb, head_weight=w)
    buf = io.BytesIO()
    torch.save(sel.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # arrays and scalars only, no pickled objects
    again = FeatureSelector.from_state_dict(state)
    np.testing.assert_array_equal(again.transform(emb), sel.transform(emb))
    assert again.out_features == (20 if method == "none" else 6)


def test_errors(emb):
    with pytest.raises(ConfigError, match="did you mean"):
        SelectorConfig("pcaa")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k=30"):
        FeatureSelector(SelectorConfig("top_std", k=30)).fit(emb)
    with pytest.raises(ModelError, match="not fitted"):
        FeatureSelector().transform(emb)
    sel = FeatureSelector(SelectorConfig("pca", k=3)).fit(emb)
    with pytest.raises(ModelError, match="fitted on 20"):
        sel.transform(emb[:, :10])
    with pytest.raises(ModelError, match="malformed"):
        FeatureSelector.from_state_dict({"version": 1})
