"""Make the shipped model bundle from trained checkpoints and their cross-validation evaluation.

:func:`build_bundle` takes

* the slice CNN fitted on all patients (``ichd train cnn --fold all``),
* optionally the sequence model fitted on all patients (``ichd train seq``),
* the folder that ``ichd evaluate`` wrote for the cross-validation out-of-fold (OOF) predictions of the same
  configuration (``metrics.json`` with bootstrap CIs, ``thresholds.json`` with the scan-level operating points),

and writes a bundle (:mod:`ichd.models.bundled`): fp16 weights without optimizer state, the sequence checkpoint
without its embedded copy of the CNN, thresholds, metrics and a generated model card.

Thresholds: scan level, chosen on the OOF predictions: ``any`` at the fixed-sensitivity operating point (0.95 by
default), every subtype at its Youden-optimal point (with 4-21 positive patients per subtype, a 0.95-sensitivity
threshold would sit at the lowest positive score and flag most scans). They are picked on the fold models' OOF
scores and applied to the all-patients fit, which is the usual practice and an approximation (the full fit was
trained on ~25 % more data).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichd.constants import LABEL_ABBREVIATIONS, LABELS
from ichd.errors import InputError, ModelError
from ichd.models.bundled import BundledModel, write_bundle

#: Operating point of "any" and of the subtypes (names of ``ichd evaluate``'s thresholds.json).
ANY_OPERATING_POINT = "sensitivity"
SUBTYPE_OPERATING_POINT = "youden"


@dataclass
class CvEvaluation:
    """The parts of an ``ichd evaluate`` output folder the bundle needs."""

    metrics: dict[str, Any]
    thresholds: dict[str, Any]
    folder: Path

    @classmethod
    def read(cls, folder: str | Path) -> CvEvaluation:
        folder = Path(folder)
        try:
            metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            thresholds = json.loads((folder / "thresholds.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{str(folder)!r} is not an `ichd evaluate` output folder: {e}",
                             hint="run `ichd evaluate OOF.csv LABELS --out DIR --bootstrap 1000` first") from e
        if metrics.get("scan") is None or (thresholds.get("scan") or None) is None:
            raise InputError(f"{str(folder)!r}: the evaluation has no scan level",
                             hint="evaluate predictions that carry scan ids")
        return cls(metrics, thresholds, folder)

    def operating_thresholds(self) -> tuple[dict[str, float], dict[str, str]]:
        """Scan-level thresholds per label and a sentence per label saying how each was chosen."""
        scan = self.thresholds["scan"]
        target = float(self.thresholds.get("sensitivity_target", 0.95))
        out: dict[str, float] = {}
        policy: dict[str, str] = {}
        for lab in LABELS:
            op = ANY_OPERATING_POINT if lab == "any" else SUBTYPE_OPERATING_POINT
            t = scan[op][lab]
            how = (f"scan-level sensitivity {target:.2f} on the cross-validation OOF predictions" if op == "sensitivity"
                   else "scan-level Youden-optimal point on the cross-validation OOF predictions")
            if t is None or not math.isfinite(float(t)):
                t, how = 0.5, "0.5 (the OOF data had no positive or no negative scans for this label)"
            out[lab] = float(t)
            policy[lab] = how
        return out, policy

    def summary(self) -> dict[str, Any]:
        """Compact metrics for the manifest: per level and label AUC (95% CI) and, at scan level, sensitivity and
        specificity at the bundle's operating thresholds (95% CI)."""
        out: dict[str, Any] = {"counts": self.metrics.get("counts"),
                               "weighted_log_loss": self.metrics.get("rsna_weighted_log_loss", {}).get("overall"),
                               "weighted_log_loss_ci95": self.metrics.get("rsna_weighted_log_loss", {})
                               .get("overall_ci95")}
        for level in ("slice", "scan"):
            block = self.metrics.get(level) or {}
            classes = block.get("classes", {})
            out[level] = {}
            for lab in LABELS:
                c = classes.get(lab, {})
                entry: dict[str, Any] = {"auc": c.get("auc"), "auc_ci95": (c.get("ci95") or {}).get("auc"),
                                         "n_positive": c.get("n_positive"), "n": c.get("n")}
                if level == "scan":
                    op = ANY_OPERATING_POINT if lab == "any" else SUBTYPE_OPERATING_POINT
                    m = (c.get("operating_points") or {}).get(op, {})
                    ci = m.get("ci95") or {}
                    entry.update({"operating_point": op, "sensitivity": m.get("sensitivity"),
                                  "sensitivity_ci95": ci.get("sensitivity"), "specificity": m.get("specificity"),
                                  "specificity_ci95": ci.get("specificity")})
                out[level][lab] = entry
        return out


def _fmt(x: Any, ci: Any = None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    text = f"{float(x):.3f}"
    if ci and all(v is not None and math.isfinite(float(v)) for v in ci):
        text += f" ({float(ci[0]):.3f}–{float(ci[1]):.3f})"
    return text


def render_model_card(*, name: str, version: str, architecture: dict[str, Any], summary: dict[str, Any],
                      thresholds: dict[str, float], policy: dict[str, str], training: dict[str, Any],
                      has_sequence: bool) -> str:
    """The model card (Markdown) from the facts of the bundle."""
    method = ("a 2D CNN on three CT windows scores each slice; its embeddings, reduced by feature selection, feed a "
              "bidirectional LSTM over the slices of the scan (Burduja et al. 2020)" if has_sequence else
              "a 2D CNN on three CT windows scores each slice (stage 1 of Burduja et al. 2020; this bundle has no "
              "sequence stage) and the scan probability is the maximum over its slices")
    counts = summary.get("counts") or {}
    scan_rows = "\n".join(
        f"| {lab} ({LABEL_ABBREVIATIONS[lab]}) | {summary['scan'][lab]['n_positive']} | "
        f"{_fmt(summary['scan'][lab]['auc'], summary['scan'][lab]['auc_ci95'])} | {thresholds[lab]:.4f} | "
        f"{_fmt(summary['scan'][lab]['sensitivity'], summary['scan'][lab]['sensitivity_ci95'])} | "
        f"{_fmt(summary['scan'][lab]['specificity'], summary['scan'][lab]['specificity_ci95'])} |"
        for lab in LABELS)
    slice_rows = "\n".join(
        f"| {lab} ({LABEL_ABBREVIATIONS[lab]}) | {summary['slice'][lab]['n_positive']} | "
        f"{_fmt(summary['slice'][lab]['auc'], summary['slice'][lab]['auc_ci95'])} |" for lab in LABELS)
    policy_lines = "\n".join(f"- **{lab}**: {thresholds[lab]:.4f} — {policy[lab]}" for lab in LABELS)
    arch = "\n".join(f"- {k}: {v}" for k, v in architecture.items())
    steps = "\n".join(f"- {k}: {v}" for k, v in training.items())
    return f"""# Model card: {name} {version}

> Research software. **Not a medical device.** Do not use for diagnosis or treatment decisions.

## Summary
Detects intracranial hemorrhage (ICH) and its five subtypes (epidural, intraparenchymal, intraventricular,
subarachnoid, subdural) on non-contrast head CT, per slice and per scan: {method}.

## Architecture and preprocessing
{arch}

## Training data and licence
- CT-ICH v1.0.0 (Hssayeni et al., PhysioNet; *Data* 2020, 5(1):14, doi:10.3390/data5010014): 82 non-contrast head
  CTs of traumatic brain injury patients (patients 049-130), 2501 axial slices with per-slice subtype labels.
  Licence: CC BY 4.0. These weights are a derivative of that data and are shared under CC BY 4.0 with this
  attribution; ichd's code is Apache-2.0.
- The dataset ships brain-window (L40/W120) and bone-window (L700/W3200) JPGs only. ichd reconstructs Hounsfield
  units from the two windows (`ichd.io.images.ctich_to_hu`: about 0.5 HU steps inside the brain window
  [-20, 100] HU, about 12.5 HU steps outside it, saturated beyond the bone window) and then applies the model's own
  windows.

## Training procedure
{steps}

## Evaluation (patient-level 5-fold cross-validation, out-of-fold predictions)
{counts.get('patients', 'n/a')} patients, {counts.get('scans', 'n/a')} scans, {counts.get('slices', 'n/a')} slices.
Metrics with 95% patient-bootstrap confidence intervals (`ichd evaluate`). RSNA weighted log loss (slice level):
{_fmt(summary.get('weighted_log_loss'), summary.get('weighted_log_loss_ci95'))}.

Scan level (a scan is positive when any of its slices is):

| label | positive scans | AUC (95% CI) | threshold | sensitivity (95% CI) | specificity (95% CI) |
|---|---|---|---|---|---|
{scan_rows}

Slice level:

| label | positive slices | AUC (95% CI) |
|---|---|---|
{slice_rows}

## Operating thresholds (scan level)
{policy_lines}

The thresholds were chosen on the cross-validation out-of-fold predictions of the fold models and are applied to
the model fitted on all patients; the sensitivity/specificity above are those of the OOF predictions at these
thresholds (optimistic, since the thresholds were chosen on the same predictions).

## Intended use
Research and education: reproducing and studying ICH detection methods, testing pipelines on CT data, producing
candidate findings for human review in research settings. Not for clinical use, triage or diagnosis.

## Known limits
- **Tiny training set**: 82 patients from one institution and one dataset; subtypes have 4-21 positive patients
  each (subarachnoid 7, intraventricular 5, subdural 4 patients), so subtype outputs are unreliable and their
  confidence intervals are wide.
- **HU reconstructed from JPG windows**, not read from DICOM: the model has never seen real scanner HU; expect a
  domain shift on DICOM input (and on other scanners, protocols, contrast-enhanced scans, children).
- Low input resolution (see preprocessing), axial slices only, no left/right information in training.
- Probabilities are not calibrated for other populations; the prevalence of ICH in CT-ICH (36 of 82 patients) is far
  above that of a typical emergency population.
- Grad-CAM heat maps show where the CNN found evidence; they are not segmentations.
"""


def _half_cnn(src: Path, dest: Path) -> None:
    """The CNN checkpoint without training state, weights in fp16 (loads back to fp32)."""
    from ichd.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src)
    save_checkpoint(dest, ckpt.model, config=ckpt.config, preprocess=ckpt.preprocess, metrics=ckpt.metrics,
                    fold=ckpt.fold, epoch=ckpt.epoch, extra=ckpt.extra, half=True)


def _slim_sequence(src: Path, dest: Path) -> dict[str, Any]:
    """The sequence checkpoint without its embedded CNN copy (the bundle ships the CNN once), fp16; returns its
    architecture facts."""
    from ichd.models.checkpoint import load_checkpoint, save_checkpoint
    from ichd.models.sequence import SEQUENCE_EXTRA_FORMAT

    ckpt = load_checkpoint(src)
    extra = dict(ckpt.extra or {})
    if extra.get("format") != SEQUENCE_EXTRA_FORMAT:
        raise ModelError(f"{str(src)!r} is not a sequence checkpoint written by `ichd train seq`")
    extra["cnn_checkpoint"] = None
    save_checkpoint(dest, ckpt.model, config=ckpt.config, preprocess=ckpt.preprocess, metrics=ckpt.metrics,
                    fold=ckpt.fold, epoch=ckpt.epoch, extra=extra, half=True)
    selector = extra.get("selector") or {}
    return {"sequence_model": ckpt.model_name, "sequence_config": dict(ckpt.raw.get("model_kwargs", {})),
            "feature_selection": {k: selector.get(k) for k in ("method", "k", "standardize") if k in selector},
            "scan_rule": extra.get("scan_rule", "max")}


def build_bundle(out_dir: str | Path, *, cnn: str | Path, evaluation: str | Path, sequence: str | Path | None = None,
                 name: str = "ctich-lite0", version: str = "1.0.0", aliases: tuple[str, ...] = ("default",),
                 training: dict[str, Any] | None = None,
                 training_sources: Sequence[Mapping[str, Any]] | None = None) -> BundledModel:
    """Write the bundle to ``out_dir`` (see the module docstring) and return it.

    ``training_sources`` lists exactly what the weights were fitted on, written to the manifest key of that name
    (see :mod:`ichd.models.bundled`), e.g. ``[{"source": "ct-ich", "patients": "all"},
    {"source": "rsna-series", "patients": "all"}]``; ``ichd predict`` uses it to say whether the bundled demo
    study was in the training data. Left out (None), the manifest does not say, and results only say "may have
    been".
    """
    from ichd.models.checkpoint import load_checkpoint

    ev = CvEvaluation.read(evaluation)
    thresholds, policy = ev.operating_thresholds()
    summary = ev.summary()
    cnn_ckpt = load_checkpoint(cnn)
    pre = cnn_ckpt.preprocess or {}
    architecture: dict[str, Any] = {
        "slice CNN": f"{cnn_ckpt.model_name} ({cnn_ckpt.model.num_features}-d embedding), "
                     f"input {pre.get('image_size')} px, in-model normalisation preset "
                     f"'{cnn_ckpt.default_cfg.get('norm')}'",
        "windows (level/width HU)": ", ".join(f"{k} {v[0]:g}/{v[1]:g}" for k, v in (pre.get("windows") or {}).items()),
        "resize": f"{pre.get('resize_mode', 'bilinear')} (antialiased), non-square slices padded with air",
    }
    with tempfile.TemporaryDirectory(prefix="ichd-bundle-") as tmp_name:
        tmp = Path(tmp_name)
        files = {"cnn": tmp / "cnn.pt"}
        _half_cnn(Path(cnn), files["cnn"])
        scan_rule = "max"
        if sequence is not None:
            files["sequence"] = tmp / "sequence.pt"
            seq_facts = _slim_sequence(Path(sequence), files["sequence"])
            scan_rule = str(seq_facts["scan_rule"])
            architecture["sequence stage"] = (f"{seq_facts['sequence_model']} {seq_facts['sequence_config']}, "
                                              f"features: {seq_facts['feature_selection']}")
        else:
            architecture["sequence stage"] = "none (CNN only)"
        architecture["scan probability"] = f"rule '{scan_rule}' over the slice probabilities"
        card = render_model_card(name=name, version=version, architecture=architecture, summary=summary,
                                 thresholds=thresholds, policy=policy, training=training or {},
                                 has_sequence=sequence is not None)
        extra = {
            "description": "ICH + subtype detector trained on CT-ICH (82 patients): "
                           + ("CNN + sequence model" if sequence is not None else "slice CNN")
                           + "; research use only",
            "created": _dt.date.today().isoformat(),
            "architecture": architecture,
            "scan_rule": scan_rule,
            "threshold_policy": policy,
            "metrics": summary,
            "training_data": "CT-ICH v1.0.0 (PhysioNet, Hssayeni et al. 2020): 82 patients, 2501 slices, JPG "
                             "brain+bone windows (HU reconstructed)",
            "license": "weights CC BY 4.0 (derived from CT-ICH, CC BY 4.0); code Apache-2.0",
            "intended_use": "research and education only; not a medical device",
            "training": training or {},
            "evaluation_source": str(ev.folder),
        }
        if training_sources is not None:
            extra["training_sources"] = [dict(entry) for entry in training_sources]
        return write_bundle(out_dir, name=name, version=version, files=files, thresholds=thresholds,
                            model_card=card, aliases=aliases, extra=extra)
