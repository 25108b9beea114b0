"""Which training slices an epoch draws: class balancing and data-source shares in one weighted sampler.

Training on several sources at once (CT-ICH's 82 JPG-reconstructed patients beside 20 real RSNA DICOM series)
needs the small real-DICOM source to matter: :func:`training_sampler` draws each source with a chosen share of the
epoch (``source_share``) and, optionally, the "any"-positive slices of each source with ``positive_fraction``.
Draws are with replacement, ``num_samples`` per epoch, from a seeded generator (the trainer re-seeds it every
epoch, so runs are reproducible and resumable).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ichd.errors import ConfigError, InputError


def sampling_weights(labels: Any, *, positive_fraction: float | None = None,
                     source_share: Mapping[str, float] | None = None, label: str = "any") -> np.ndarray:
    """Per-slice draw probabilities (sum 1) for a label table in the dataset's item order.

    Args:
        labels: label table (DataFrame) with the ``label`` column and, with ``source_share``, a ``source``
            column.
        positive_fraction: within each source, the share of draws that are ``label``-positive slices (``None``:
            the natural share). A missing label (``NaN``) counts as negative.
        source_share: source name -> share of the draws (normalised over the sources present; a source absent
            from the mapping is never drawn). ``None``: sources in their natural proportion.
    """
    if positive_fraction is not None and not 0.0 < positive_fraction < 1.0:
        raise ConfigError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
    if label not in labels.columns:
        raise InputError(f"the label table has no column {label!r}")
    n = len(labels)
    if n == 0:
        raise InputError("the sampler got no slices")
    positive = np.nan_to_num(labels[label].to_numpy(dtype=np.float64), nan=0.0) > 0.5
    if source_share is None:
        groups = np.zeros(n, dtype=np.int64)
        shares = np.array([1.0])
    else:
        if "source" not in labels.columns:
            raise InputError("source_share needs a label table with a 'source' column",
                             hint="give data.labels as a list of label files, one per source")
        names = sorted(set(labels["source"].astype(str)))
        unknown = sorted(set(source_share) - set(names))
        if unknown:
            from ichd.errors import did_you_mean

            close = did_you_mean(unknown[0], names)
            raise ConfigError(f"source_share names unknown source(s) {unknown}" + (f"; {close}" if close else ""),
                              hint=f"sources in the training table: {', '.join(names)}")
        groups = labels["source"].astype(str).map({s: i for i, s in enumerate(names)}).to_numpy()
        shares = np.array([float(source_share.get(s, 0.0)) for s in names])
        if shares.sum() <= 0:
            raise ConfigError("source_share gives every source in the training table a share of 0")
        shares = shares / shares.sum()
    weights = np.zeros(n, dtype=np.float64)
    for g, share in enumerate(shares):
        members = groups == g
        if not members.any() or share == 0:
            continue
        if positive_fraction is None:
            weights[members] = share / members.sum()
            continue
        pos, neg = members & positive, members & ~positive
        if not pos.any() or not neg.any():
            weights[members] = share / members.sum()
        else:
            weights[pos] = share * positive_fraction / pos.sum()
            weights[neg] = share * (1.0 - positive_fraction) / neg.sum()
    if source_share is None and positive_fraction is None:
        weights[:] = 1.0 / n
    return weights / weights.sum()


def training_sampler(labels: Any, *, positive_fraction: float | None = None,
                     source_share: Mapping[str, float] | None = None, num_samples: int | None = None,
                     label: str = "any", seed: int | None = None):  # -> torch.utils.data.WeightedRandomSampler
    """A :class:`torch.utils.data.WeightedRandomSampler` over :func:`sampling_weights` drawing ``num_samples``
    (default: the table size) slices per epoch with replacement."""
    import torch
    from torch.utils.data import WeightedRandomSampler

    weights = sampling_weights(labels, positive_fraction=positive_fraction, source_share=source_share,
                               label=label)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), int(num_samples or len(weights)),
                                 replacement=True, generator=gen)
