"""VGG19 (Simonyan & Zisserman 2015), the slice CNN of the LRCN paper (Qiu et al.), written in torch.

The convolutional trunk keeps torchvision's module layout and parameter names (``features.0.weight``, ...,
``features.34.bias``), so a torchvision-format ``vgg19`` state dict loads unchanged from a user-supplied file
(its ``classifier.*`` part is dropped). No weights ship with ichd: random initialisation otherwise (torchvision's
scheme: Kaiming-normal convolutions, zero biases).

The LRCN head (two 1000-unit dense layers with dropout 0.5 between them, then the output layer) is built by
:func:`lrcn_head` and sits after a global average pool of the trunk (torchvision pools to 7 x 7 and flattens
25,088 values into 4096-unit layers; the global pool keeps the head small and independent of the input size).
"""

from __future__ import annotations

import torch
from torch import nn

#: VGG19 ("configuration E"): output channels of each 3x3 convolution, "M" = 2x2 max pooling.
VGG19_LAYERS: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                       512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGGFeatures(nn.Module):
    """VGG convolutional trunk: returns the (B, 512, S/32, S/32) map after the last max pooling."""

    def __init__(self, layers: tuple[int | str, ...] = VGG19_LAYERS) -> None:
        super().__init__()
        modules: list[nn.Module] = []
        channels = 3
        for v in layers:
            if v == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                modules += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*modules)
        self.num_features = channels
        #: Dotted name (inside this module) of the last layer, whose output is the final feature map.
        self.last_layer = f"features.{len(modules) - 1}"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def lrcn_head(in_features: int, units: int = 1000, dropout: float = 0.5) -> nn.Sequential:
    """LRCN's dense layers: ``units`` -> ReLU -> dropout -> ``units`` -> ReLU (the output layer follows)."""
    return nn.Sequential(nn.Linear(in_features, units), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(units, units), nn.ReLU(inplace=True))
