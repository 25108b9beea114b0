"""RADnet-style slice CNN (Grewal et al. 2018): DenseNet with auxiliary segmentation heads used as attention.

RADnet adds, after the last concatenation of each dense block, an auxiliary branch of one 1x1 convolution and one
deconvolution that upsamples to the input size; each branch is trained to segment the hemorrhage, and the
segmentation "diverts the network's attention towards hemorrhagic regions". Here (RADnet's 40-layer, 3-block
DenseNet is replaced by MONAI's DenseNet121, 4 blocks):

* three auxiliary heads after dense blocks 2, 3 and 4 (strides 8, 16, 32): ``Conv2d(C, 1, 1)`` -> logits at the
  block's resolution, and a ``ConvTranspose2d`` (kernel 2f, stride f, initialised to bilinear upsampling) to the
  input size; in training mode the upsampled logits are kept in :attr:`RadnetDenseNetFeatures.aux_logits` for
  the mask loss (:func:`mask_loss`);
* attention: the last head's logits ``s`` (at the final feature resolution) weight the final feature map,
  ``F * (1 + sigmoid(s))``; the attended map (module ``attend``, the Grad-CAM layer) is average-pooled into the
  1024-d embedding, so :meth:`forward_features` is the attended embedding.

The ``features.*`` parameter names are MONAI's DenseNet121 names, so a MONAI/torchvision-layout DenseNet121
state dict loads from a user file (the segmentation heads ``aux.*`` then keep their initialisation).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Dense blocks (MONAI module names) followed by an auxiliary head, with their output stride.
AUX_BLOCKS: tuple[tuple[str, int], ...] = (("denseblock2", 8), ("denseblock3", 16), ("denseblock4", 32))
#: State-dict prefix of the parts RADnet adds to DenseNet121 (absent from DenseNet weight files).
NEW_PREFIXES: tuple[str, ...] = ("aux.",)


def _bilinear_kernel(factor: int) -> torch.Tensor:
    """(1, 1, 2f, 2f) kernel that makes ``ConvTranspose2d(stride=f, padding=f//2)`` a bilinear upsampling."""
    size = 2 * factor
    center = factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - torch.abs(og - center) / factor
    return (filt[:, None] * filt[None, :]).view(1, 1, size, size)


class AuxHead(nn.Module):
    """1x1 convolution to one segmentation logit per pixel, plus a learnable upsampling by ``factor``."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        self.up = nn.ConvTranspose2d(1, 1, kernel_size=2 * factor, stride=factor, padding=factor // 2, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(_bilinear_kernel(factor))
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, 1, h, w) at the block's resolution."""
        return self.score(x)

    def upsample(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits at the input resolution (B, 1, h * factor, w * factor)."""
        return self.up(logits)


class SpatialAttention(nn.Module):
    """``fmap * (1 + sigmoid(logits))``: the segmentation logits weight the feature map (1 to 2 times)."""

    def forward(self, fmap: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return fmap * (1.0 + torch.sigmoid(logits))


class RadnetDenseNetFeatures(nn.Module):
    """MONAI DenseNet121 trunk with three auxiliary segmentation heads; returns the attended final map."""

    def __init__(self) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1, pretrained=False)
        self.features = net.features
        self.act = nn.ReLU()
        channels = _block_channels(self.features)
        self.aux = nn.ModuleList(AuxHead(channels[name], stride) for name, stride in AUX_BLOCKS)
        self.attend = SpatialAttention()
        self.num_features = int(net.class_layers.out.in_features)
        #: Upsampled segmentation logits of the last training-mode forward pass, one (B, 1, H, W) per head.
        self.aux_logits: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps: dict[str, torch.Tensor] = {}
        names = {name for name, _ in AUX_BLOCKS}
        h = x
        for name, module in self.features.named_children():
            h = module(h)
            if name in names:
                taps[name] = h
        fmap = self.act(h)
        logits = [head(taps[name]) for head, (name, _) in zip(self.aux, AUX_BLOCKS)]
        self.aux_logits = [head.upsample(s) for head, s in zip(self.aux, logits)] if self.training else []
        return self.attend(fmap, logits[-1])


def _block_channels(features: nn.Module) -> dict[str, int]:
    """Output channels of each dense block (from a tiny dry run, so MONAI's growth settings need no copy)."""
    channels: dict[str, int] = {}
    h = torch.zeros(1, 3, 64, 64)
    training = features.training
    features.eval()
    with torch.no_grad():
        for name, module in features.named_children():
            h = module(h)
            channels[name] = int(h.shape[1])
    features.train(training)
    return channels


def mask_loss(aux_logits: list[torch.Tensor], masks: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
    """Mean pixel-wise binary cross-entropy of every auxiliary head against ``masks`` (B, 1, H, W) in [0, 1],
    over the slices with ``has_mask`` only; slices without a mask are left out. Zero (keeping the graph) when
    no slice of the batch has a mask. Masks are resized (area) to each head's output size."""
    if not aux_logits:
        raise ValueError("no auxiliary segmentation outputs: run the model in training mode first")
    keep = has_mask.to(device=aux_logits[0].device, dtype=torch.bool).view(-1)
    if not bool(keep.any()):
        return sum(s.sum() for s in aux_logits) * 0.0
    target = masks.to(aux_logits[0].device, dtype=torch.float32)[keep]
    losses = []
    for s in aux_logits:
        t = target if target.shape[-2:] == s.shape[-2:] else F.interpolate(target, size=s.shape[-2:], mode="area")
        losses.append(F.binary_cross_entropy_with_logits(s[keep].float(), t))
    return torch.stack(losses).mean()

