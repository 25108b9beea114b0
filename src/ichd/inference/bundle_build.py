"""Make the shipped model bundle from trained checkpoints and their cross-validation evaluation.

:func:`build_bundle` takes

* the slice CNN fitted on all patients (``ichd train cnn --fold all``),
* optionally the sequence model fitted on all patients (``ichd train seq``),
* the folder that ``ichd evaluate`` wrote for the cross-validation out-of-fold (OOF) predictions of the same
  configuration (``metrics.json`` with bootstrap CIs, ``thresholds.json`` with the scan-level operating points),

and writes a bundle (:mod:`ichd.models.bundled`): fp16 weights without optimizer state, the sequence checkpoint
without its embedded copy of the CNN, thresholds, metrics and a generated model card.

Thresholds: chosen on the OOF predictions at the evaluation's ``policy`` operating point (``ichd evaluate``'s
thresholds.json): ``any`` at the fixed sensitivity (0.95 by default), every subtype at the stated specificity
(``--subtype-specificity``, 0.9 by default; a 0.95-sensitivity subtype threshold would sit at the lowest positive
score and flag most scans). The scan-level points become the manifest's ``thresholds``, the slice-level ones (chosen
on the slice predictions) its ``slice_thresholds``, used for single-slice input (``ichd predict --independent``).
Evaluations written before the policy point existed give ``any`` at the sensitivity point and the subtypes at their
Youden points. They are picked on the fold models' OOF scores and applied to the all-patients fit, which is the
usual practice and an approximation (the full fit was trained on ~25 % more data). At inference a subtype is called
only when ``any`` is (:mod:`ichd.calls`).

Training data and licences: ``training_sources`` (what the weights were fitted on) selects descriptions from
:mod:`ichd.data.sources`; the card's "Training data and licence" section, the data-dependent "Known limits", the
manifest's ``description``, ``training_data`` and ``license`` follow from them. The weights' terms are those of the
most restrictive source (RSNA data: research and non-commercial use only); the code licence is read from the
installed package metadata. ``source_evaluations`` adds the cross-validation metrics of each source's OOF slices
(``ichd evaluate OOF LABELS... --source NAME --thresholds-from POOLED/thresholds.json``) to the card and to the
manifest's ``metrics.per_source``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichd.constants import LABEL_ABBREVIATIONS, LABELS
from ichd.data.sources import DataSource, describe_source, weights_licence
from ichd.errors import InputError, ModelError
from ichd.models.bundled import BundledModel, write_bundle

#: Operating point of "any" and of the subtypes (names of ``ichd evaluate``'s thresholds.json) in evaluations
#: without a ``policy`` point; with one, :data:`POLICY_OPERATING_POINT` gives every label's threshold.
ANY_OPERATING_POINT = "sensitivity"
SUBTYPE_OPERATING_POINT = "youden"
POLICY_OPERATING_POINT = "policy"


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

    @property
    def has_policy(self) -> bool:
        """Whether the evaluation has the ``policy`` operating point (subtypes at a stated specificity)."""
        return POLICY_OPERATING_POINT in (self.thresholds.get("scan") or {})

    def operation(self, lab: str) -> str:
        """The thresholds.json operating point that gives label ``lab``'s shipped threshold."""
        if self.has_policy:
            return POLICY_OPERATING_POINT
        return ANY_OPERATING_POINT if lab == "any" else SUBTYPE_OPERATING_POINT

    def operating_thresholds(self, level: str = "scan") -> tuple[dict[str, float], dict[str, str]]:
        """Thresholds per label at ``level`` ("scan" or "slice") and a sentence per label saying how each was
        chosen."""
        block = self.thresholds.get(level) or {}
        target = float(self.thresholds.get("sensitivity_target", 0.95))
        spec = self.thresholds.get("subtype_specificity")
        out: dict[str, float] = {}
        policy: dict[str, str] = {}
        for lab in LABELS:
            op = self.operation(lab)
            t = (block.get(op) or {}).get(lab)
            if lab == "any":
                how = f"{level}-level sensitivity {target:.2f} on the cross-validation OOF predictions"
            elif op == POLICY_OPERATING_POINT and spec is not None:
                how = f"{level}-level specificity {float(spec):.2f} on the cross-validation OOF predictions"
            else:
                how = f"{level}-level Youden-optimal point on the cross-validation OOF predictions"
            if lab != "any":
                how += '; called only when "any" is positive'
            if t is None or not math.isfinite(float(t)):
                t, how = 0.5, f"0.5 (the OOF data had no positive or no negative {level}s for this label)"
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
                    op = self.operation(lab)
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


def code_licence() -> str:
    """ichd's code licence as the installed package metadata states it (SPDX ``License-Expression``, else
    ``License``)."""
    try:
        meta = importlib.metadata.metadata("ichd")
    except importlib.metadata.PackageNotFoundError:
        return "see the LICENSE file (package metadata not available)"
    for key in ("License-Expression", "License"):
        value = (meta.get(key) or "").strip()
        if value and value.upper() != "UNKNOWN":
            return value.splitlines()[0].strip()
    return "see the LICENSE file (not stated in the package metadata)"


@dataclass(frozen=True)
class TrainingSource:
    """One entry of ``training_sources`` with its description."""

    info: DataSource
    patients: str | list[str]

    @property
    def n_patients(self) -> int | None:
        return len(self.patients) if isinstance(self.patients, list) else self.info.patients

    def card_line(self) -> str:
        i = self.info
        used = ("all patients" if self.patients == "all"
                else f"{len(self.patients)} patient(s) only: {', '.join(self.patients[:20])}"
                     + (", ..." if len(self.patients) > 20 else ""))
        text = f"- **{i.title}** ({used}): {i.description}"
        if i.licence_kind != "unknown":
            text += f" Licence/terms: {i.licence}. Citation: {i.citation}."
        return text

    def count_text(self) -> str:
        n = self.n_patients
        return f"{self.info.short} {n if n is not None else 'unknown number of'} patients"

    def named_count(self) -> str:
        n = self.n_patients
        return f"{self.info.short} ({n if n is not None else 'unknown number of'} patients)"


def resolve_training_sources(training_sources: Sequence[Mapping[str, Any]] | None) -> list[TrainingSource] | None:
    """``training_sources`` entries with their descriptions (None when not given)."""
    if training_sources is None:
        return None
    out = []
    for entry in training_sources:
        name = str(entry.get("source", "")).strip()
        if not name:
            raise InputError(f"training source {dict(entry)!r} has no 'source' name")
        patients = entry.get("patients", "all")
        if patients != "all" and not isinstance(patients, (list, tuple)):
            raise InputError(f"training source {name!r}: 'patients' must be \"all\" or a list of patient ids")
        patients = "all" if patients == "all" else [str(p) for p in patients]
        out.append(TrainingSource(describe_source(name), patients))
    return out


def _total_patients(sources: Sequence[TrainingSource]) -> int | None:
    counts = [s.n_patients for s in sources]
    return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


def describe_training(sources: Sequence[TrainingSource] | None) -> str:
    """The manifest's one-line ``description`` of the training data."""
    if not sources:
        return "training data not recorded"
    total = _total_patients(sources)
    parts = " + ".join(s.count_text() for s in sources)
    return parts + (f", {total} patients in all" if total is not None and len(sources) > 1 else "")


def _training_section(sources: Sequence[TrainingSource] | None, weights: str, code: str) -> str:
    if sources is None:
        lines = ["- The training data of these weights is not recorded in this bundle (it has no "
                 + "`training_sources`)."]
    else:
        lines = [s.card_line() for s in sources]
    lines.append(f"- **Licence of these weights**: {weights}. The weights are a derivative of the training data "
                 "listed above.")
    lines.append(f"- **Licence of ichd's code**: {code} (from the installed package metadata); it does not extend "
                 "to the weights.")
    return "\n".join(lines)


def _limits_section(sources: Sequence[TrainingSource] | None, extra: Sequence[str] = (),
                    evidence_map: str = "gradcam") -> str:
    lines: list[str] = [f"- {text}" for text in extra]  # measured failures first (build_bundle(limits=...))
    if sources:
        total = _total_patients(sources)
        per = ", ".join(s.count_text() for s in sources)
        total_text = f"{total} patients in all" if total is not None else "an unrecorded number of patients"
        lines.append(f"- **Tiny training set**: {total_text} ({per}); subtype outputs are unreliable and their "
                     "confidence intervals are wide.")
        lines += [f"- {limit}" for s in sources for limit in s.info.limits]
        real = [s for s in sources if s.info.real_hu is True]
        not_real = [s for s in sources if s.info.real_hu is not True]
        shift = "other scanners, protocols, contrast-enhanced scans, children"
        if not real:
            lines.append("- The model has never seen real scanner HU read from DICOM: expect a domain shift on DICOM "
                         f"input (and on {shift}).")
        elif not_real:
            lines.append(f"- Real scanner HU only from {', '.join(s.named_count() for s in real)}; the rest of the "
                         f"training data ({', '.join(s.info.short for s in not_real)}) is not DICOM HU: expect a "
                         f"domain shift on DICOM input and on {shift}.")
        else:
            lines.append(f"- Expect a domain shift on {shift}.")
        unknown = [s.info.name for s in sources if s.info.licence_kind == "unknown"]
        if unknown:
            lines.append(f"- Provenance of {', '.join(unknown)} is not recorded: its content and biases are unknown.")
    else:
        lines.append("- The training data is not recorded in this bundle: its size, provenance and biases are "
                     "unknown.")
    lines.append("- Low input resolution (see preprocessing), axial slices only, no left/right information in "
                 "training.")
    prev = [f"{s.info.short} {s.info.positive_patients} of {s.n_patients} patients" for s in (sources or [])
            if s.patients == "all" and s.info.positive_patients is not None]
    lines.append("- Probabilities are not calibrated for other populations"
                 + (f"; the prevalence of ICH in the training data ({', '.join(prev)}) is far above that of a "
                    "typical emergency population." if prev else "."))
    if evidence_map == "lesion":
        lines.append("- The heat maps are the lesion map: a per-pixel hemorrhage probability from a head fitted on "
                     "26 masked CT-ICH slices (16 patients), the same map for every subtype; it is not a "
                     "segmentation and gives no volume.")
    else:
        lines.append("- Grad-CAM heat maps show where the CNN found evidence; they are not segmentations.")
    return "\n".join(lines)


def per_source_summary(ev: CvEvaluation) -> dict[str, Any]:
    """The per-source numbers of the card and the manifest's ``metrics.per_source``."""
    full = ev.summary()
    sl = full["slice"]["any"]
    sc = full["scan"]["any"]
    t = ((ev.thresholds.get("scan") or {}).get(ANY_OPERATING_POINT) or {}).get("any")
    return {"counts": full.get("counts"),
            "weighted_log_loss": full.get("weighted_log_loss"),
            "weighted_log_loss_ci95": full.get("weighted_log_loss_ci95"),
            "slice_any_auc": sl.get("auc"), "slice_any_auc_ci95": sl.get("auc_ci95"),
            "scan_any_auc": sc.get("auc"), "scan_any_auc_ci95": sc.get("auc_ci95"),
            "any_threshold": t, "any_operating_point": ANY_OPERATING_POINT,
            "any_sensitivity": sc.get("sensitivity"), "any_sensitivity_ci95": sc.get("sensitivity_ci95"),
            "any_specificity": sc.get("specificity"), "any_specificity_ci95": sc.get("specificity_ci95"),
            "evaluation": str(ev.folder)}


def _per_source_section(per_source: Mapping[str, Mapping[str, Any]], any_threshold: float) -> str:
    if not per_source:
        return ""
    rows = []
    for name, m in per_source.items():
        c = m.get("counts") or {}

        def n(key: str, c: Mapping[str, Any] = c) -> str:
            return "n/a" if c.get(key) is None else str(c[key])

        rows.append(f"| {describe_source(name).short} (`{name}`) | {n('patients')} | {n('scans')} | {n('slices')} | "
                    f"{_fmt(m.get('weighted_log_loss'), m.get('weighted_log_loss_ci95'))} | "
                    f"{_fmt(m.get('slice_any_auc'), m.get('slice_any_auc_ci95'))} | "
                    f"{_fmt(m.get('scan_any_auc'), m.get('scan_any_auc_ci95'))} | "
                    f"{_fmt(m.get('any_sensitivity'), m.get('any_sensitivity_ci95'))} | "
                    f"{_fmt(m.get('any_specificity'), m.get('any_specificity_ci95'))} |")
    table = "\n".join(rows)
    return f"""
## Evaluation per source
The same cross-validation out-of-fold predictions, restricted to each source's slices (`ichd evaluate OOF
LABELS... --source NAME --thresholds-from POOLED/thresholds.json`): 95% patient-bootstrap confidence intervals
within the source; sensitivity and specificity of "any" at scan level at the shipped threshold {any_threshold:.4f}
(chosen on the pooled OOF predictions). Slices with missing labels are left out.

| source | patients | scans | slices | weighted log loss (95% CI) | slice any-AUC (95% CI) | scan any-AUC (95% CI) | any sensitivity (95% CI) | any specificity (95% CI) |
|---|---|---|---|---|---|---|---|---|
{table}
"""


def render_model_card(*, name: str, version: str, architecture: dict[str, Any], summary: dict[str, Any],
                      thresholds: dict[str, float], policy: dict[str, str], training: dict[str, Any],
                      has_sequence: bool, training_sources: Sequence[TrainingSource] | None = None,
                      per_source: Mapping[str, Mapping[str, Any]] | None = None,
                      code_license: str | None = None, limits: Sequence[str] = (),
                      slice_thresholds: Mapping[str, float] | None = None, method: str | None = None,
                      evidence_map: str = "gradcam") -> str:
    """The model card (Markdown) from the facts of the bundle.

    ``training_sources`` (see :func:`resolve_training_sources`) drives the training data, licence and known-limits
    sections; ``per_source`` (name -> :func:`per_source_summary`) adds the per-source evaluation section.
    """
    method = method or (
        "a 2D CNN on three CT windows scores each slice; its embeddings, reduced by feature selection, feed a "
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
    if slice_thresholds:
        policy_lines += ("\n\nSingle-slice input (`ichd predict --independent`, each slice its own scan) uses the "
                         "slice-level points chosen the same way on the slice-level OOF predictions: "
                         + ", ".join(f"{lab} {slice_thresholds[lab]:.4f}" for lab in LABELS) + ".")
    arch = "\n".join(f"- {k}: {v}" for k, v in architecture.items())
    steps = "\n".join(f"- {k}: {v}" for k, v in training.items())
    weights = weights_licence([s.info for s in training_sources or []])
    data_section = _training_section(training_sources, weights, code_license or code_licence())
    per_source_section = _per_source_section(per_source or {}, thresholds["any"])
    limits = _limits_section(training_sources, limits, evidence_map)
    pooled = "All training sources pooled. " if training_sources and len(training_sources) > 1 else ""
    return f"""# Model card: {name} {version}

> Research software. **Not a medical device.** Do not use for diagnosis or treatment decisions.

## Summary
Detects intracranial hemorrhage (ICH) and its five subtypes (epidural, intraparenchymal, intraventricular,
subarachnoid, subdural) on non-contrast head CT, per slice and per scan: {method}.

## Architecture and preprocessing
{arch}

## Training data and licence
{data_section}

## Training procedure
{steps}

## Evaluation (patient-level 5-fold cross-validation, out-of-fold predictions)
{pooled}{counts.get('patients', 'n/a')} patients, {counts.get('scans', 'n/a')} scans, {counts.get('slices', 'n/a')} slices.
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
{per_source_section}
## Operating thresholds (scan level)
{policy_lines}

The thresholds were chosen on the cross-validation out-of-fold predictions of the fold models and are applied to
the model fitted on all patients; the sensitivity/specificity above are those of the OOF predictions at these
thresholds (optimistic, since the thresholds were chosen on the same predictions).

## Intended use
Research and education: reproducing and studying ICH detection methods, testing pipelines on CT data, producing
candidate findings for human review in research settings. Not for clinical use, triage or diagnosis.

## Known limits
{limits}
"""


def _same_threshold(a: Any, b: Any) -> bool:
    def norm(x: Any) -> float | None:
        return None if x is None or not math.isfinite(float(x)) else float(x)

    a, b = norm(a), norm(b)
    return a is None and b is None or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9,
                                                                                        abs_tol=1e-12))


def _read_source_evaluations(folders: Mapping[str, str | Path], pooled: CvEvaluation,
                             sources: Sequence[TrainingSource] | None) -> dict[str, dict[str, Any]]:
    """Read and check the per-source evaluations: each must be of a training source (when those are listed),
    of that source's slices, and use the pooled scan thresholds (so its sensitivity/specificity are those of the
    shipped thresholds)."""
    names = None if sources is None else {s.info.name for s in sources}
    pooled_scan = pooled.thresholds["scan"]
    out: dict[str, dict[str, Any]] = {}
    for name, folder in folders.items():
        if names is not None and name not in names:
            raise InputError(f"source evaluation {name!r} is not one of the training sources ({', '.join(sorted(names))})",
                             hint="per-source metrics are cross-validation metrics of the training sources")
        ev = CvEvaluation.read(folder)
        evaluated = (ev.metrics.get("inputs") or {}).get("source")
        if evaluated is not None and evaluated != name:
            raise InputError(f"{str(folder)!r} evaluates source {evaluated!r}, not {name!r}")
        scan = ev.thresholds["scan"]
        mismatched = [f"{op}/{lab}" for op in (ANY_OPERATING_POINT, SUBTYPE_OPERATING_POINT, POLICY_OPERATING_POINT)
                      for lab in LABELS
                      if not _same_threshold((scan.get(op) or {}).get(lab), (pooled_scan.get(op) or {}).get(lab))]
        if mismatched:
            raise InputError(f"{str(folder)!r}: its scan thresholds differ from those of {str(pooled.folder)!r} "
                             f"({', '.join(mismatched[:3])}...)",
                             hint=f"evaluate with --thresholds-from {pooled.folder / 'thresholds.json'}")
        out[name] = per_source_summary(ev)
    return out


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


def _method_text(cnn_ckpt: Any, seq_facts: Mapping[str, Any] | None, scan_rule: str) -> tuple[str | None, str]:
    """The card's one-sentence method and the manifest's short kind, from the models in the bundle (None: the
    card's default text for a fine-tuned CNN [+ BiLSTM])."""
    seq_name = str((seq_facts or {}).get("sequence_model", ""))
    if cnn_ckpt.model_name != "frozen_encoder":
        return None, "CNN + sequence model" if seq_facts is not None else "slice CNN"
    encoder = cnn_ckpt.default_cfg.get("encoder", "EfficientNet-Lite")
    method = (f"a frozen ImageNet encoder ({encoder}; no fine-tuning) embeds each slice on three CT windows, and "
              "heads fitted on those embeddings give the probabilities")
    if seq_name.startswith("seq_context_"):
        ctx = (seq_facts or {}).get("sequence_config", {}).get("context", 0)
        method += (f": a {seq_name.removeprefix('seq_context_')} head over the slice's embedding and the mean of its "
                   f"{ctx} neighbour(s) on each side; the scan probability is rule '{scan_rule}' over the slices")
        return method, "frozen encoder + neighbour-context head"
    if seq_facts is not None:
        return method + f", then the sequence model {seq_name} over the scan", "frozen encoder + sequence model"
    return method + " (a linear slice head)", "frozen encoder + linear slice head"


def build_bundle(out_dir: str | Path, *, cnn: str | Path, evaluation: str | Path, sequence: str | Path | None = None,
                 name: str = "ctich-lite0", version: str = "1.0.0", aliases: tuple[str, ...] = ("default",),
                 training: dict[str, Any] | None = None,
                 training_sources: Sequence[Mapping[str, Any]] | None = None,
                 source_evaluations: Mapping[str, str | Path] | None = None,
                 limits: Sequence[str] = (),
                 training_caches: Sequence[str | Path] = ()) -> BundledModel:
    """Write the bundle to ``out_dir`` (see the module docstring) and return it.

    ``training_sources`` lists exactly what the weights were fitted on, written to the manifest key of that name
    (see :mod:`ichd.models.bundled`), e.g. ``[{"source": "ct-ich", "patients": "all"},
    {"source": "rsna-series", "patients": "all"}]``; ``ichd predict`` uses it to say whether the bundled demo
    study was in the training data. Left out (None), the manifest does not say, and results only say "may have
    been". It also selects the card's training data, licence and known-limits text and the manifest's
    ``description``, ``training_data`` and ``license`` (see :mod:`ichd.data.sources`). ``limits`` are further
    known limits measured on the finished model (e.g. its results on held-out real DICOM), listed first.

    ``source_evaluations`` maps a training source name to the ``ichd evaluate`` output folder of that source's
    OOF slices, evaluated with the pooled thresholds (``ichd evaluate OOF LABELS... --source NAME
    --thresholds-from EVALUATION/thresholds.json``); their numbers go to the card ("Evaluation per source") and to
    the manifest's ``metrics.per_source``.

    ``training_caches``: the ``ichd preprocess`` cache folder(s) of the training data; their series, study and
    slice UIDs (of the ``training_sources`` when given) go to ``training_uids.json`` and the manifest key
    ``training_uids`` (:mod:`ichd.inference.provenance`), so results say when an input was trained on.
    """
    from ichd.models.checkpoint import load_checkpoint

    ev = CvEvaluation.read(evaluation)
    thresholds, policy = ev.operating_thresholds()
    slice_thresholds, slice_policy = ev.operating_thresholds("slice")
    summary = ev.summary()
    sources = resolve_training_sources(training_sources)
    per_source = _read_source_evaluations(source_evaluations or {}, ev, sources)
    if per_source:
        summary["per_source"] = per_source
    code = code_licence()
    weights = weights_licence([s.info for s in sources or []])
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
        method, kind = _method_text(cnn_ckpt, seq_facts if sequence is not None else None, scan_rule)
        card = render_model_card(name=name, version=version, architecture=architecture, summary=summary,
                                 thresholds=thresholds, policy=policy, slice_thresholds=slice_thresholds,
                                 training=training or {},
                                 has_sequence=sequence is not None, training_sources=sources,
                                 per_source=per_source, code_license=code, limits=limits, method=method,
                                 evidence_map=str(cnn_ckpt.default_cfg.get("evidence_map", "gradcam")))
        extra = {
            "description": f"ICH + subtype detector trained on {describe_training(sources)}: {kind}"
                           + "; research use only",
            "created": _dt.date.today().isoformat(),
            "architecture": architecture,
            "scan_rule": scan_rule,
            "threshold_policy": policy,
            "slice_thresholds": slice_thresholds,
            "slice_threshold_policy": slice_policy,
            "metrics": summary,
            "training_data": ("; ".join(s.info.summary for s in sources) if sources
                              else "not recorded"),
            "license": f"weights: {weights}; code: {code}",
            "intended_use": "research and education only; not a medical device",
            "training": training or {},
            "evaluation_source": str(ev.folder),
        }
        if training_sources is not None:
            extra["training_sources"] = [dict(entry) for entry in training_sources]
        if training_caches:
            from ichd.inference.provenance import training_uids_from_cache, write_training_uids

            names = None if training_sources is None else [str(e["source"]) for e in training_sources]
            uids = training_uids_from_cache(training_caches, names)
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            extra["training_uids"] = write_training_uids(out_dir, uids)
        return write_bundle(out_dir, name=name, version=version, files=files, thresholds=thresholds,
                            model_card=card, aliases=aliases, extra=extra)
