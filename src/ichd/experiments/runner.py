"""Run one experiment end to end: train its stages on the patient folds, evaluate the out-of-fold predictions
with the project's evaluation, and write one summary.

Output layout (``OUT``, default ``runs/experiments/NAME``)::

    OUT/experiment.yaml        the experiment as run (profile and --set applied) + the resolved stage configs
    OUT/cnn/                   slice-CNN cross-validation, exactly as `ichd train cnn` writes it (folds.csv,
                               fold{K}/config.yaml, last.pt, final.pt, metrics.json, oof.csv) + oof.csv (the folds run)
    OUT/embed/oof.npz          out-of-fold CNN embeddings (sequence stage only)
    OUT/seq/                   sequence-model cross-validation as `ichd train seq` writes it
    OUT/baseline/              PCA baselines, in the CNN layout (ichd.experiments.baselines)
    OUT/eval/<stage>/          `ichd evaluate` of each stage (metrics.json, thresholds.json, report.md/html)
    OUT/clinical_table.md      Danilov et al.'s per-subtype table (experiments with evaluation.clinical_table)
    OUT/summary.json           the comparison row(s): metrics with CIs, parameters, ms per slice, settings

A sequence stage needs every CNN fold (its cross-validation trains on the other folds' out-of-fold embeddings),
or exactly one (``--folds K``: fold K's CNN embeds every scan, the sequence model trains on the other folds' scans
and is tested on fold K's; the summary says so); with several but not all folds it is skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichd.errors import ConfigError, InputError
from ichd.experiments.config import EvaluationConfig, ExperimentConfig
from ichd.utils.logging import get_logger

if TYPE_CHECKING:
    from ichd.training.config import CnnTrainConfig
    from ichd.training.seq import SeqTrainConfig

log = get_logger(__name__)

#: Where runs go without --out.
DEFAULT_OUT_ROOT = Path("runs") / "experiments"


@dataclass
class RunOptions:
    """How to run an experiment (the command line's options)."""

    folds: list[int] | None = None  # CV folds to run (None: the experiment's, else all)
    max_steps: int | None = None  # cap optimizer steps per model (quick end-to-end checks)
    out: Path | None = None
    restart: bool = False  # train folds from scratch instead of resuming


def run_experiment(exp: ExperimentConfig, opts: RunOptions | None = None) -> dict[str, Any]:
    """Train, evaluate and summarise ``exp`` (module docstring); returns the summary written to summary.json."""
    from ichd.config import config_to_dict
    from ichd.utils.files import atomic_write_text

    opts = opts or RunOptions()
    t0 = time.perf_counter()
    out = Path(opts.out) if opts.out is not None else DEFAULT_OUT_ROOT / exp.name
    cnn_cfg = exp.cnn_config()
    seq_cfg = exp.seq_config()
    if opts.max_steps is not None:
        if opts.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {opts.max_steps}")
        cnn_cfg.optim.max_steps = opts.max_steps
        if seq_cfg is not None:
            seq_cfg.optim.max_steps = opts.max_steps
    stage_dir = out / ("baseline" if exp.kind == "pca_baseline" else "cnn")
    cnn_cfg.out = str(stage_dir)
    folds = _folds_to_run(exp, opts, cnn_cfg.data.folds)
    _check_cache(cnn_cfg.data.cache)
    record = {"experiment": config_to_dict(exp),
              "run": {"folds": folds, "max_steps": opts.max_steps, "profile": exp.profile,
                      "overrides": exp.overrides, "out": str(out)},
              "resolved": {"cnn": config_to_dict(cnn_cfg),
                           "sequence": config_to_dict(seq_cfg) if seq_cfg is not None else None}}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "experiment.yaml", _yaml(record))

    notes: list[str] = []
    stages: dict[str, Any] = {}
    if exp.kind == "pca_baseline":
        stages["baseline"] = _run_baseline(exp, cnn_cfg, folds, stage_dir, out)
    else:
        stages["cnn"] = _run_cnn(cnn_cfg, folds, stage_dir, out, exp.evaluation, opts.restart)
        if seq_cfg is not None:
            if sorted(folds) == list(range(cnn_cfg.data.folds)):
                stages["seq"] = _run_seq(seq_cfg, cnn_cfg, stage_dir, out, exp.evaluation)
            elif len(folds) == 1:
                stages["seq"] = _run_seq(seq_cfg, cnn_cfg, stage_dir, out, exp.evaluation, only_fold=folds[0])
                notes.append(f"sequence stage on one CNN fold: fold {folds[0]}'s CNN embedded every scan; the "
                             f"sequence model trained on the other folds' scans (the CNN's own training patients, "
                             f"so in-sample embeddings, as in a single train/validation split) and was tested on "
                             f"fold {folds[0]}'s scans only (out-of-sample for both stages)")
            else:
                notes.append(f"sequence stage skipped: it needs all {cnn_cfg.data.folds} CNN folds or exactly one, "
                             f"this run trained folds {folds}")
    if exp.evaluation.clinical_table:
        from ichd.experiments.clinical import write_clinical_table

        last = list(stages)[-1]
        write_clinical_table(Path(stages[last]["eval_dir"]) / "metrics.json", out / "clinical_table.md",
                             stage=last)
    summary = {"name": exp.name, "out": str(out), "method": exp.method, "paper": exp.paper, "paper_file": exp.paper_file,
               "kind": exp.kind, "init": exp.init, "runs": exp.runs, "notes": [*exp.notes, *notes],
               "published": [config_to_dict(p) for p in exp.published],
               "settings": _settings(exp, cnn_cfg, seq_cfg, folds, opts),
               "stages": stages, "wall_seconds": time.perf_counter() - t0}
    atomic_write_text(out / "summary.json", json.dumps(_jsonable(summary), indent=2))
    log.info("experiment %s done in %.0f s: %s", exp.name, summary["wall_seconds"], out / "summary.json")
    return summary


def _folds_to_run(exp: ExperimentConfig, opts: RunOptions, k: int) -> list[int]:
    folds = opts.folds if opts.folds is not None else exp.folds
    folds = list(range(k)) if folds is None else sorted({int(f) for f in folds})
    bad = [f for f in folds if not 0 <= f < k]
    if bad or not folds:
        raise ConfigError(f"folds {bad or folds} are not in 0..{k - 1}", hint=f"the split has {k} folds")
    return folds


def _check_cache(cache: str) -> None:
    if not (Path(cache) / "manifest.json").is_file():
        raise InputError(f"cache {cache!r} does not exist",
                         hint=f"build it first, e.g. `ichd preprocess $ICHD_DATA/ct-ich $ICHD_DATA/rsna-series/dicom "
                              f"--out {cache} --size SIZE --normalization half` (benchmarks/compare_methods.sh "
                              "does), or --set cnn.data.cache=FOLDER")


def _label_paths(cfg: CnnTrainConfig) -> list[Path]:
    from ichd.training.cnn import resolve_labels_path

    return [resolve_labels_path(f) for f in cfg.data.label_files]


def evaluate_stage(oof_csv: Path, cfg: CnnTrainConfig, eval_dir: Path, ev: EvaluationConfig, *,
                   scan_predictions: Path | None = None) -> dict[str, Any]:
    """`ichd evaluate` of one stage's out-of-fold predictions (scans with slices ingest dropped are evaluated on
    their predicted slices), then its comparison numbers."""
    from ichd.evaluation.report import evaluate_files
    from ichd.experiments.summary import evaluation_summary

    labels = _label_paths(cfg)
    evaluate_files(oof_csv, labels if len(labels) > 1 else labels[0], eval_dir, partial_scans=True,
                   scan_predictions=scan_predictions, sensitivity=ev.sensitivity, n_boot=ev.bootstrap,
                   seed=ev.seed, overwrite=True, plots=False)
    return evaluation_summary(eval_dir)


def pool_oof(fold_csvs: list[Path], out_csv: Path) -> Path:
    """Concatenate fold ``oof.csv`` files into ``out_csv`` (sorted by scan and slice)."""
    import pandas as pd

    from ichd.utils.files import atomic_write_text

    frames = [pd.read_csv(p, dtype={"slice_id": str, "scan_id": str, "patient_id": str}) for p in fold_csvs]
    oof = pd.concat(frames, ignore_index=True).sort_values(["scan_id", "slice_index"]).reset_index(drop=True)
    if oof["slice_id"].duplicated().any():
        raise InputError("a slice appears in two folds' oof.csv", hint="the folds come from different splits")
    return atomic_write_text(out_csv, oof.to_csv(index=False, float_format="%.6g"))


def _run_cnn(cfg: CnnTrainConfig, folds: list[int], run_dir: Path, out: Path, ev: EvaluationConfig,
             restart: bool) -> dict[str, Any]:
    from ichd.experiments.summary import checkpoint_parameters, cnn_fold_costs
    from ichd.training.cnn import train_cnn

    results = []
    for k in folds:
        log.info("training fold %d of %s", k, folds)
        results.append(train_cnn(cfg, k, out=run_dir, restart=restart))
    oof = pool_oof([r.oof_csv for r in results if r.oof_csv is not None], run_dir / "oof.csv")
    stage = evaluate_stage(oof, cfg, out / "eval" / "cnn", ev)
    stage.update(cnn_fold_costs([r.out_dir for r in results]))
    stage.update(checkpoint_parameters(results[0].final_checkpoint))
    stage["folds"] = folds
    stage["oof_csv"] = str(oof)
    stage["masks"] = _mask_counts(cfg, run_dir, folds)
    return stage


def _mask_counts(cfg: CnnTrainConfig, run_dir: Path, folds: list[int]) -> dict[str, Any] | None:
    """How many slices of the training table have masks, and how many of them each fold trained on."""
    if not cfg.data.masks:
        return None
    import pandas as pd

    from ichd.data.masks import read_mask_folders
    from ichd.training.cnn import load_training_table

    cache, labels = load_training_table(cfg)
    masked = set(read_mask_folders([str(p) for p in _mask_paths(cfg)], int(cache.image_size))) & set(labels.index)
    assignment = pd.read_csv(run_dir / "folds.csv", dtype={"patient_id": str}).set_index("patient_id")["fold"]
    patients = labels.loc[sorted(masked), "patient_id"].astype(str)
    per_fold = {str(k): int((patients.map(assignment) != k).sum()) for k in folds}
    return {"slices_with_masks": len(masked), "patients_with_masks": int(patients.nunique()),
            "training_slices_with_masks_per_fold": per_fold}


def _mask_paths(cfg: CnnTrainConfig) -> list[Path]:
    from ichd.training.cnn import resolve_labels_path

    return [resolve_labels_path(m) for m in cfg.data.masks or []]


def _run_seq(seq_cfg: SeqTrainConfig, cnn_cfg: CnnTrainConfig, cnn_dir: Path, out: Path,
             ev: EvaluationConfig, only_fold: int | None = None) -> dict[str, Any]:
    """The sequence stage on the CNN folds' embeddings. Every CNN fold ran: out-of-fold embeddings and the
    sequence model's cross-validation on the same folds. ``only_fold=k`` (only CNN fold k ran): fold k's CNN
    embeds every scan (each scan keeps its patient's fold) and only sequence fold k is trained and tested."""
    from ichd.inference.embed import embed_cache, read_fold_assignment, run_checkpoints
    from ichd.training.seq import train_seq

    t0 = time.perf_counter()
    assignment = read_fold_assignment(cnn_dir / "folds.csv")
    if only_fold is None:
        checkpoints = run_checkpoints(cnn_dir, assignment)
    else:
        checkpoint = run_checkpoints(cnn_dir, {"": only_fold})[only_fold]
        checkpoints = dict.fromkeys(sorted(set(assignment.values())), checkpoint)
    table = embed_cache(cnn_cfg.data.cache, checkpoints, patient_folds=assignment, device=cnn_cfg.device)
    embed_seconds = time.perf_counter() - t0
    emb_path = table.save(out / "embed" / "oof.npz")
    seq_cfg.embeddings = str(emb_path)
    seq_cfg.out = str(out / "seq")
    seq_cfg.labels = cnn_cfg.data.labels
    seq_cfg.folds = None if only_fold is None else [only_fold]
    seq_cfg.final = False
    seq_cfg.cnn_checkpoint = ""
    ts = time.perf_counter()
    result = train_seq(seq_cfg, n_boot=min(ev.bootstrap, 200))
    seq_seconds = time.perf_counter() - ts
    seq_dir = Path(seq_cfg.out)
    stage = evaluate_stage(seq_dir / "oof.csv", cnn_cfg, out / "eval" / "seq", ev,
                           scan_predictions=seq_dir / "oof_scans.csv")
    n = len(table)
    stage.update({"embed_seconds": embed_seconds, "seq_seconds": seq_seconds,
                  "seq_train_predict_ms_per_slice": 1000 * seq_seconds / n if n else None,
                  "embed_ms_per_slice": 1000 * embed_seconds / n if n else None,
                  "feature_dim": int(table.n_features), "scan_rule": seq_cfg.scan_rule, "min_run": seq_cfg.min_run,
                  "parameters": _seq_parameters(result.checkpoints),
                  "oof_csv": str(seq_dir / "oof.csv"), "oof_scans_csv": str(seq_dir / "oof_scans.csv"),
                  "wall_seconds": time.perf_counter() - t0})
    return stage


def _seq_parameters(checkpoints: list[Path]) -> int | None:
    if not checkpoints:
        return None
    from ichd.models.checkpoint import load_checkpoint

    return int(sum(p.numel() for p in load_checkpoint(checkpoints[0]).model.parameters()))


def _run_baseline(exp: ExperimentConfig, cfg: CnnTrainConfig, folds: list[int], run_dir: Path,
                  out: Path) -> dict[str, Any]:
    from ichd.config import config_to_dict
    from ichd.experiments.baselines import run_baseline_fold
    from ichd.experiments.summary import baseline_fold_costs
    from ichd.training.cnn import load_training_table, write_folds_csv
    from ichd.training.variants import training_folds

    cache, labels = load_training_table(cfg)
    assignment = training_folds(cfg, labels)
    write_folds_csv(run_dir, assignment)
    data = config_to_dict(cfg.data)
    results = [run_baseline_fold(exp.baseline, cache, labels, assignment, k, run_dir, data) for k in folds]
    oof = pool_oof([r.oof_csv for r in results], run_dir / "oof.csv")
    stage = evaluate_stage(oof, cfg, out / "eval" / "baseline", exp.evaluation)
    stage.update(baseline_fold_costs([r.out_dir for r in results]))
    stage["folds"] = folds
    stage["oof_csv"] = str(oof)
    stage["pca_components"] = results[0].metrics["pca_components"]
    stage["pca_explained_variance"] = [r.metrics["pca_explained_variance"] for r in results]
    return stage


def _settings(exp: ExperimentConfig, cfg: CnnTrainConfig, seq_cfg: SeqTrainConfig | None, folds: list[int],
              opts: RunOptions) -> dict[str, Any]:
    """What the run did, in the words of the comparison table (recorded with the numbers)."""
    from ichd.preprocessing.cache import open_cache

    size = int(open_cache(cfg.data.cache).image_size)
    settings: dict[str, Any] = {
        "profile": exp.profile, "overrides": exp.overrides, "folds": folds, "n_folds": cfg.data.folds,
        "folds_file": cfg.data.folds_file, "cache": cfg.data.cache, "image_size": size,
        "labels": cfg.data.label_files, "max_steps": opts.max_steps}
    if exp.kind == "pca_baseline":
        settings.update({"model": f"pca{exp.baseline.components}+{exp.baseline.classifier}",
                         "baseline_image_size": exp.baseline.image_size, "targets": "any"})
        return settings
    settings.update({
        "model": cfg.model.name, "weights": cfg.model.weights, "pretrained": cfg.model.pretrained,
        "freeze": cfg.model.freeze, "epochs": cfg.optim.epochs, "lr_per_epoch": cfg.optim.lr_per_epoch,
        "optimizer": cfg.optim.optimizer, "batch_size": cfg.optim.batch_size,
        "image_size_per_epoch": cfg.optim.image_size_per_epoch, "epoch_samples": cfg.data.epoch_samples,
        "targets": cfg.targets, "tta": cfg.tta, "masks": cfg.data.masks, "augment": cfg.augment_enabled})
    if seq_cfg is not None:
        settings["sequence"] = {"arch": seq_cfg.model.arch, "layers": seq_cfg.model.layers,
                                "hidden": seq_cfg.model.hidden, "selector": seq_cfg.selector.method,
                                "k": seq_cfg.selector.k, "epochs": seq_cfg.optim.epochs,
                                "scan_rule": seq_cfg.scan_rule, "min_run": seq_cfg.min_run,
                                "targets": seq_cfg.targets}
    return settings


def _yaml(doc: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(_jsonable(doc), sort_keys=False)


def _jsonable(obj: Any) -> Any:
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
