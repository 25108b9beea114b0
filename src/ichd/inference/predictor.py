"""The predictor: one CT series in, per-slice and per-scan subtype probabilities out.

:class:`Predictor` holds a slice CNN, optionally the sequence stage (feature selector + BiLSTM, Burduja et al.
2020) and the operating thresholds, all loaded from a model bundle (the shipped ``default`` one, see
:mod:`ichd.models.bundled`) or from a checkpoint file. :meth:`Predictor.predict_series` streams the slices through
preprocessing and the CNN in chunks of :attr:`Predictor.batch_size`, so memory beyond the input volume stays
bounded whatever the number of slices; only the embeddings (n x D floats) and probabilities are kept.

Preprocessing and the CNN forward pass are the project's own (:func:`ichd.preprocessing.pipeline.preprocess_hu`,
:func:`ichd.inference.embed.embed_slices`); scan probabilities follow the model's scan rule
(:mod:`ichd.models.scan_rules`), Grad-CAM comes from :mod:`ichd.explain`.

The input guards (:mod:`ichd.inference.guards`) run here, once per series, for every model family: slices without
head tissue are not scored (P = 0, ``skipped_slices``; the scan rule and the sequence stage see the other slices
only), a contrast-enhanced series is ``not_assessable`` unless allowed, and results carry the input's provenance
(:mod:`ichd.inference.provenance`). Grad-CAM maps are returned on the slice's display grid
(:meth:`Predictor.map_to_display`); overlays keep them to the head.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ichd.constants import AIR_HU, LABELS
from ichd.errors import InputError, ModelError
from ichd.inference.evidence import DEFAULT_MAX_FLAGGED, ExplainedPrediction, SliceEvidence, select_flagged
from ichd.inference.tta import tta_views
from ichd.types import CTSeries, IngestWarning, Prediction
from ichd.utils.logging import get_logger

if TYPE_CHECKING:
    import torch

    from ichd.models.bundled import BundledModel
    from ichd.models.sequence import SequenceBundle
    from ichd.preprocessing.config import PreprocessConfig

log = get_logger(__name__)

#: Slices per chunk streamed through preprocessing and the CNN.
DEFAULT_BATCH_SIZE = 16
#: Threshold used for models that carry no calibrated operating thresholds (with a warning).
UNCALIBRATED_THRESHOLD = 0.5
#: Smallest slice side (pixels) that is treated as an image rather than a mistake.
MIN_SLICE_SIDE = 16
#: File suffixes taken as checkpoint paths (anything else that is not an existing path is a bundled model name).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class ModelIdentity:
    """What a result says about the model that made it."""

    name: str
    version: str
    sha256: str
    source: str  # "bundle" or "checkpoint"
    path: str


def _looks_like_path(model: str | Path) -> bool:
    if isinstance(model, Path):
        return True
    return ("/" in model or "\\" in model or model.endswith(CHECKPOINT_SUFFIXES) or model.startswith(".")
            or Path(model).exists())


def _thresholds_from(meta: dict[str, Any]) -> dict[str, float] | None:
    """Operating thresholds stored in checkpoint metadata (``thresholds`` with every label), else None."""
    t = meta.get("thresholds") if isinstance(meta, dict) else None
    if isinstance(t, dict) and all(lab in t for lab in LABELS):
        return {lab: float(t[lab]) for lab in LABELS}
    return None


class Predictor:
    """Run a model on :class:`~ichd.types.CTSeries` objects. Build with :meth:`load`.

    Attributes:
        cnn: the slice CNN (eval mode, on :attr:`device`); input ``(B, 3, S, S)`` float in [0, 1] (it normalises
            internally).
        preprocess: how HU slices become CNN input.
        sequence: the sequence stage (selector + sequence model), or None for a CNN-only model.
        thresholds: operating threshold per label, applied to scan probabilities.
        scan_rule / min_run: how scan probabilities are made from slice probabilities when there is no sequence
            stage (with one, its own rule applies).
        identity: name, version and sha256 of the weights, reported with every result.
        notes: warnings about the model itself (e.g. uncalibrated thresholds), copied into every result.
        slabs: read thin-slice series (spacing < 2.5 mm) as ~5 mm slabs (:mod:`ichd.preprocessing.slabs`;
            ``ichd predict --no-slabs`` turns it off).
    """

    def __init__(self, cnn: torch.nn.Module, preprocess: PreprocessConfig, *, identity: ModelIdentity,
                 thresholds: dict[str, float], device: torch.device, sequence: SequenceBundle | None = None,
                 scan_rule: str = "max", min_run: int = 3, batch_size: int = DEFAULT_BATCH_SIZE,
                 notes: list[IngestWarning] | None = None, bundle: BundledModel | None = None,
                 slabs: bool = True) -> None:
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        self.cnn = cnn
        self.preprocess = preprocess
        self.identity = identity
        self.thresholds = {lab: float(thresholds[lab]) for lab in LABELS}
        self.device = device
        self.sequence = sequence
        self.scan_rule = sequence.scan_rule if sequence is not None else scan_rule
        self.min_run = sequence.min_run if sequence is not None else min_run
        self.batch_size = int(batch_size)
        self.notes = list(notes or [])
        self.bundle = bundle
        self.slabs = bool(slabs)
        self._training_uids: Any = None
        self._training_uids_read = False

    @property
    def training_uids(self) -> Any:
        """The bundle's training UIDs (:func:`ichd.inference.provenance.load_training_uids`, read once), or None."""
        if not self._training_uids_read:
            from ichd.inference.provenance import load_training_uids

            self._training_uids = load_training_uids(self.bundle) if self.bundle is not None else None
            self._training_uids_read = True
        return self._training_uids

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def load(cls, model: str | Path = "default", *, device: str | None = None,
             batch_size: int = DEFAULT_BATCH_SIZE, slabs: bool = True) -> Predictor:
        """Load a bundled model by name or alias (``"default"``), a bundle folder, or a checkpoint file.

        A checkpoint may be a slice-CNN checkpoint (``ichd train cnn``) or a sequence checkpoint that embeds its
        CNN (``ichd train seq``). Bundles have their weights' sha256 checked; a mismatch is a
        :class:`ModelError`. An unknown name or a missing path is a :class:`ModelError` (exit code 2).
        ``slabs``: read thin-slice series as ~5 mm slabs (:attr:`slabs`).
        """
        from ichd.models.bundled import get_bundled, read_bundle
        from ichd.utils.device import resolve_device

        dev = resolve_device(device)
        if _looks_like_path(model):
            path = Path(model).expanduser()
            if not path.exists():
                raise ModelError(f"model path {str(path)!r} does not exist",
                                 hint="pass a checkpoint .pt file, a model bundle folder, or a bundled model name "
                                      "(`ichd models list`)")
            predictor = (cls._from_bundle(read_bundle(path), dev, batch_size) if path.is_dir()
                         else cls._from_checkpoint(path, dev, batch_size))
        else:
            predictor = cls._from_bundle(get_bundled(str(model)), dev, batch_size)
        predictor.slabs = bool(slabs)
        return predictor

    @classmethod
    def _from_bundle(cls, bundle: BundledModel, dev: torch.device, batch_size: int) -> Predictor:
        from ichd.models.checkpoint import load_checkpoint

        bundle.verify()
        files = bundle.files
        ckpt = load_checkpoint(files["cnn"], map_location=dev)
        sequence = None
        if "sequence" in files:
            from ichd.models.sequence import load_sequence_checkpoint

            sequence = load_sequence_checkpoint(files["sequence"], map_location=dev)
        identity = ModelIdentity(name=bundle.name, version=bundle.version, sha256=bundle.sha256, source="bundle",
                                 path=str(bundle.root))
        preprocess, notes = cls._preprocess_of(ckpt.preprocess, ckpt.default_cfg, str(files["cnn"]))
        return cls(ckpt.model, preprocess, identity=identity, thresholds=bundle.thresholds, device=dev,
                   sequence=sequence, scan_rule=str(bundle.manifest.get("scan_rule", "max")),
                   batch_size=batch_size, notes=notes, bundle=bundle)

    @classmethod
    def _from_checkpoint(cls, path: Path, dev: torch.device, batch_size: int) -> Predictor:
        from ichd import __version__
        from ichd.models.bundled import sha256_file
        from ichd.models.checkpoint import load_checkpoint
        from ichd.models.sequence import SEQUENCE_EXTRA_FORMAT, load_sequence_checkpoint

        ckpt = load_checkpoint(path, map_location=dev)
        sequence = None
        meta: dict[str, Any] = {**ckpt.metrics, **ckpt.extra}
        if (ckpt.extra or {}).get("format") == SEQUENCE_EXTRA_FORMAT:
            sequence = load_sequence_checkpoint(path, map_location=dev)
            from ichd.models.checkpoint import model_from_checkpoint_dict

            if not sequence.cnn_checkpoint:
                raise ModelError(f"sequence checkpoint {str(path)!r} does not embed its slice CNN",
                                 hint="write it with `ichd train seq` (which embeds the CNN) or use a model bundle")
            ckpt = model_from_checkpoint_dict(sequence.cnn_checkpoint, map_location=dev, where=str(path))
        notes: list[IngestWarning] = []
        thresholds = _thresholds_from(meta)
        if thresholds is None:
            thresholds = dict.fromkeys(LABELS, UNCALIBRATED_THRESHOLD)
            notes.append(IngestWarning(
                "uncalibrated_thresholds",
                f"model {path.name} carries no operating thresholds; scan_positive uses "
                f"{UNCALIBRATED_THRESHOLD} for every label (not chosen on validation data)"))
        preprocess, more = cls._preprocess_of(ckpt.preprocess, ckpt.default_cfg, str(path))
        identity = ModelIdentity(name=f"{ckpt.model_name}:{path.name}",
                                 version=str(ckpt.raw.get("ichd_version", __version__)),
                                 sha256=sha256_file(path), source="checkpoint", path=str(path))
        return cls(ckpt.model, preprocess, identity=identity, thresholds=thresholds, device=dev,
                   sequence=sequence, batch_size=batch_size, notes=notes + more)

    @staticmethod
    def _preprocess_of(preprocess: dict[str, Any], default_cfg: dict[str, Any],
                       where: str) -> tuple[PreprocessConfig, list[IngestWarning]]:
        """The checkpoint's preprocessing; the default one sized to the model's input when it has none."""
        from ichd.errors import ConfigError
        from ichd.preprocessing.config import PreprocessConfig

        if preprocess:
            try:
                return PreprocessConfig.from_dict(preprocess), []
            except ConfigError as e:
                raise ModelError(f"checkpoint {where!r} has an unusable preprocessing config: {e.message}") from e
        size = int(default_cfg.get("input_size", PreprocessConfig().image_size))
        note = IngestWarning("default_preprocessing",
                             f"model {Path(where).name} records no preprocessing; the default windows at "
                             f"{size} px were used")
        return PreprocessConfig(image_size=size), [note]

    # ------------------------------------------------------------------------------------------- inference

    def crop_box(self, series: CTSeries) -> Any:
        """The crop of the model input for ``series`` (:func:`ichd.preprocessing.pipeline.input_crop_box`: None
        unless the model's preprocessing crops to the head), computed once per series and kept in its ``meta``."""
        if self.preprocess.crop != "head":
            return None
        from ichd.inference.guards import pixel_spacing
        from ichd.preprocessing.pipeline import input_crop_box

        key = "_ichd_head_crop_box"
        if key not in series.meta:
            series.meta[key] = input_crop_box(series.hu, self.preprocess, pixel_spacing(series))
        return series.meta[key]

    def slab_plan(self, series: CTSeries) -> Any:
        """The slabs ``series`` is read as (:func:`ichd.preprocessing.slabs.make_slabs`: a thin-slice series, when
        :attr:`slabs`), or None; computed once per series and kept in its ``meta``."""
        if not self.slabs:
            return None
        from ichd.preprocessing.slabs import make_slabs

        key = "_ichd_slabs"
        if key not in series.meta:
            series.meta[key] = make_slabs(series.hu, float(series.spacing_mm[0]))
        return series.meta[key]

    def model_hu(self, series: CTSeries, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The HU the model sees for source slices ``start:stop``: the slices themselves, or for a series read as
        slabs each slice's slab (the mean of its run of thin slices)."""
        slabs = self.slab_plan(series)
        if slabs is None:
            return series.hu[start:stop]
        return slabs.hu[slabs.slab_of[start:stop]]

    def model_inputs(self, series: CTSeries, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """CNN input for slices ``start:stop``: ``(n, 3, S, S)`` float32 in [0, 1] on :attr:`device`.

        Not normalised (the slice CNN normalises internally). Exactly what :meth:`predict_series` feeds the CNN
        (cropped to the head of the whole series when the model's preprocessing says so; a slice of a series read
        as slabs gets its slab, :meth:`model_hu`).
        """
        import torch

        from ichd.preprocessing.pipeline import from_cache_dtype, preprocess_hu

        x = preprocess_hu(self.model_hu(series, start, stop), self.preprocess, crop_box=self.crop_box(series))
        return torch.from_numpy(from_cache_dtype(x)).to(self.device)

    def map_to_display(self, series: CTSeries, cam: np.ndarray) -> np.ndarray:
        """A map on the model-input grid (e.g. Grad-CAM) on the display grid of ``series``' slices: the slice
        centre-padded to a square (:func:`ichd.preprocessing.resize.pad_to_square`), the crop undone."""
        from ichd.explain.overlay import model_map_to_square

        return model_map_to_square(cam, series.hu.shape[1:], self.crop_box(series))

    def _check(self, series: CTSeries) -> None:
        if series.n_slices < 1:
            raise InputError(f"{series.source or 'series'}: the series has no slices")
        h, w = series.hu.shape[1:]
        if min(h, w) < MIN_SLICE_SIDE:
            raise InputError(f"{series.source or 'series'}: slices are {h}x{w} pixels, too small for a CT image",
                             hint=f"CT slices are usually 512x512; at least {MIN_SLICE_SIDE} px per side needed")

    def _embed(self, series: CTSeries, tta: bool) -> tuple[np.ndarray, np.ndarray, float, float]:
        """CNN embeddings (m, D) and probabilities (m, 6) of the model's slices (the m slabs of a series read as
        slabs, else its n slices), averaged over the TTA views; and the seconds spent in preprocessing and in the
        CNN."""
        from ichd.inference.embed import embed_slices
        from ichd.preprocessing.pipeline import preprocess_hu
        from ichd.utils.progress import progress_bar

        slabs = self.slab_plan(series)
        volume = series.hu if slabs is None else slabs.hu
        n = len(volume)
        box = self.crop_box(series)
        views = tta_views(self.preprocess.image_size, enabled=tta)
        feats: np.ndarray | None = None
        probs = np.zeros((n, len(LABELS)), dtype=np.float32)
        t_pre = t_cnn = 0.0
        bar = progress_bar(desc="predict", total=n, unit="slice") if n > self.batch_size else None
        try:
            for start in range(0, n, self.batch_size):
                stop = min(n, start + self.batch_size)
                t = time.perf_counter()
                x = preprocess_hu(volume[start:stop], self.preprocess, crop_box=box)
                t_pre += time.perf_counter() - t
                t = time.perf_counter()
                for view in views:
                    f, p = embed_slices(self.cnn, view.apply(x), batch_size=self.batch_size, device=self.device)
                    if feats is None:
                        feats = np.zeros((n, f.shape[1]), dtype=np.float32)
                    feats[start:stop] += f
                    probs[start:stop] += p
                t_cnn += time.perf_counter() - t
                if bar is not None:
                    bar.update(stop - start)
        finally:
            if bar is not None:
                bar.close()
        assert feats is not None  # n >= 1 was checked
        k = np.float32(len(views))
        return feats / k, probs / k, t_pre, t_cnn

    def predict_series(self, series: CTSeries, *, tta: bool = False, gradcam: bool = False,
                       max_flagged: int = DEFAULT_MAX_FLAGGED, allow_contrast: bool = False,
                       input_guards: bool = True) -> Prediction:
        """Predict one series.

        The input checks of :mod:`ichd.inference.guards` apply here, after the model's probabilities, for every
        model family: slices without head tissue get P = 0 and are listed in ``skipped_slices`` (the scan
        probability, and the sequence stage, use the other slices only); a contrast-enhanced series is
        ``not_assessable`` unless ``allow_contrast``, and so is an out-of-domain input (localizer, not a head,
        non-axial, extreme noise), whatever ``allow_contrast``.

        A thin-slice series (spacing < 2.5 mm) is read as ~5 mm slabs when :attr:`slabs` (the mean HU of runs of
        consecutive slices, :mod:`ichd.preprocessing.slabs`): the model, the scan rule and the sequence stage see
        the slabs; every source slice reports its slab's probabilities (0 for a slice without head tissue), the
        result lists the slabs (``Prediction.slabs``) and evidence shows each slab's middle slice.

        Args:
            series: the CT series (slices inferior -> superior).
            tta: average over the test-time augmentation views (:mod:`ichd.inference.tta`); ~4x the CNN time.
            gradcam: also compute Grad-CAM maps for the flagged slices; the result is then an
                :class:`~ichd.inference.evidence.ExplainedPrediction` with ``evidence``.
            max_flagged: at most this many flagged slices get maps.
            allow_contrast: call a contrast-enhanced series anyway (it keeps its ``contrast_enhanced`` warning).
            input_guards: False skips every check of :mod:`ichd.inference.guards` (every slice scored, no
                not-assessable call): only for measuring what the guards change (``benchmarks/guards_auc.py``);
                no command offers it.

        Returns:
            A :class:`~ichd.types.Prediction` with per-slice (n, 6) and scan (6,) probabilities in LABELS order,
            the thresholds, the model identity, the series' ingest warnings and timings (seconds).
        """
        from ichd.inference.guards import NO_HEAD, guard_warnings, series_guards, slab_warning, unguarded
        from ichd.inference.provenance import provenance_block
        from ichd.models.scan_rules import scan_probabilities

        self._check(series)
        t0 = time.perf_counter()
        slabs = self.slab_plan(series)
        t_slabs = time.perf_counter() - t0
        crop = self.preprocess.crop == "head"
        guards = (series_guards(series, crop=crop, slabs=slabs) if input_guards else unguarded(series, crop=crop))
        if guards.crop_box is not None:
            series.meta["_ichd_head_crop_box"] = guards.crop_box
        feats, cnn_probs, t_pre, t_cnn = self._embed(series, tta)  # per slab when read as slabs
        t = time.perf_counter()
        keep = guards.has_head
        # a slab is scored when one of its slices has a head; each slice reports its slab (0 without a head)
        keep_model = keep if slabs is None else np.logical_or.reduceat(keep, slabs.starts)
        model_probs = np.zeros_like(cnn_probs)
        scan_probs = np.zeros(len(LABELS), dtype=np.float32)
        if keep_model.any():
            if self.sequence is not None:
                kept_slices, scan_probs = self.sequence.predict(feats[keep_model], cnn_probs[keep_model])
            else:
                kept_slices = cnn_probs[keep_model]
                scan_probs = scan_probabilities(kept_slices, self.scan_rule, min_run=self.min_run)
            model_probs[keep_model] = kept_slices
        slice_probs = model_probs if slabs is None else model_probs[slabs.slab_of]
        slice_probs[~keep] = 0.0
        t_seq = time.perf_counter() - t
        warnings = list(series.warnings) + list(self.notes) + guard_warnings(guards, allow_contrast=allow_contrast)
        if slabs is not None:
            warnings.append(slab_warning(slabs, series.n_slices))
        if series.n_slices == 1:
            warnings.append(IngestWarning(
                "single_slice", "the input has one slice: the scan result is that slice's result"
                + (" and the sequence model sees no neighbouring slices" if self.sequence is not None else "")
                + (" (its scan context is the mean of the training scans)"
                   if self.sequence is not None and getattr(self.sequence.model, "uses_scan_mean", False) else "")))
        z_known = math.isfinite(float(series.spacing_mm[0]))
        positions = (np.asarray(series.positions_mm, dtype=np.float64) if z_known
                     else np.full(series.n_slices, np.nan))
        timing = {"guards": guards.seconds, "preprocess": t_pre, "cnn": t_cnn}
        if slabs is not None:
            timing["slabs"] = t_slabs
        if self.sequence is not None:
            timing["sequence"] = t_seq
        pred_kwargs = {
            "slice_probs": np.asarray(slice_probs, dtype=np.float32),
            "scan_probs": np.asarray(scan_probs, dtype=np.float32),
            "thresholds": dict(self.thresholds),
            "model": {"name": self.identity.name, "version": self.identity.version, "sha256": self.identity.sha256,
                   "scan_rule": "sequence+" + self.scan_rule if self.sequence is not None else self.scan_rule,
                   "tta": "true" if tta else "false"},
            "study_instance_uid": series.study_instance_uid,
            "series_instance_uid": series.series_instance_uid,
            "sop_instance_uids": list(series.sop_instance_uids),
            "positions_mm": positions,
            "warnings": warnings,
            "timing_s": timing,
            "skipped_slices": [{"index": i, "reason": NO_HEAD} for i in guards.skipped],
            "not_assessable": guards.not_assessable(allow_contrast=allow_contrast),
            "provenance": provenance_block(self.training_uids, series),
            "slabs": slabs.to_json(positions if z_known else None) if slabs is not None else None,
            "guards": {"contrast": guards.contrast.to_dict() if guards.contrast is not None else None,
                       "allow_contrast": bool(allow_contrast),
                       "domain": guards.domain.to_dict() if guards.domain is not None else None}
            if input_guards else {},
        }
        if not gradcam:
            timing["predict_total"] = time.perf_counter() - t0
            return Prediction(**pred_kwargs)
        pred = ExplainedPrediction(**pred_kwargs)
        t = time.perf_counter()
        pred.evidence = self.explain(series, pred, max_slices=max_flagged)
        timing["gradcam"] = time.perf_counter() - t
        timing["predict_total"] = time.perf_counter() - t0
        return pred

    def explain(self, series: CTSeries, pred: Prediction, *, max_slices: int = DEFAULT_MAX_FLAGGED,
                gradcam: bool = True, at_least_one: bool = False) -> list[SliceEvidence]:
        """The flagged slices of ``pred`` (see :func:`~ichd.inference.evidence.select_flagged`) with their HU image
        and, when ``gradcam``, the slice CNN's Grad-CAM map for the flagged label (one forward/backward pass each).
        ``at_least_one`` returns the most probable slice when none is flagged."""
        from ichd.inference.guards import pixel_spacing
        from ichd.preprocessing.resize import pad_to_square

        flagged = select_flagged(pred, max_slices, at_least_one=at_least_one)
        maps: dict[int, np.ndarray] = {}
        cam: Any = None
        if gradcam and flagged:
            import torch

            from ichd.explain.lesion import slice_explainer

            cam = slice_explainer(self.cnn)  # the model's own evidence map (lesion map, else Grad-CAM)
            by_label: dict[str, list[int]] = {}
            for i, lab, _ in flagged:
                by_label.setdefault(lab, []).append(i)
            for lab, idx in by_label.items():  # one forward + backward per label, its slices as one batch
                x = torch.cat([self.model_inputs(series, i, i + 1) for i in idx])
                maps.update((i, self.map_to_display(series, m)) for i, m in zip(idx, cam(x, lab)))
        evidence = []
        for i, lab, p in flagged:
            img = pad_to_square(np.asarray(self.model_hu(series, i, i + 1)[0], dtype=np.float32), AIR_HU)
            evidence.append(SliceEvidence(index=i, label=lab, probability=p, image_hu=img, cam=maps.get(i),
                                          pixel_spacing=pixel_spacing(series),
                                          map_method=cam.method if i in maps else None))
        return evidence
