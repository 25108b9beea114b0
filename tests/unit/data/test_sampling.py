"""The training sampler: source shares and class balance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ichd.data.sampling import sampling_weights, training_sampler
from ichd.errors import ConfigError, InputError


def _table() -> pd.DataFrame:
    # source a: 800 slices (80 positive); source b: 200 slices (20 positive, 5 with missing labels)
    any_a = np.r_[np.ones(80), np.zeros(720)]
    any_b = np.r_[np.ones(20), np.zeros(175), np.full(5, np.nan)]
    return pd.DataFrame({"any": np.r_[any_a, any_b], "source": ["a"] * 800 + ["b"] * 200},
                        index=[f"s{i}" for i in range(1000)])


def test_source_share_and_positive_fraction() -> None:
    df = _table()
    w = sampling_weights(df, source_share={"a": 0.6, "b": 0.4}, positive_fraction=0.3)
    assert w.sum() == pytest.approx(1.0)
    b = (df["source"] == "b").to_numpy()
    assert w[b].sum() == pytest.approx(0.4)
    pos = (df["any"] == 1).to_numpy()
    assert w[b & pos].sum() == pytest.approx(0.4 * 0.3)
    assert w[~b & pos].sum() == pytest.approx(0.6 * 0.3)
    assert w[df["any"].isna().to_numpy()].min() > 0  # missing labels are drawn as negatives


def test_natural_weights_and_unlisted_source() -> None:
    df = _table()
    assert np.allclose(sampling_weights(df), 1 / 1000)
    w = sampling_weights(df, source_share={"a": 1.0})
    assert w[(df["source"] == "b").to_numpy()].sum() == 0.0


def test_sampler_draws_the_shares() -> None:
    df = _table()
    sampler = training_sampler(df, source_share={"a": 0.5, "b": 0.5}, num_samples=20000, seed=0)
    idx = np.array(list(iter(sampler)))
    assert len(idx) == 20000
    share_b = (df["source"].to_numpy()[idx] == "b").mean()
    assert share_b == pytest.approx(0.5, abs=0.02)
    again = np.array(list(iter(training_sampler(df, source_share={"a": 0.5, "b": 0.5}, num_samples=20000,
                                                seed=0))))
    assert (idx == again).all()


def test_sampler_errors() -> None:
    df = _table()
    with pytest.raises(ConfigError, match="did you mean 'b'|unknown source"):
        sampling_weights(df, source_share={"a": 1.0, "bb": 1.0})
    with pytest.raises(InputError, match="source"):
        sampling_weights(df.drop(columns="source"), source_share={"a": 1.0})
    with pytest.raises(ConfigError):
        sampling_weights(df, positive_fraction=1.0)
    with pytest.raises(ConfigError, match="share of 0"):
        sampling_weights(df, source_share={"a": 0.0, "b": 0.0})
