"""Scan-level sequence models over per-slice CNN features (stage 2 of Burduja et al. 2020).

:class:`SequenceModel` reads one CT scan as a sequence of slices (inferior -> superior). Per slice it gets the
selected CNN features (see :mod:`ichd.models.feature_selection`) and the CNN's 6 class probabilities, and returns
6 logits per slice. The seed's model is a 3-layer bidirectional LSTM (hidden 256, dropout 0.3) whose per-slice
outputs are concatenated with the CNN probabilities right before the final linear layer ("PCA features +
ResNeXt-101 predictions", the best row of its Table 2). Options:

- ``arch``: ``lstm`` (seed), ``gru``, or ``conv1d`` (a stack of 1-D convolutions along the slice axis);
- ``probs_input``: feed the CNN probabilities as sequence input too (with ``use_features=False`` this is the
  seed's "BiLSTM on ResNeXt-101 predictions" row);
- ``probs_head``: concatenate the CNN probabilities before the final linear layer (seed default);
- ``neighbour_diff``: append the differences to the previous and next slice's input (zero at the ends), as the
  top RSNA 2019 solutions did.

Scans have different lengths. A batch is padded to the longest scan and ``lengths`` gives each scan's true
length: recurrent layers use packed sequences and the convolutional head re-zeroes padded positions after every
layer, so each scan's outputs are exactly those of running it alone (tested). Nothing is truncated.

The models are registered (``seq_lstm``, ``seq_gru``, ``seq_conv1d``; family ``sequence``) so their checkpoints
use :func:`ichd.models.checkpoint.save_checkpoint`; the fitted feature selector, the scan rule and the CNN the
features come from travel in the checkpoint's ``extra`` (see :func:`sequence_checkpoint_extra` and
:func:`load_sequence_checkpoint`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ichd.constants import LABELS, NUM_CLASSES
from ichd.errors import ConfigError, InputError, ModelError, did_you_mean
from ichd.models.feature_selection import FeatureSelector
from ichd.models.registry import register_model
from ichd.models.scan_rules import RADNET_MIN_RUN, scan_probabilities

SeqArch = Literal["lstm", "gru", "conv1d"]
SEQ_ARCHS: tuple[str, ...] = ("lstm", "gru", "conv1d")


@dataclass
class SeqModelConfig:
    """Architecture of the sequence model.

    Attributes:
        arch: ``lstm`` (seed), ``gru`` or ``conv1d``.
        hidden: hidden units per direction (recurrent) or channels (conv1d).
        layers: stacked layers.
        dropout: dropout between stacked layers (recurrent: PyTorch's inter-layer dropout).
        bidirectional: recurrent layers read the scan both ways (the seed's BiLSTM).
        conv_kernel: kernel size along the slice axis for ``conv1d`` (odd).
        use_features: selected CNN features are part of the sequence input.
        probs_input: CNN probabilities are part of the sequence input.
        probs_head: CNN probabilities are concatenated with the sequence output before the final linear layer.
        neighbour_diff: append (x_t - x_{t-1}) and (x_t - x_{t+1}) of the sequence input (0 at the scan ends).
        probs_as_logits: give the CNN outputs to the model as log-odds ``log(p / (1 - p))`` instead of
            probabilities (the seed uses probabilities).
        head_init: ``random`` (PyTorch default, the seed) or ``cnn``: the final layer starts as the identity on
            the concatenated CNN outputs and zero on the sequence features, so with ``probs_as_logits`` the
            untrained model predicts exactly the CNN's probabilities and training learns a correction from the
            neighbouring slices (needs ``probs_head``).
    """

    arch: SeqArch = "lstm"
    hidden: int = 256
    layers: int = 3
    dropout: float = 0.3
    bidirectional: bool = True
    conv_kernel: int = 5
    use_features: bool = True
    probs_input: bool = False
    probs_head: bool = True
    neighbour_diff: bool = False
    probs_as_logits: bool = False
    head_init: Literal["random", "cnn"] = "random"

    def __post_init__(self) -> None:
        if self.arch not in SEQ_ARCHS:
            raise ConfigError(f"sequence arch {self.arch!r} is unknown; {did_you_mean(str(self.arch), SEQ_ARCHS)}")
        if self.hidden < 1 or self.layers < 1:
            raise ConfigError(f"sequence model needs hidden >= 1 and layers >= 1, got {self.hidden}, {self.layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ConfigError(f"conv_kernel must be a positive odd number, got {self.conv_kernel}")
        if self.head_init not in ("random", "cnn"):
            raise ConfigError(f"head_init must be 'random' or 'cnn', got {self.head_init!r}")
        if self.head_init == "cnn" and not self.probs_head:
            raise ConfigError("head_init: cnn needs probs_head: true (the CNN outputs must reach the final layer)")
        if not (self.use_features or self.probs_input):
            raise ConfigError("the sequence model needs an input: set use_features and/or probs_input to true")


def lengths_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean (B, T) mask, True where position t < lengths[b]."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def neighbour_differences(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, 2F): x_t - x_{t-1} and x_t - x_{t+1}, zero at each scan's first / last slice and on padding."""
    _b, t, _ = x.shape
    mask = lengths_mask(lengths, t).unsqueeze(-1).to(x.dtype)
    prev = torch.zeros_like(x)
    nxt = torch.zeros_like(x)
    if t > 1:
        prev[:, 1:] = x[:, 1:] - x[:, :-1]
        nxt[:, :-1] = x[:, :-1] - x[:, 1:]
        # The "next" of a scan's last slice is padding: zero it (the mask shifted by one).
        nxt[:, :-1] = nxt[:, :-1] * mask[:, 1:]
    return torch.cat([prev, nxt], dim=-1) * mask


class _Conv1dStack(nn.Module):
    """1-D convolutions along the slice axis with padded positions re-zeroed after each layer."""

    def __init__(self, in_features: int, channels: int, layers: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(in_features if i == 0 else channels, channels, kernel, padding=kernel // 2)
            for i in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.out_features = channels

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(1).to(x.dtype)  # (B, 1, T)
        h = x.transpose(1, 2) * m
        for i, conv in enumerate(self.convs):
            h = torch.relu(conv(h)) * m
            if i < len(self.convs) - 1:
                h = self.dropout(h)
        return h.transpose(1, 2)


class SequenceModel(nn.Module):
    """Per-slice logits for whole scans: ``forward(features, probs, lengths) -> (B, T, 6)``.

    Args:
        feature_dim: number of selected CNN features per slice (0 when ``use_features`` is false).
        config: architecture; see :class:`SeqModelConfig`.
        num_classes: outputs per slice (6: ``LABELS``), also the width of ``probs``.
    """

    def __init__(self, feature_dim: int, config: SeqModelConfig | None = None,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.config = cfg = config or SeqModelConfig()
        self.feature_dim = int(feature_dim) if cfg.use_features else 0
        if cfg.use_features and self.feature_dim < 1:
            raise ConfigError("use_features is true but the feature dimension is 0")
        self.num_classes = num_classes
        in_dim = self.feature_dim + (num_classes if cfg.probs_input else 0)
        self.input_dim = in_dim * (3 if cfg.neighbour_diff else 1)
        if cfg.arch == "conv1d":
            self.encoder: nn.Module = _Conv1dStack(self.input_dim, cfg.hidden, cfg.layers, cfg.conv_kernel,
                                                   cfg.dropout)
            enc_out = cfg.hidden
        else:
            rnn_cls = nn.LSTM if cfg.arch == "lstm" else nn.GRU
            self.encoder = rnn_cls(self.input_dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                                   dropout=cfg.dropout if cfg.layers > 1 else 0.0,
                                   bidirectional=cfg.bidirectional)
            enc_out = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.head = nn.Linear(enc_out + (num_classes if cfg.probs_head else 0), num_classes)
        if cfg.head_init == "cnn":
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.weight[:, enc_out:] = torch.eye(num_classes)
                self.head.bias.zero_()
        name = f"seq_{cfg.arch}"
        #: Keyword arguments that rebuild this architecture with :func:`ichd.models.create_model`.
        self.model_kwargs: dict[str, Any] = {"feature_dim": self.feature_dim,
                                             **{k: v for k, v in asdict(cfg).items() if k != "arch"}}
        self.default_cfg: dict[str, Any] = {"name": name, "family": "sequence", "num_classes": num_classes,
                                            "labels": list(LABELS) if num_classes == len(LABELS) else None,
                                            "feature_dim": self.feature_dim}

    @property
    def uses_features(self) -> bool:
        """Whether the model reads the (selected) CNN embeddings (else only the CNN probabilities)."""
        return bool(self.config.use_features)

    def _check(self, features: torch.Tensor | None, probs: torch.Tensor, lengths: torch.Tensor) -> None:
        if probs.ndim != 3 or probs.shape[-1] != self.num_classes:
            raise InputError(f"probs must be (batch, slices, {self.num_classes}), got {tuple(probs.shape)}")
        if self.config.use_features:
            if features is None or features.ndim != 3 or features.shape[-1] != self.feature_dim:
                got = None if features is None else tuple(features.shape)
                raise InputError(f"features must be (batch, slices, {self.feature_dim}), got {got}")
            if features.shape[:2] != probs.shape[:2]:
                raise InputError(f"features {tuple(features.shape)} and probs {tuple(probs.shape)} disagree")
        if lengths.ndim != 1 or lengths.shape[0] != probs.shape[0]:
            raise InputError(f"lengths must be (batch,), got {tuple(lengths.shape)}")
        if int(lengths.min()) < 1 or int(lengths.max()) > probs.shape[1]:
            raise InputError(f"lengths must lie in 1..{probs.shape[1]}, got {lengths.tolist()}")

    def forward(self, features: torch.Tensor | None, probs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, num_classes); positions at or beyond ``lengths[b]`` are zero.

        ``features``: (B, T, feature_dim) or None when ``use_features`` is false; ``probs``: (B, T, 6) CNN
        probabilities; ``lengths``: (B,) number of real slices per scan (padding follows).
        """
        cfg = self.config
        lengths = torch.as_tensor(lengths, dtype=torch.long, device=probs.device)
        self._check(features, probs, lengths)
        t = probs.shape[1]
        if cfg.probs_as_logits:
            probs = torch.logit(probs.clamp(1e-6, 1.0 - 1e-6))
        parts = ([features] if cfg.use_features else []) + ([probs] if cfg.probs_input else [])
        x = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        if cfg.neighbour_diff:
            x = torch.cat([x, neighbour_differences(x, lengths)], dim=-1)
        mask = lengths_mask(lengths, t)
        if cfg.arch == "conv1d":
            h = self.encoder(x, mask)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.encoder(packed)
            h, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        if cfg.probs_head:
            h = torch.cat([h, probs], dim=-1)
        return self.head(h) * mask.unsqueeze(-1).to(h.dtype)


def second_stage_builder(name: str, make: Any, trained_by: str) -> Any:
    """Registry builder of a second-stage model (family ``sequence``): ``make(feature_dim, num_classes, **kwargs)``
    builds it; such models have no pretrained weights, and bad keyword arguments are a :class:`ModelError`."""

    def build(*, pretrained: bool = False, num_classes: int = NUM_CLASSES, weights: str | Path | None = None,
              feature_dim: int = 0, **kwargs: Any) -> nn.Module:
        if pretrained or weights is not None:
            raise ModelError(f"{name} has no pretrained weights; it is trained by `{trained_by}`")
        try:
            return make(feature_dim, num_classes, **kwargs)
        except TypeError as e:
            raise ModelError(f"bad arguments for {name}: {e}") from e

    return build


def _builder(arch: str) -> Any:
    return second_stage_builder(
        f"sequence model seq_{arch}",
        lambda dim, n, **kw: SequenceModel(dim, SeqModelConfig(arch=arch, **kw), num_classes=n),  # type: ignore[arg-type]
        "ichd train seq")


_SOURCE = "Burduja et al. 2020 (CNN embeddings -> feature selection -> BiLSTM)"
register_model("seq_lstm", family="sequence", source=_SOURCE,
               description="3-layer bidirectional LSTM over slice features (the seed's scan model)")(_builder("lstm"))
register_model("seq_gru", family="sequence", source=_SOURCE,
               description="bidirectional GRU over slice features")(_builder("gru"))
register_model("seq_conv1d", family="sequence", source="1-D convolution along the slice axis (RSNA 2019 solutions)",
               description="1-D convolutional head over slice features")(_builder("conv1d"))


# ----------------------------------------------------------------------------------------------------------
# checkpoint payload and inference on one scan
# ----------------------------------------------------------------------------------------------------------

SEQUENCE_EXTRA_FORMAT = "ichd-seq/1"


def sequence_checkpoint_extra(selector: FeatureSelector | None, *, scan_rule: str = "max", min_run: int = RADNET_MIN_RUN,
                              cnn: dict[str, Any] | None = None,
                              cnn_checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``extra`` dict of a sequence checkpoint.

    ``selector`` is None for a model that reads only the CNN probabilities. ``cnn`` describes the CNN(s) whose embeddings the model was trained on (names, files, sha256, embedding
    mode); ``cnn_checkpoint`` is the raw ichd checkpoint dict of the CNN to run at inference, embedded so that
    the sequence checkpoint alone is enough to predict.
    """
    return {"format": SEQUENCE_EXTRA_FORMAT, "selector": None if selector is None else selector.state_dict(),
            "scan_rule": scan_rule,
            "min_run": int(min_run), "cnn": dict(cnn or {}), "cnn_checkpoint": cnn_checkpoint}


@dataclass
class SequenceBundle:
    """A loaded sequence checkpoint: model (eval mode), fitted selector (None: probabilities only), scan rule, CNN.

    ``model`` is a :class:`SequenceModel` or another second-stage model with the same interface
    (``forward(features, probs, lengths)``, ``uses_features``, ``num_classes``, ``feature_dim``), e.g. the
    neighbour-context heads of :mod:`ichd.models.frozen`.
    """

    model: nn.Module
    selector: FeatureSelector | None
    scan_rule: str = "max"
    min_run: int = RADNET_MIN_RUN
    cnn: dict[str, Any] = field(default_factory=dict)
    cnn_checkpoint: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @torch.no_grad()
    def predict(self, features: np.ndarray | None, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One scan: CNN embeddings (z, D) and CNN probabilities (z, 6), slices inferior -> superior.

        Returns ``(slice_probs (z, 6), scan_probs (6,))`` as float32 numpy arrays; the scan probabilities
        follow :attr:`scan_rule`. ``features`` may be None only for a model that does not use them.
        """
        p = np.asarray(probs, dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != self.model.num_classes or p.shape[0] == 0:
            raise InputError(f"CNN probabilities must be (n_slices, {self.model.num_classes}), got {p.shape}")
        device = next(self.model.parameters()).device
        f_t = None
        if self.model.uses_features:
            if features is None or self.selector is None:
                raise InputError("this sequence model needs the CNN embeddings, got none")
            f = self.selector.transform(features)
            if f.shape[0] != p.shape[0]:
                raise InputError(f"{f.shape[0]} embeddings but {p.shape[0]} probability rows")
            f_t = torch.from_numpy(f).to(device)[None]
        self.model.eval()
        logits = self.model(f_t, torch.from_numpy(p).to(device)[None],
                            torch.tensor([p.shape[0]]))[0]
        slice_probs = torch.sigmoid(logits).cpu().numpy().astype(np.float32)
        scan = scan_probabilities(slice_probs, self.scan_rule, min_run=self.min_run).astype(np.float32)
        return slice_probs, scan


def load_sequence_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> SequenceBundle:
    """Load a checkpoint written by ``ichd train seq``; a CNN checkpoint or a foreign file is a :class:`ModelError`."""
    from ichd.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, map_location=map_location)
    extra = ckpt.extra or {}
    if not hasattr(ckpt.model, "uses_features") or extra.get("format") != SEQUENCE_EXTRA_FORMAT:
        raise ModelError(f"{str(path)!r} is not a sequence-model checkpoint (model {ckpt.model_name!r})",
                         hint="pass a checkpoint written by `ichd train seq`")
    state = extra.get("selector")
    selector = None if state is None else FeatureSelector.from_state_dict(state)
    if ckpt.model.uses_features and (selector is None or selector.out_features != ckpt.model.feature_dim):
        got = None if selector is None else selector.out_features
        raise ModelError(f"{str(path)!r}: selector gives {got} features but the model "
                         f"expects {ckpt.model.feature_dim}")
    return SequenceBundle(model=ckpt.model, selector=selector, scan_rule=str(extra.get("scan_rule", "max")),
                          min_run=int(extra.get("min_run", RADNET_MIN_RUN)), cnn=dict(extra.get("cnn") or {}),
                          cnn_checkpoint=extra.get("cnn_checkpoint"), config=ckpt.config, metrics=ckpt.metrics,
                          path=Path(path))
