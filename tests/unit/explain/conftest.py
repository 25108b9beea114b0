"""A toy registered-style slice CNN trained on a synthetic task: a bright blob in a head means "any".

The images are synthetic Hounsfield-unit slices (a head disk of ~30 HU in air, optionally a small blob of
~80 HU, like acute blood) windowed with the seed's three windows, so the toy model sees the same kind of input
as the real slice CNNs. Training takes a few seconds on one CPU thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ichd.constants import SEED_MEAN, SEED_STD

SIZE = 32


class ToyCNN(nn.Module):
    """Three conv layers -> global average pool -> linear; ``default_cfg`` names the Grad-CAM layer."""

    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, num_classes)
        self.default_cfg = {"name": "toy", "gradcam_layer": "features", "input_size": SIZE}
        self.register_buffer("mean", torch.tensor(SEED_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(SEED_STD).view(1, 3, 1, 1), persistent=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return torch.flatten(self.pool(self.features((x - self.mean) / self.std)), 1)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def synthetic_hu(rng: np.random.Generator, n: int, size: int = SIZE, p_blob: float = 0.5
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hu (n, size, size) float32, has_blob (n,), blob masks (n, size, size) bool)."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    head = (yy - c) ** 2 + (xx - c) ** 2 <= (0.45 * size) ** 2
    hu = np.where(head, 30.0, -1000.0)[None].repeat(n, 0).astype(np.float32)
    hu += np.where(head, rng.normal(0, 4, (n, size, size)), 0).astype(np.float32)
    has = rng.random(n) < p_blob
    masks = np.zeros((n, size, size), bool)
    for i in np.flatnonzero(has):
        while True:
            r = rng.uniform(0.1, 0.18) * size
            cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            if (m & head).sum() == m.sum():
                break
        masks[i] = m
        hu[i][m] = 80.0 + rng.normal(0, 4, m.sum())
    return hu, has, masks


def to_input(hu: np.ndarray) -> torch.Tensor:
    from ichd.preprocessing.windows import window_channels

    return torch.from_numpy(window_channels(hu))


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
