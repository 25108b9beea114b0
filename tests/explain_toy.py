"""Toy slice CNN and synthetic data for the explain tests: a bright blob in a head means "any".

The images are synthetic Hounsfield-unit slices (a head disk of ~30 HU in air, optionally a small blob of
~80 HU, like acute blood) windowed with the seed's three windows, so the toy model sees the same kind of input
as the real slice CNNs. The trained model is a session fixture in ``conftest.py``.
"""

from __future__ import annotations

import numpy as np
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
