"""Frozen pretrained encoders with small heads: the model family that learns from little labelled head CT.

With ~100 labelled patients a CPU fine-tune of a slice CNN moves the ImageNet features only a little and leaves
each fold model calibrated differently; a frozen ImageNet encoder with a small head trained on its cached
embeddings measured better (docs/results.md, issue 20). This module holds the two parts of such a model:

:class:`FrozenEncoderClassifier` (registry name ``frozen_encoder``, family ``slice``)
    one or several EfficientNet-Lite trunks with their offline ImageNet weights, frozen (``requires_grad`` off,
    batch norm always in eval mode), each run at its own input size (the model input, at the largest size, is
    resized with antialiasing for the smaller ones), pooled (``avg`` or ``avgmax``) at a selectable depth
    (``head``: the 1280-d head convolution; ``last_stage``: the last MBConv stage, 320/352-d), and concatenated.
    Its ``classifier`` is a linear head on the slice alone. It is an ordinary slice model: ``forward_features``,
    ``forward_head``, ``default_cfg`` (input size, ``half`` normalisation, the Grad-CAM layer of its first
    encoder), so preprocessing, prediction, Grad-CAM and checkpoints use it unchanged. An encoder may also see
    each window alone as a grey image (``channels: each_window``, three passes): ImageNet features are made for
    natural images, and a grey window is closer to one than three windows as false colours. (Grad-CAM of such
    an encoder follows its last pass, the soft-tissue window.)

:class:`ContextHead` (registry names ``seq_context_linear`` and ``seq_context_mlp``, family ``sequence``)
    a linear or small-MLP head over a slice's (selected, standardised) embedding and the mean embedding of its
    ``context`` neighbours on each side within the scan. At a scan's ends only the neighbours that exist are
    averaged; a scan of one slice uses the slice itself as its context. It has the sequence-model interface
    (``forward(features, probs, lengths) -> (B, T, 6)`` logits), so it travels in a sequence checkpoint with its
    feature selector and the :class:`~ichd.inference.predictor.Predictor` runs it as the model's second stage.

The heads are trained on cached embeddings by :mod:`ichd.training.frozen`.

:class:`LesionMapHead` (optional part of a :class:`FrozenEncoderClassifier`, ``lesion_map`` in its kwargs)
    a per-pixel linear head (a 1x1 convolution, i.e. a logistic regression per pixel) over the first encoder's
    maps at several MBConv stages, upsampled to a ``grid`` x ``grid`` map, plus the model input's three windows
    pooled to that grid and their local mean: the probability that a pixel is hemorrhage. It is trained on
    hemorrhage masks (:mod:`ichd.training.lesion_map`), not on the slice labels, and is the model's evidence map
    (``default_cfg["evidence_map"] == "lesion"``, :mod:`ichd.explain.lesion`): Grad-CAM of the frozen model's
    linear head did not point at the bleed (docs/results.md, issue 22).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ichd.constants import LABELS, NUM_CLASSES
from ichd.errors import ConfigError, InputError, ModelError, did_you_mean
from ichd.models.backbones import SliceClassifier
from ichd.models.registry import register_model

#: Registry names of the encoders a frozen model can use (those with offline ImageNet weights) -> Lite variant.
FROZEN_ENCODERS: dict[str, int] = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}
#: Where the embedding is taken: after the 1x1 head convolution, or after the last MBConv stage.
DEPTHS: tuple[str, ...] = ("head", "last_stage")
#: Global pooling of the feature map: average, or average and max concatenated.
POOLS: tuple[str, ...] = ("avg", "avgmax")
#: Head kinds of :class:`ContextHead`.
HEAD_KINDS: tuple[str, ...] = ("linear", "mlp")
#: How an encoder sees the three CT windows: as the three colour channels of one image (``windows``), or each
#: window alone as a grey image (``each_window``: three passes, embeddings concatenated in window order).
CHANNEL_MODES: tuple[str, ...] = ("windows", "each_window")


@dataclass
class EncoderSpec:
    """One frozen encoder: a registry name of :data:`FROZEN_ENCODERS`, its input size (pixels) and how it sees
    the windows (:data:`CHANNEL_MODES`)."""

    name: str = "efficientnet_lite0"
    input_size: int = 256
    channels: Literal["windows", "each_window"] = "windows"
    #: also embed the left-right mirror image and average the two pooled embeddings (flip test-time
    #: augmentation of the features: the head sees one vector per view either way; twice the encoder's cost)
    flip: bool = False

    @property
    def views(self) -> int:
        """Passes per slice: 1 (the windows as colour channels) or 3 (each window as a grey image)."""
        return 3 if self.channels == "each_window" else 1

    def __post_init__(self) -> None:
        if self.name not in FROZEN_ENCODERS:
            raise ConfigError(f"frozen encoder {self.name!r} is unknown; {did_you_mean(self.name, FROZEN_ENCODERS)}",
                              hint="only encoders with offline ImageNet weights can be frozen")
        if self.input_size % 32 or self.input_size < 64:
            raise ConfigError(f"encoder input_size must be a multiple of 32 and >= 64, got {self.input_size}")
        if self.channels not in CHANNEL_MODES:
            raise ConfigError(f"encoder channels {self.channels!r} is unknown; "
                              f"{did_you_mean(str(self.channels), CHANNEL_MODES)}")


@dataclass
class FrozenEncoderConfig:
    """The frozen part of the model: encoders (concatenated in order), depth and pooling."""

    encoders: list[EncoderSpec] = field(default_factory=lambda: [EncoderSpec()])
    depth: Literal["head", "last_stage"] = "head"
    pool: Literal["avg", "avgmax"] = "avg"

    def __post_init__(self) -> None:
        self.encoders = [e if isinstance(e, EncoderSpec) else EncoderSpec(**e) for e in self.encoders]
        if not self.encoders:
            raise ConfigError("a frozen encoder model needs at least one encoder")
        if self.depth not in DEPTHS:
            raise ConfigError(f"depth {self.depth!r} is unknown; {did_you_mean(str(self.depth), DEPTHS)}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool {self.pool!r} is unknown; {did_you_mean(str(self.pool), POOLS)}")

    @property
    def input_size(self) -> int:
        """Model input size: the largest encoder size (smaller encoders get a resized copy)."""
        return max(e.input_size for e in self.encoders)

    def describe(self) -> str:
        enc = " + ".join(f"{e.name.replace('efficientnet_', '').title()}@{e.input_size}"
                         + (" per window" if e.channels == "each_window" else "")
                         + (" flip-averaged" if e.flip else "") for e in self.encoders)
        return f"{enc} ({self.depth}, {self.pool} pool)"


@dataclass
class LesionMapConfig:
    """The per-pixel lesion head: which MBConv blocks of the first encoder it reads (0-based indices into its
    ``_blocks``), the side of its output grid, and the window of the local mean of the input channels."""

    blocks: list[int] = field(default_factory=lambda: [2, 4, 10])
    grid: int = 64
    smooth: int = 5

    def __post_init__(self) -> None:
        self.blocks = [int(b) for b in self.blocks]
        if not self.blocks or min(self.blocks) < 0 or len(set(self.blocks)) != len(self.blocks):
            raise ConfigError(f"lesion_map.blocks must be distinct block indices >= 0, got {self.blocks}")
        if self.grid < 8 or self.smooth < 1 or self.smooth % 2 == 0:
            raise ConfigError(f"lesion_map needs grid >= 8 and an odd smooth >= 1, got {self.grid}, {self.smooth}")


class LesionMapHead(nn.Module):
    """Standardisation + a 1x1 convolution: (B, F, G, G) pixel features -> (B, 1, G, G) hemorrhage logits."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.score = nn.Conv2d(num_features, 1, kernel_size=1)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        return self.score(z)


class FrozenEncoderClassifier(nn.Module):
    """Frozen EfficientNet-Lite encoder(s) + a linear slice head; see the module docstring."""

    def __init__(self, config: FrozenEncoderConfig, *, num_classes: int = NUM_CLASSES, pretrained: bool = False,
                 dropout: float = 0.0, norm: str = "half", lesion_map: dict[str, Any] | None = None) -> None:
        super().__init__()
        from ichd.models.efficientnet_lite import EfficientNetLiteFeatures
        from ichd.preprocessing.normalize import preset

        self.config = config
        mean, std = preset(norm)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.encoders = nn.ModuleList()
        dims = []
        for spec in config.encoders:
            variant = FROZEN_ENCODERS[spec.name]
            trunk = EfficientNetLiteFeatures(f"efficientnet-lite{variant}", image_size=spec.input_size,
                                             drop_connect_rate=0.0)
            if pretrained:
                trunk.load_imagenet()
            width = trunk.num_features if config.depth == "head" else int(trunk.net._blocks[-1]._bn2.num_features)
            dims.append(width * (2 if config.pool == "avgmax" else 1) * spec.views)
            self.encoders.append(trunk)
        for p in self.encoders.parameters():
            p.requires_grad_(False)
        self.encoders.eval()
        self.num_features = int(sum(dims))
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        last = len(self.encoders[0].net._blocks) - 1
        layer = "encoders.0.head_act" if config.depth == "head" else f"encoders.0.net._blocks.{last}"
        #: Keyword arguments that rebuild this architecture with :func:`ichd.models.create_model`.
        self.model_kwargs: dict[str, Any] = {"encoders": [asdict(e) for e in config.encoders],
                                             "depth": config.depth, "pool": config.pool, "dropout": dropout,
                                             "norm": norm}
        self.default_cfg: dict[str, Any] = {
            "name": "frozen_encoder", "family": "slice", "input_size": config.input_size, "norm": norm,
            "mean": list(mean), "std": list(std), "gradcam_layer": layer, "num_features": self.num_features,
            "num_classes": num_classes, "labels": list(LABELS) if num_classes == len(LABELS) else None,
            "pretrained": "imagenet:" + "+".join(e.name for e in config.encoders) if pretrained else None,
            "encoder": config.describe(),
        }
        self.lesion_config: LesionMapConfig | None = None
        self.lesion_head: LesionMapHead | None = None
        if lesion_map is not None:
            self.add_lesion_head(LesionMapConfig(**lesion_map))

    def add_lesion_head(self, cfg: LesionMapConfig) -> LesionMapHead:
        """Attach an (untrained) :class:`LesionMapHead` for ``cfg``; it travels in ``model_kwargs`` and the state
        dict, and makes it the model's evidence map (``default_cfg["evidence_map"] = "lesion"``)."""
        n_blocks = len(self.encoders[0].net._blocks)
        if max(cfg.blocks) >= n_blocks:
            raise ConfigError(f"lesion_map.blocks {cfg.blocks} name a block the first encoder lacks "
                              f"(it has {n_blocks}: 0..{n_blocks - 1})")
        widths = [int(self.encoders[0].net._blocks[b]._bn2.num_features) for b in cfg.blocks]
        self.lesion_config = cfg
        self.lesion_head = LesionMapHead(sum(widths) + 2 * 3)
        self.model_kwargs["lesion_map"] = asdict(cfg)
        self.default_cfg["evidence_map"] = "lesion"
        return self.lesion_head

    def lesion_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel features (B, F, G, G) of the model input ``x`` (as :meth:`forward` takes it: windows in [0, 1]
        or uint8): the first encoder's maps after each of ``lesion_config.blocks`` (bilinear to G x G), the
        normalised input's channels area-pooled to G x G, and their local mean over ``smooth`` x ``smooth``
        grid cells."""
        cfg = self.lesion_config
        if cfg is None:
            raise ModelError("this frozen-encoder model has no lesion map head",
                             hint="train one with `ichd train lesion-map`")
        spec, trunk = self.config.encoders[0], self.encoders[0]
        x = self.normalize(x)
        xe = x
        if xe.shape[-1] != spec.input_size or xe.shape[-2] != spec.input_size:
            xe = F.interpolate(xe, size=(spec.input_size, spec.input_size), mode="bilinear", align_corners=False,
                               antialias=True)
        net = trunk.net
        h = trunk.stem_act(net._bn0(net._conv_stem(xe)))
        size = (cfg.grid, cfg.grid)
        parts: list[torch.Tensor] = []
        wanted = set(cfg.blocks)
        for i, block in enumerate(net._blocks):
            h = block(h, drop_connect_rate=None)
            if i in wanted:
                parts.append(F.interpolate(h, size=size, mode="bilinear", align_corners=False))
            if i >= max(cfg.blocks):
                break
        img = F.adaptive_avg_pool2d(x, size)
        local = F.avg_pool2d(img, cfg.smooth, stride=1, padding=cfg.smooth // 2, count_include_pad=False)
        return torch.cat([*parts, img, local], dim=1)

    def lesion_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G, G) probability that each grid cell of the model input ``x`` is hemorrhage."""
        if self.lesion_head is None:
            self.lesion_features(x)  # raises the "no lesion map head" error
        assert self.lesion_head is not None
        return torch.sigmoid(self.lesion_head(self.lesion_features(x)))[:, 0]

    def train(self, mode: bool = True) -> FrozenEncoderClassifier:
        """Only the head trains: the encoders (and their batch-norm statistics) stay in eval mode."""
        super().train(mode)
        self.encoders.eval()
        return self

    #: [0, 1] float (or uint8 0..255) -> the encoders' normalised input (the slice models' own method)
    normalize = SliceClassifier.normalize

    def encoder_maps(self, index: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps of encoder ``index`` for normalised input ``x`` (resized to the encoder's size):
        ``{"last_stage": (B, C, h, w), "head": (B, 1280, h, w)}`` (both: one pass serves every depth)."""
        spec, trunk = self.config.encoders[index], self.encoders[index]
        if x.shape[-1] != spec.input_size or x.shape[-2] != spec.input_size:
            x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        net = trunk.net
        x = trunk.stem_act(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            x = block(x, drop_connect_rate=None)
        return {"last_stage": x, "head": trunk.head_act(net._bn1(net._conv_head(x)))}

    @staticmethod
    def pool_map(fmap: torch.Tensor, pool: str) -> list[torch.Tensor]:
        """Global pooling of a (B, C, h, w) map: ``[avg]`` or ``[avg, max]``."""
        out = [fmap.mean(dim=(2, 3))]
        if pool == "avgmax":
            out.append(fmap.amax(dim=(2, 3)))
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding (B, num_features): each encoder's pooled map at its own input size, concatenated (for an
        ``each_window`` encoder: one pass per window, as a grey image, in window order; for a ``flip`` encoder
        the mean of the view's and its mirror image's pooled maps)."""
        x = self.normalize(x)
        parts = []
        for i, spec in enumerate(self.config.encoders):
            for view in self.views(x, spec):
                pooled = self.pool_map(self.encoder_maps(i, view)[self.config.depth], self.config.pool)
                if spec.flip:
                    mirror = self.pool_map(self.encoder_maps(i, view.flip(-1))[self.config.depth], self.config.pool)
                    pooled = [(a + b) / 2 for a, b in zip(pooled, mirror, strict=True)]
                parts.extend(pooled)
        return torch.cat(parts, dim=1)

    @staticmethod
    def views(x: torch.Tensor, spec: EncoderSpec) -> list[torch.Tensor]:
        """What encoder ``spec`` sees of the normalised input: the 3-window image, or each window as grey."""
        if spec.channels == "each_window":
            return [x[:, c:c + 1].expand(-1, 3, -1, -1) for c in range(x.shape[1])]
        return [x]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of the linear slice head."""
        return self.classifier(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("frozen_encoder", family="slice", pretrained_available=True,
                description="frozen EfficientNet-Lite encoder(s) (ImageNet, offline) + linear slice head; "
                            "trained with `ichd train frozen`",
                source="ImageNet EfficientNet-Lite (Tan & Le 2019) as a frozen feature extractor",
                defaults={"encoders": None, "depth": "head", "pool": "avg", "dropout": 0.0, "norm": "half",
                          "lesion_map": None})
def frozen_encoder(*, pretrained: bool, num_classes: int, weights: str | Path | None,
                   encoders: list[dict[str, Any]] | None, depth: str, pool: str, dropout: float, norm: str,
                   lesion_map: dict[str, Any] | None = None,
                   input_size: int | None = None) -> FrozenEncoderClassifier:
    if weights is not None:
        raise ModelError("frozen_encoder takes its encoders' ImageNet weights (pretrained=True), not a weights file",
                         hint="load a trained frozen-encoder model from its checkpoint or bundle")
    specs = [EncoderSpec(**e) for e in encoders] if encoders else [EncoderSpec(input_size=input_size or 256)]
    cfg = FrozenEncoderConfig(encoders=specs, depth=depth, pool=pool)  # type: ignore[arg-type]
    return FrozenEncoderClassifier(cfg, num_classes=num_classes, pretrained=pretrained, dropout=dropout, norm=norm,
                                   lesion_map=lesion_map)


# ----------------------------------------------------------------------------------------------------------
# heads over a slice and its neighbours
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ContextHeadConfig:
    """A head over a slice and its neighbours.

    Attributes:
        kind: ``linear`` or ``mlp`` (one hidden layer, ReLU, dropout).
        context: neighbours on each side whose mean embedding joins the slice's (0 = the slice alone).
        hidden: hidden units of the MLP.
        dropout: dropout on the input (both kinds) and the hidden layer (MLP).
        scan_mean: the mean embedding of the whole scan (series) joins every slice's input too: scan-level
            context, the same for every slice of a scan (:func:`scan_mean_features`). A one-slice input has no
            scan to average: it gets the head's ``scan_prior`` instead, the mean scan embedding of the training
            scans (set by ``ichd train frozen``), as a missing feature is imputed with its training mean.
    """

    kind: Literal["linear", "mlp"] = "linear"
    context: int = 1
    hidden: int = 256
    dropout: float = 0.0
    scan_mean: bool = False

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ConfigError(f"head kind {self.kind!r} is unknown; {did_you_mean(str(self.kind), HEAD_KINDS)}")
        if self.context < 0 or self.hidden < 1:
            raise ConfigError(f"head needs context >= 0 and hidden >= 1, got {self.context}, {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


def neighbour_mean(x: torch.Tensor, lengths: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T, F): the mean of each slice's neighbours within ``k`` slices on each side, inside its scan.

    The slice itself is excluded; at the ends of a scan only existing neighbours count; a slice without any
    neighbour (a one-slice scan) gets its own value. Padding positions (``t >= lengths[b]``) are zero.
    """
    b, t, _ = x.shape
    mask = (torch.arange(t, device=x.device)[None, :] < lengths.to(x.device)[:, None]).to(x.dtype)  # (B, T)
    xm = x * mask.unsqueeze(-1)
    zero = torch.zeros(b, 1, x.shape[-1], dtype=x.dtype, device=x.device)
    csum = torch.cat([zero, xm.cumsum(dim=1)], dim=1)  # (B, T+1, F)
    ccount = torch.cat([torch.zeros(b, 1, dtype=x.dtype, device=x.device), mask.cumsum(dim=1)], dim=1)
    idx = torch.arange(t, device=x.device)
    lo = (idx - k).clamp(min=0)
    hi = (idx + k + 1).clamp(max=t)
    total = csum[:, hi] - csum[:, lo] - xm
    count = (ccount[:, hi] - ccount[:, lo] - mask).unsqueeze(-1)
    out = torch.where(count > 0, total / count.clamp(min=1), x)
    return out * mask.unsqueeze(-1)


def scan_mean_features(x: torch.Tensor, lengths: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, F): the mean of each scan's slices (``t < lengths[b]``) at every one of its positions; padding
    positions are zero. With ``prior`` (F,), a one-slice scan gets ``prior`` instead of its own slice."""
    t = x.shape[1]
    lengths = lengths.to(x.device)
    mask = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).to(x.dtype).unsqueeze(-1)
    mean = (x * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1, F)
    if prior is not None:
        single = (lengths == 1).view(-1, 1, 1)
        mean = torch.where(single, prior.to(x.dtype).view(1, 1, -1), mean)
    return mean * mask


class ContextHead(nn.Module):
    """Per-slice logits from a slice's features and its neighbours' mean (and the scan's mean embedding with
    ``scan_mean``): ``forward(features, probs, lengths)``.

    ``probs`` (the slice model's probabilities) are accepted for the sequence-model interface and not used.
    """

    def __init__(self, feature_dim: int, config: ContextHeadConfig | None = None,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.config = cfg = config or ContextHeadConfig()
        if feature_dim < 1:
            raise ConfigError(f"a context head needs feature_dim >= 1, got {feature_dim}")
        self.feature_dim = int(feature_dim)
        self.num_classes = num_classes
        in_dim = self.feature_dim * (1 + int(cfg.context > 0) + int(cfg.scan_mean))
        if cfg.scan_mean:  # the training scans' mean embedding: the scan context of a one-slice input
            self.register_buffer("scan_prior", torch.zeros(self.feature_dim))
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, num_classes)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                     nn.Linear(cfg.hidden, num_classes))
        name = f"seq_context_{cfg.kind}"
        self.model_kwargs: dict[str, Any] = {"feature_dim": self.feature_dim,
                                             **{k: v for k, v in asdict(cfg).items() if k != "kind"}}
        self.default_cfg: dict[str, Any] = {"name": name, "family": "sequence", "num_classes": num_classes,
                                            "labels": list(LABELS) if num_classes == len(LABELS) else None,
                                            "feature_dim": self.feature_dim}

    @property
    def uses_features(self) -> bool:
        return True

    @property
    def uses_scan_mean(self) -> bool:
        """Whether the scan's mean embedding joins the input (a one-slice input then sees ``scan_prior``)."""
        return bool(self.config.scan_mean)

    def inputs(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The head's input (B, T, F, 2F or 3F): the features, their neighbour mean when ``context`` > 0, and the
        scan's mean embedding with ``scan_mean``."""
        parts = [features]
        if self.config.context > 0:
            parts.append(neighbour_mean(features, lengths, self.config.context))
        if self.config.scan_mean:
            parts.append(scan_mean_features(features, lengths, self.scan_prior))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def forward(self, features: torch.Tensor | None, probs: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        if features is None or features.ndim != 3 or features.shape[-1] != self.feature_dim:
            got = None if features is None else tuple(features.shape)
            raise InputError(f"features must be (batch, slices, {self.feature_dim}), got {got}")
        b, t, _ = features.shape
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long)
        lengths = torch.as_tensor(lengths, dtype=torch.long, device=features.device)
        if lengths.shape != (b,) or int(lengths.min()) < 1 or int(lengths.max()) > t:
            raise InputError(f"lengths must be (batch,) in 1..{t}, got {lengths.tolist()}")
        mask = (torch.arange(t, device=features.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        logits = self.net(self.drop(self.inputs(features, lengths)))
        return logits * mask.to(logits.dtype)


def _context_builder(kind: str) -> Any:
    from ichd.models.sequence import second_stage_builder

    return second_stage_builder(
        f"seq_context_{kind}",
        lambda dim, n, **kw: ContextHead(dim, ContextHeadConfig(kind=kind, **kw), num_classes=n),  # type: ignore[arg-type]
        "ichd train frozen")


_HEAD_SOURCE = "frozen-encoder heads (issue 20): a slice plus the mean of its neighbours"
register_model("seq_context_linear", family="sequence", source=_HEAD_SOURCE,
               description="linear head over a slice's embedding and its neighbours' mean")(_context_builder("linear"))
register_model("seq_context_mlp", family="sequence", source=_HEAD_SOURCE,
               description="one-hidden-layer MLP over a slice's embedding and its neighbours' mean"
               )(_context_builder("mlp"))
