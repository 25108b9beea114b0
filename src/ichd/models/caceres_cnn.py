"""The small custom CNN of the progressive-resizing paper (Caceres et al., "RSNA intracranial hemorrhage
detection", model 2, first iteration), written in torch.

The paper's Keras summary at 128 x 128 px: three blocks of two 3x3 "same" convolutions (32, 32 | 64, 64 |
128, 128 channels) each followed by 2x2 max pooling, flatten (128 x 16 x 16 = 32,768 values), a 128-unit dense
layer and a 5-unit output layer; 4,482,085 parameters. The summary shows no activations; ReLU is assumed after
every convolution and the dense layer.

To train it at several image sizes (progressive resizing, 64 -> 128 -> 256 px) the flattened map must keep its
size, so :data:`FLAT_SIZE` x :data:`FLAT_SIZE` adaptive average pooling precedes the flatten: at 128 px it is the
identity (the paper's network exactly), at 256 px it averages 2 x 2 cells, at 64 px it repeats cells. ichd's head
outputs the 6 RSNA labels instead of 5.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

#: Side of the feature map that is flattened (the paper's 128 px input gives 16 x 16).
FLAT_SIZE = 16
#: Units of the dense layer (the embedding).
DENSE_UNITS = 128
#: Channels of the three convolution blocks.
BLOCK_CHANNELS = (32, 64, 128)


class CaceresFeatures(nn.Module):
    """Six 3x3 convolutions with ReLU in three blocks, each closed by 2x2 max pooling (``pool3`` is the last)."""

    def __init__(self) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = 3
        for b, out in enumerate(BLOCK_CHANNELS, start=1):
            for j in ("a", "b"):
                layers[f"conv{b}{j}"] = nn.Conv2d(channels, out, kernel_size=3, padding=1)
                layers[f"relu{b}{j}"] = nn.ReLU(inplace=True)
                channels = out
            layers[f"pool{b}"] = nn.MaxPool2d(2)
        self.body = nn.Sequential(layers)
        self.num_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def caceres_pool_and_head(channels: int = BLOCK_CHANNELS[-1]) -> tuple[nn.Module, nn.Module]:
    """``(pool, neck)``: adaptive pooling to FLAT_SIZE x FLAT_SIZE, and flatten -> dense 128 -> ReLU (the
    :class:`~ichd.models.backbones.SliceClassifier` flattens between the two)."""
    pool = nn.AdaptiveAvgPool2d(FLAT_SIZE)
    neck = nn.Sequential(nn.Linear(channels * FLAT_SIZE * FLAT_SIZE, DENSE_UNITS), nn.ReLU(inplace=True))
    return pool, neck
