"""Fixtures of the explain tests: a toy CNN trained on the synthetic blob task (see :mod:`explain_toy`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from explain_toy import ToyCNN, synthetic_hu, to_input


@pytest.fixture(scope="session")
def toy_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return synthetic_hu(np.random.default_rng(1), 16, p_blob=1.0)


@pytest.fixture(scope="session")
def trained_toy() -> ToyCNN:
    """The toy CNN trained to call "any" (class 0) when a blob is present (seeded; a few seconds, 1 thread).

    Training stops once held-out accuracy reaches 97 % (checked every 25 steps), at most 400 steps.
    """
    torch.manual_seed(0)
    hu, has, _ = synthetic_hu(np.random.default_rng(0), 512)
    x = to_input(hu)
    y = torch.zeros(len(hu), 6)
    y[:, 0] = torch.from_numpy(has.astype(np.float32))
    hu_val, has_val, _ = synthetic_hu(np.random.default_rng(99), 64)
    x_val = to_input(hu_val)
    model = ToyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(400):
            idx = torch.randint(0, len(x), (32,), generator=gen)
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            if step % 25 == 24:
                with torch.no_grad():
                    acc = ((torch.sigmoid(model(x_val))[:, 0].numpy() > 0.5) == has_val).mean()
                if acc >= 0.97:
                    break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model
