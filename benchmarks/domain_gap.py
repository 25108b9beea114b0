"""What the CT-ICH-only model sees on CT-ICH and on real RSNA DICOM, side by side (domain-gap check).

The bundled model ``ctich-effnetlite0`` (EfficientNet-Lite0, 128 px, trained only on CT-ICH, whose HU are rebuilt
from 8-bit brain/bone JPG windows) calls all 7 hemorrhages of ``rsna-samples`` negative. This script shows the
model's own input for both domains and measures how they differ, then runs a few counterfactual probes (the same
model on RSNA slices zoomed to CT-ICH's field of view and/or passed through the CT-ICH JPG export, and on CT-ICH
slices zoomed out to RSNA's field of view) to see which difference matters. Inference only, on CPU, one thread.

Usage (from the repository root; about 4 min on a 2-core VM with another job running)::

    NO_ALBUMENTATIONS_UPDATE=1 nice -n 19 python benchmarks/domain_gap.py --out docs/figures

Writes under ``--out``:

* ``domain_inputs.png``: bleed slices from CT-ICH (JPG->HU) and RSNA (rsna-samples, rsna-series) as the three
  window channels the model gets, at the bundled model's 128 px and at 256 px, with the model's P(any) per row;
* ``domain_histograms.png``: brain-tissue HU histograms, per-channel input intensity histograms, field of view,
  noise, and the probe results;
* ``domain_gap.json``: every number (per-slice measurements, per-domain summaries, probes).

Domains measured (one slice per scan, except the two sets of single slices): CT-ICH middle slice of each of the
82 patients (HU rebuilt from the JPGs with :func:`ichd.io.images.ctich_to_hu`), ``hu-slices`` (26 CT-ICH bleed
slices in their original HU, a control for the JPG rebuild), rsna-series middle slice of each of the 20 series,
and the 10 rsna-samples slices. Model inputs come from the predictor's own preprocessing
(:func:`ichd.preprocessing.pipeline.preprocess_hu` with the bundle's :class:`PreprocessConfig`) and its CNN pass
(:func:`ichd.inference.embed.embed_slices`), i.e. exactly what ``Predictor.predict_series`` (no TTA) computes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "src/ichd/resources/models/ctich-effnetlite0"
#: Quality of the CT-ICH JPGs: their quantisation table is the IJG luminance table at quality 75.
CTICH_JPEG_QUALITY = 75
DOMAINS = ("ct-ich", "hu-slices", "rsna-series", "rsna-samples")
DOMAIN_LABEL = {
    "ct-ich": "CT-ICH (HU from JPG), middle slice x82",
    "hu-slices": "CT-ICH original HU (hu-slices) x26",
    "rsna-series": "rsna-series middle slice x20",
    "rsna-samples": "rsna-samples x10",
}
DOMAIN_COLOR = {"ct-ich": "tab:blue", "hu-slices": "tab:cyan", "rsna-series": "tab:red", "rsna-samples": "tab:orange"}
ABBR = {"epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH", "subarachnoid": "SAH",
        "subdural": "SDH"}
SUBTYPES = tuple(ABBR)


def data_dir() -> Path:
    return Path(os.environ.get("ICHD_DATA", "../shared/data"))


# ---------------------------------------------------------------------------------------------------- masks


def head_mask(hu: np.ndarray) -> np.ndarray:
    """The head: pixels above -500 HU, opened by a radius of 1/64 of the image side (which removes the thin table
    and headrest, and ears), largest component, holes filled. Empty when nothing thicker than that is left (a slice
    above the vertex that shows only the table)."""
    import scipy.ndimage as ndi

    m = ndi.binary_opening(hu > -500, iterations=max(1, round(max(hu.shape) / 64)))
    lab, n = ndi.label(m)
    if n == 0:
        return np.zeros_like(m)
    sizes = ndi.sum(m, lab, range(1, n + 1))
    return ndi.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    r = np.where(mask.any(1))[0]
    c = np.where(mask.any(0))[0]
    return int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1


def brain_mask(hu: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, str]:
    """Intracranial brain-tissue pixels in [-20, 120] HU: the inside of the closed skull (> 250 HU), eroded by 2 px.
    Falls back to the head eroded by 8 % of its extent when the skull is open on the slice."""
    import scipy.ndimage as ndi

    skull = (hu > 250) & head
    closed = ndi.binary_closing(skull, iterations=3)
    inner = ndi.binary_fill_holes(closed) & ~closed
    lab, n = ndi.label(inner)
    how = "skull"
    if n:
        sizes = ndi.sum(inner, lab, range(1, n + 1))
        inner = lab == (int(np.argmax(sizes)) + 1)
    if inner.sum() < 0.2 * head.sum():
        r0, r1, c0, c1 = bbox(head)
        inner = ndi.binary_erosion(head, iterations=max(1, int(0.08 * max(r1 - r0, c1 - c0))))
        how = "eroded head"
    inner = ndi.binary_erosion(inner, iterations=2)
    return inner & (hu >= -20) & (hu <= 120), how


def local_std(x: np.ndarray, size: int) -> np.ndarray:
    import scipy.ndimage as ndi

    x = x.astype(np.float64)
    mu = ndi.uniform_filter(x, size)
    mu2 = ndi.uniform_filter(x * x, size)
    return np.sqrt(np.maximum(mu2 - mu * mu, 0.0))


def head_only(hu: np.ndarray, air: float = -1024.0) -> np.ndarray:
    """Everything outside the head (dilated 3 px) set to air: no table, headrest or cushions."""
    import scipy.ndimage as ndi

    keep = ndi.binary_dilation(head_mask(hu), iterations=3)
    return np.where(keep, np.asarray(hu, dtype=np.float32), np.float32(air))


def reframe(hu: np.ndarray, target_extent: float, air: float = -1024.0) -> np.ndarray:
    """Square crop (or air padding) centred on the head so that the head's larger side is ``target_extent`` of
    the image side: simulates another field of view before the model's own resize."""
    head = head_mask(hu)
    if not head.any():
        return np.asarray(hu, dtype=np.float32)
    r0, r1, c0, c1 = bbox(head)
    ext = max(r1 - r0, c1 - c0)
    side = max(8, round(ext / target_extent))
    cy, cx = (r0 + r1) / 2.0, (c0 + c1) / 2.0
    y0, x0 = round(cy - side / 2.0), round(cx - side / 2.0)
    out = np.full((side, side), air, dtype=np.float32)
    sy0, sx0 = max(0, y0), max(0, x0)
    sy1, sx1 = min(hu.shape[0], y0 + side), min(hu.shape[1], x0 + side)
    out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = hu[sy0:sy1, sx0:sx1]
    return out


# ----------------------------------------------------------------------------------------------- the model


class Model:
    """The bundled predictor's preprocessing + CNN, exactly as ``Predictor.predict_series`` runs them (no TTA)."""

    def __init__(self, path: Path) -> None:
        from ichd.inference.predictor import Predictor

        self.predictor = Predictor.load(str(path), device="cpu")
        self.cfg = self.predictor.preprocess
        self.cfg256 = self.cfg.replace(image_size=256)
        self.threshold = float(self.predictor.thresholds["any"])

    def inputs(self, hu: np.ndarray, size: int | None = None) -> np.ndarray:
        """(z, H, W) HU -> (z, 3, S, S) float in [0, 1], the model's preprocessing (S = its size or ``size``)."""
        from ichd.preprocessing.pipeline import from_cache_dtype, preprocess_hu

        cfg = self.cfg if size in (None, self.cfg.image_size) else self.cfg.replace(image_size=int(size))
        return from_cache_dtype(preprocess_hu(np.asarray(hu, dtype=np.float32), cfg))

    def p_any(self, slices: list[np.ndarray]) -> np.ndarray:
        """P(any) for a list of HU slices (each (H, W), sizes may differ)."""
        from ichd.inference.embed import embed_slices
        from ichd.preprocessing.pipeline import preprocess_hu

        if not slices:
            return np.zeros(0, np.float32)
        x = np.concatenate([preprocess_hu(np.asarray(s, dtype=np.float32)[None], self.cfg) for s in slices])
        return embed_slices(self.predictor.cnn, x, batch_size=32)[1][:, 0]


# ------------------------------------------------------------------------------------------- measurements


class Accumulator:
    """Per-domain histograms: brain HU (dithered by the domain's quantisation step) and channel intensities."""

    HU_BINS = np.arange(-20.0, 120.0 + 1e-6, 1.0)
    CH_BINS = np.linspace(0.0, 1.0, 52)

    def __init__(self) -> None:
        self.hu = {d: np.zeros(len(self.HU_BINS) - 1) for d in DOMAINS}
        self.ch = {d: np.zeros((3, len(self.CH_BINS) - 1)) for d in DOMAINS}
        self.rng = np.random.default_rng(0)

    def add(self, domain: str, brain_hu: np.ndarray, step: float, x128: np.ndarray, head128: np.ndarray) -> None:
        v = brain_hu + self.rng.uniform(-step / 2, step / 2, size=brain_hu.shape)
        self.hu[domain] += np.histogram(v, self.HU_BINS)[0]
        for c in range(3):
            self.ch[domain][c] += np.histogram(x128[c][head128], self.CH_BINS)[0]


def measure(hu: np.ndarray, spacing_mm: float | None, model: Model, acc: Accumulator, domain: str) -> dict[str, Any]:
    """Field of view, noise, quantisation, brain HU and the model's input intensities of one HU slice."""
    import scipy.ndimage as ndi

    hu = np.asarray(hu, dtype=np.float32)
    side = max(hu.shape)
    head = head_mask(hu)
    r0, r1, c0, c1 = bbox(head)
    ext_px = max(r1 - r0, c1 - c0)
    brain, how = brain_mask(hu, head)
    core = ndi.binary_erosion(brain, iterations=3) & (hu >= 0) & (hu <= 80)
    noise = float(np.median(local_std(hu, 7)[core])) if core.any() else float("nan")
    in080 = hu[brain & (hu >= 0) & (hu <= 80)]
    levels = np.unique(in080)
    step = float(np.median(np.diff(levels))) if len(levels) > 1 else float("nan")
    x128 = model.inputs(hu[None])[0]
    x256 = model.inputs(hu[None], 256)[0]
    from ichd.preprocessing.resize import resize_slices

    s = model.cfg.image_size
    head128 = resize_slices(head[None].astype(np.float32), s)[0] > 0.5
    brain128 = resize_slices(brain[None].astype(np.float32), s)[0] > 0.999
    core128 = ndi.binary_erosion(brain128, iterations=1) & (x128[0] > 0) & (x128[0] < 1)
    # brain channel is L40/W80: 1 unit = 80 HU, linear inside [0, 80] HU
    noise128 = float(np.median(local_std(x128[0] * 80.0, 3)[core128])) if core128.any() else float("nan")
    brain_hu = hu[brain]
    acc.add(domain, brain_hu, step if np.isfinite(step) else 1.0, x128, head128)
    rec = {
        "image_px": int(side),
        "pixel_spacing_mm": None if spacing_mm is None or not np.isfinite(spacing_mm) else float(spacing_mm),
        "head_area_fraction": float(head.sum() / float(side * side)),
        "head_extent_fraction": float(ext_px / side),
        "head_px_in_model_input": float(ext_px / side * s),
        "head_extent_mm": (None if spacing_mm is None or not np.isfinite(spacing_mm)
                           else float(ext_px * spacing_mm)),
        "brain_mask": how,
        "brain_pixels": int(brain.sum()),
        "noise_hu_7x7_native": noise,
        "noise_hu_3x3_model_input": noise128,
        "distinct_hu_values_0_80": len(levels),
        "hu_step_0_80": step,
        "brain_median_hu": float(np.median(brain_hu)),
        "brain_iqr_hu": float(np.subtract(*np.percentile(brain_hu, [75, 25]))),
        "channel_mean_128": [float(x128[c].mean()) for c in range(3)],
        "channel_mean_head_128": [float(x128[c][head128].mean()) for c in range(3)],
        "channel_mean_256": [float(x256[c].mean()) for c in range(3)],
    }
    return rec


SUMMARY_KEYS = ("image_px", "pixel_spacing_mm", "head_area_fraction", "head_extent_fraction", "head_px_in_model_input",
                "head_extent_mm", "noise_hu_7x7_native", "noise_hu_3x3_model_input", "distinct_hu_values_0_80",
                "hu_step_0_80", "brain_median_hu", "brain_iqr_hu", "channel_mean_128", "channel_mean_head_128",
                "channel_mean_256", "p_any")


def summarise(recs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(recs)}
    for k in SUMMARY_KEYS:
        vals = [r[k] for r in recs if r.get(k) is not None]
        if not vals:
            out[k] = None
            continue
        a = np.asarray(vals, dtype=np.float64)
        if a.ndim == 2:
            out[k] = {"median": np.round(np.nanmedian(a, 0), 4).tolist(), "mean": np.round(np.nanmean(a, 0), 4).tolist()}
        else:
            q = np.nanpercentile(a, [25, 50, 75])
            out[k] = {"median": round(float(q[1]), 4), "q25": round(float(q[0]), 4), "q75": round(float(q[2]), 4),
                      "min": round(float(np.nanmin(a)), 4), "max": round(float(np.nanmax(a)), 4)}
    return out


def auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from scipy.stats import rankdata

    y = np.asarray(y, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def probe_summary(y: np.ndarray, p: np.ndarray, thr: float) -> dict[str, Any]:
    y = np.asarray(y, bool)
    return {"n_pos": int(y.sum()), "n_neg": int((~y).sum()),
            "median_p_pos": round(float(np.median(p[y])), 4) if y.any() else None,
            "median_p_neg": round(float(np.median(p[~y])), 4) if (~y).any() else None,
            "sensitivity_at_thr": round(float((p[y] >= thr).mean()), 4) if y.any() else None,
            "false_pos_rate_at_thr": round(float((p[~y] >= thr).mean()), 4) if (~y).any() else None,
            "auc": None if auc(y, p) is None else round(auc(y, p), 4)}


def label_text(row: Any) -> str:
    subs = [ABBR[s] for s in SUBTYPES if str(getattr(row, s, "0")) in ("1", "1.0")]
    return "+".join(subs) if subs else ("any" if str(getattr(row, "any", 0)) in ("1", "1.0") else "none")


# -------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/figures", help="output folder (default docs/figures)")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="model bundle folder or checkpoint (default: the "
                    "bundled CT-ICH-only ctich-effnetlite0)")
    ap.add_argument("--data", default=str(data_dir()), help="shared data folder (default $ICHD_DATA or ../shared/data)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--neg-per-pos", type=float, default=1.0,
                    help="CT-ICH probe: negative slices drawn per positive slice (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dpi", type=int, default=90)
    args = ap.parse_args(argv)

    import warnings

    import matplotlib
    import pandas as pd
    import torch

    matplotlib.use("Agg")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from ichd.data.augment import ctich_round_trip
    from ichd.explain.localization import read_masked_slices
    from ichd.io import read_ct
    from ichd.io.images import ctich_bone_offsets, read_ctich_patient

    t_start = time.time()
    data = Path(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Model(Path(args.model))
    thr = model.threshold
    acc = Accumulator()
    per: dict[str, list[dict[str, Any]]] = {d: [] for d in DOMAINS}

    def note(msg: str) -> None:
        print(f"[{time.time() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # ---- rsna-samples (all 10)
    samples_lab = pd.read_csv(data / "rsna-samples/labels.csv")
    samples = {s.sop_instance_uids[0]: s for s in read_ct(data / "rsna-samples", independent=True, workers=1)}
    samples_rows = []
    for row in samples_lab.itertuples(index=False):
        s = samples[row.sop_instance_uid]
        rec = measure(s.hu[0], s.spacing_mm[1], model, acc, "rsna-samples")
        rec.update(id=row.sop_instance_uid, label=label_text(row), any=int(row.any))
        per["rsna-samples"].append(rec)
        samples_rows.append((row, s))
    # the same numbers through Predictor.predict_series (one check that Model.p_any is the predictor's path)
    p_samples = model.p_any([s.hu[0] for _, s in samples_rows])
    check = np.array([model.predictor.predict_series(s).slice_probs[0, 0] for _, s in samples_rows])
    assert np.allclose(p_samples, check, atol=1e-5), (p_samples, check)
    for rec, p in zip(per["rsna-samples"], p_samples):
        rec["p_any"] = float(p)
    note("rsna-samples measured")

    # ---- rsna-series: middle slice per series (measurements); all slices for the probes later
    series_lab = pd.read_csv(data / "rsna-series/labels.csv", dtype={"image_id": str})
    series_ids = sorted(series_lab.series_uid.unique())
    for sid in series_ids:
        g = series_lab[series_lab.series_uid == sid].sort_values("slice_index")
        row = g.iloc[len(g) // 2]
        [s] = read_ct(data / "rsna-series" / row.file, workers=1)
        rec = measure(s.hu[0], s.spacing_mm[1], model, acc, "rsna-series")
        rec.update(id=f"{sid}/{row.image_id}", label=label_text(row),
                   any=None if pd.isna(row["any"]) else int(row["any"]), p_any=float(model.p_any([s.hu[0]])[0]))
        per["rsna-series"].append(rec)
    note("rsna-series middle slices measured")
    rsna_extent = float(np.median([r["head_extent_fraction"] for r in per["rsna-series"] + per["rsna-samples"]]))

    # ---- hu-slices (CT-ICH in original HU) and their JPG twins
    masked = read_masked_slices(data / "hu-slices")
    hu_native = [m.series.hu[0] for m in masked]
    p_native = model.p_any(hu_native)
    for m, p in zip(masked, p_native):
        rec = measure(m.series.hu[0], None, model, acc, "hu-slices")
        rec.update(id=m.name, label="+".join(ABBR[s] for s in SUBTYPES if m.labels[s]), any=1, p_any=float(p),
                   ctich_slice=f"{m.patient_id}/{m.ctich_slice:03d}")
        per["hu-slices"].append(rec)
    note("hu-slices measured")

    # ---- CT-ICH: middle slice per patient, probes over positives + sampled negatives, grid rows
    ct_lab = pd.read_csv(data / "ct-ich/labels.csv")
    rng = np.random.default_rng(args.seed)
    pos = ct_lab[ct_lab["any"] == 1]
    neg = ct_lab[ct_lab["any"] == 0]
    neg = neg.iloc[np.sort(rng.choice(len(neg), size=min(len(neg), round(args.neg_per_pos * len(pos))),
                                      replace=False))]
    probe_keys = set(zip(pos.patient, pos.slice)) | set(zip(neg.patient, neg.slice))
    # grid rows: CT-ICH bleed slices that also have an original-HU twin with a mask (clear, confirmed bleeds)
    ct_grid = [(76, 22, "IPH"), (71, 19, "SDH"), (76, 18, "SAH"), (75, 23, "EDH")]
    ct_grid_hu: dict[tuple[int, int], np.ndarray] = {}
    twin_p: dict[str, float] = {}
    twin_keys = {(int(m.patient_id.split("-")[1]), m.ctich_slice): m.name for m in masked}
    ct_probe: dict[str, list[float]] = {"y": [], "as_is": [], "zoomed_out_to_rsna_fov": []}
    offsets = ctich_bone_offsets(data / "ct-ich")
    for pid in sorted(ct_lab.patient.unique()):
        s = read_ctich_patient(data / "ct-ich", int(pid), bone_offsets=offsets)
        numbers = s.meta["slice_numbers"]
        mid = len(numbers) // 2
        lab = ct_lab[ct_lab.patient == pid].set_index("slice")
        rec = measure(s.hu[mid], None, model, acc, "ct-ich")
        lrow = lab.loc[numbers[mid]]
        rec.update(id=f"ctich-{pid:03d}/{numbers[mid]:03d}", label=label_text(lrow), any=int(lrow["any"]))
        idx = [i for i, n in enumerate(numbers) if (pid, n) in probe_keys or i == mid or (pid, n) in twin_keys]
        p_as = model.p_any([s.hu[i] for i in idx])
        p_zo = model.p_any([reframe(s.hu[i], rsna_extent) for i in idx])
        for i, a, z in zip(idx, p_as, p_zo):
            n = numbers[i]
            if i == mid:
                rec["p_any"] = float(a)
            if (pid, n) in twin_keys:
                twin_p[twin_keys[(pid, n)]] = float(a)
            if (pid, n) in probe_keys:
                ct_probe["y"].append(int(lab.loc[n, "any"]))
                ct_probe["as_is"].append(float(a))
                ct_probe["zoomed_out_to_rsna_fov"].append(float(z))
        for gp, gs, _ in ct_grid:
            if gp == pid:
                ct_grid_hu[(gp, gs)] = s.hu[numbers.index(gs)].copy()
        per["ct-ich"].append(rec)
    for rec in per["hu-slices"]:
        rec["p_any_jpg_twin"] = twin_p.get(rec["id"])
    note("CT-ICH measured and probed")
    ctich_extent = float(np.median([r["head_extent_fraction"] for r in per["ct-ich"]]))

    # ---- RSNA probes: every rsna-series slice + rsna-samples, four conditions
    # brain-tissue HU offset between the domains (CT-ICH minus RSNA, medians of the middle slices), 0.5 HU steps
    rsna_brain = float(np.median([r["brain_median_hu"] for r in per["rsna-series"] + per["rsna-samples"]]))
    ctich_brain = float(np.median([r["brain_median_hu"] for r in per["ct-ich"]]))
    hu_shift = round(2 * (ctich_brain - rsna_brain)) / 2
    conds = ("as_is", "zoomed_to_ctich_fov", "ctich_jpg_round_trip", "hu_offset_to_ctich", "table_removed", "all_four")
    cond_label = {"as_is": "as is", "zoomed_to_ctich_fov": "zoomed to\nCT-ICH FOV",
                  "ctich_jpg_round_trip": "CT-ICH JPG\nround trip",
                  "hu_offset_to_ctich": f"HU {hu_shift:+g}\n(brain median)",
                  "table_removed": "table and\nheadrest removed", "all_four": "all four"}

    def variants(hu: np.ndarray) -> dict[str, np.ndarray]:
        z = reframe(hu, ctich_extent)
        return {"as_is": hu, "zoomed_to_ctich_fov": z,
                "ctich_jpg_round_trip": ctich_round_trip(hu, CTICH_JPEG_QUALITY),
                "hu_offset_to_ctich": hu + np.float32(hu_shift),
                "table_removed": head_only(hu),
                "all_four": ctich_round_trip(head_only(z) + np.float32(hu_shift), CTICH_JPEG_QUALITY)}

    rs_probe: dict[str, list] = {"y": [], "series": [], "image_id": [], "slice_index": [], "rel_pos": [],
                                 "subtypes": [], "has_head": [], **{c: [] for c in conds}}
    grid_series_hu: dict[str, tuple[np.ndarray, Any]] = {}
    # grid: two rsna-series bleed slices, the middle subdural slice of the SDH series and the middle IPH slice of
    # another positive series
    sdh = series_lab[series_lab.subdural == 1].sort_values(["series_uid", "slice_index"])
    sdh_sid = sdh.series_uid.iloc[0]
    sdh_row = sdh[sdh.series_uid == sdh_sid].iloc[len(sdh[sdh.series_uid == sdh_sid]) // 2]
    iph = series_lab[(series_lab.intraparenchymal == 1) & (series_lab.series_uid != sdh_sid)]
    iph_counts = iph.groupby("series_uid").size().sort_values(ascending=False)
    iph_g = iph[iph.series_uid == iph_counts.index[0]].sort_values("slice_index")
    iph_row = iph_g.iloc[len(iph_g) // 2]
    grid_ids = {sdh_row.image_id: sdh_row, iph_row.image_id: iph_row}
    fp_rows: list[Any] = []  # filled after the probes: the most confident false positives
    for sid in series_ids:
        got = {s.sop_instance_uids[0]: s for s in read_ct(data / "rsna-series/dicom" / sid, independent=True,
                                                          workers=1)}
        g = series_lab[(series_lab.series_uid == sid) & series_lab["any"].notna()]
        hs = [got[i].hu[0] for i in g.image_id]
        vs = [variants(h) for h in hs]
        for c in conds:
            rs_probe[c].extend(model.p_any([v[c] for v in vs]).tolist())
        rs_probe["y"].extend(g["any"].astype(int).tolist())
        rs_probe["series"].extend([sid] * len(g))
        rs_probe["image_id"].extend(g.image_id.tolist())
        rs_probe["slice_index"].extend(g.slice_index.astype(int).tolist())
        n_all = int((series_lab.series_uid == sid).sum())
        rs_probe["rel_pos"].extend((g.slice_index / max(1, n_all - 1)).round(3).tolist())
        rs_probe["subtypes"].extend(label_text(r) for r in g.itertuples(index=False))
        rs_probe["has_head"].extend(bool(head_mask(h).any()) for h in hs)
        for iid, row in grid_ids.items():
            if iid in got:
                grid_series_hu[iid] = (got[iid].hu[0].copy(), row, got[iid].spacing_mm[1])
        # keep each series' most confident false positive below and at the vertex (top 15 % of the series)
        pa = np.array(rs_probe["as_is"][-len(g):])
        rp = np.array(rs_probe["rel_pos"][-len(g):])
        yy = g["any"].astype(int).to_numpy()
        for top in (False, True):
            m = (yy == 0) & ((rp > 0.85) == top)
            if m.any():
                k = int(np.flatnonzero(m)[np.argmax(pa[m])])
                fp_rows.append((float(pa[k]), top, hs[k].copy(), g.iloc[k], got[g.image_id.iloc[k]].spacing_mm[1]))
        note(f"rsna-series {sid} probed ({len(g)} slices)")
    sv = [variants(s.hu[0]) for _, s in samples_rows]
    samp_probe = {c: model.p_any([v[c] for v in sv]).tolist() for c in conds}
    samp_y = [int(r.any) for r, _ in samples_rows]

    # ---- probe summaries
    probes: dict[str, Any] = {
        "threshold_any": thr,
        "ctich_oof_reference": "bundle model card: CT-ICH 5-fold OOF slice AUC(any) 0.877 (0.835-0.914)",
        "ctich_median_head_extent": ctich_extent,
        "rsna_median_head_extent": rsna_extent,
        "ctich_jpeg_quality": CTICH_JPEG_QUALITY,
        "hu_offset_applied": hu_shift,
        "ctich_brain_median_hu": ctich_brain,
        "rsna_brain_median_hu": rsna_brain,
        "rsna_series_slices": {},
        "rsna_series_scans": {},
        "rsna_samples": {},
        "ctich_slices": {},
        "hu_slices_vs_jpg_twin": {},
    }
    y_rs = np.array(rs_probe["y"])
    ser = np.array(rs_probe["series"])
    scan_y = {sid: int(y_rs[ser == sid].max()) for sid in series_ids}
    boot_rng = np.random.default_rng(args.seed)
    by_series = {sid: np.flatnonzero(ser == sid) for sid in series_ids}
    boots = [np.concatenate([by_series[series_ids[k]] for k in boot_rng.integers(0, len(series_ids), len(series_ids))])
             for _ in range(1000)]
    for c in conds:
        p = np.array(rs_probe[c])
        probes["rsna_series_slices"][c] = probe_summary(y_rs, p, thr)
        bs = [auc(y_rs[b], p[b]) for b in boots]
        bs = [b for b in bs if b is not None]
        probes["rsna_series_slices"][c]["auc_ci95_series_bootstrap"] = np.round(np.percentile(bs, [2.5, 97.5]),
                                                                                 4).tolist()
        smax = {sid: float(p[ser == sid].max()) for sid in series_ids}
        ys = np.array([scan_y[s] for s in series_ids])
        ps = np.array([smax[s] for s in series_ids])
        probes["rsna_series_scans"][c] = probe_summary(ys, ps, thr)
        probes["rsna_samples"][c] = {**probe_summary(np.array(samp_y), np.array(samp_probe[c]), thr),
                                     "p_any": dict(zip([r.sop_instance_uid for r, _ in samples_rows],
                                                       np.round(samp_probe[c], 4).tolist()))}
    p0 = np.array(rs_probe["as_is"])
    rel = np.array(rs_probe["rel_pos"])
    subs = np.array(rs_probe["subtypes"])
    probes["rsna_series_by_subtype"] = {}
    for ab in ABBR.values():
        m = np.array([ab in t.split("+") for t in subs])
        if m.any():
            probes["rsna_series_by_subtype"][ab] = {
                c: {"n": int(m.sum()), "median_p": round(float(np.median(np.array(rs_probe[c])[m])), 4),
                    "sensitivity_at_thr": round(float((np.array(rs_probe[c])[m] >= thr).mean()), 4)} for c in conds}
    fp = (y_rs == 0) & (p0 >= thr)
    probes["rsna_series_false_positives_as_is"] = {
        "n": int(fp.sum()), "of_negatives": int((y_rs == 0).sum()),
        "median_relative_position": round(float(np.median(rel[fp])), 3) if fp.any() else None,
        "share_in_lowest_third": round(float((rel[fp] < 1 / 3).mean()), 3) if fp.any() else None,
        "share_of_all_negatives_in_lowest_third": round(float((rel[y_rs == 0] < 1 / 3).mean()), 3),
        "share_in_top_15_percent": round(float((rel[fp] > 0.85).mean()), 3) if fp.any() else None,
        "share_of_all_negatives_in_top_15_percent": round(float((rel[y_rs == 0] > 0.85).mean()), 3),
        "note": "relative position 0 = most inferior slice of the series, 1 = most superior"}
    has_head = np.array(rs_probe["has_head"])
    blank = model.p_any([np.full((512, 512), -1024.0, np.float32), np.zeros((512, 512), np.float32)])
    ys = np.array([scan_y[s] for s in series_ids])
    ps = np.array([p0[(ser == s) & has_head].max() for s in series_ids])
    probes["slices_without_head"] = {
        "definition": "rsna-series slices where head_mask() finds nothing thicker than 1/64 of the image (above the "
                      "vertex: table and headrest only)",
        "n": int((~has_head).sum()), "n_series": len(set(ser[~has_head])),
        "median_p_any": round(float(np.median(p0[~has_head])), 4) if (~has_head).any() else None,
        "n_at_or_above_thr": int((p0[~has_head] >= thr).sum()),
        "p_any_all_air_image": round(float(blank[0]), 4), "p_any_uniform_0_hu_image": round(float(blank[1]), 4),
        "scan_level_without_them": probe_summary(ys, ps, thr),
    }
    yc = np.array(ct_probe["y"])
    for c in ("as_is", "zoomed_out_to_rsna_fov"):
        probes["ctich_slices"][c] = probe_summary(yc, np.array(ct_probe[c]), thr)
    probes["ctich_slices"]["note"] = ("training data of the final model (in-sample): all 318 positive slices and "
                                      f"{int((yc == 0).sum())} random negatives")
    pn = np.array([r["p_any"] for r in per["hu-slices"]])
    pj = np.array([r["p_any_jpg_twin"] for r in per["hu-slices"]])
    probes["hu_slices_vs_jpg_twin"] = {
        "n": len(pn), "median_p_native_hu": round(float(np.median(pn)), 4),
        "median_p_jpg_twin": round(float(np.median(pj)), 4),
        "detected_native_hu": int((pn >= thr).sum()), "detected_jpg_twin": int((pj >= thr).sum()),
        "median_head_extent_native": round(float(np.median([r["head_extent_fraction"] for r in per["hu-slices"]])), 4),
    }
    note("probes done")

    # ---- figures
    import matplotlib.pyplot as plt

    grid_rows: list[dict[str, Any]] = []
    for (gp, gs, what) in ct_grid:
        hu = ct_grid_hu[(gp, gs)]
        lrow = ct_lab[(ct_lab.patient == gp) & (ct_lab.slice == gs)].iloc[0]
        grid_rows.append({"source": "CT-ICH", "id": f"{gp:03d}/{gs:03d}", "label": label_text(lrow), "hu": hu,
                          "p": float(model.p_any([hu])[0]), "spacing": None, "note": "training slice"})
    for row, s in samples_rows:
        if int(row.any) == 1:
            grid_rows.append({"source": "rsna-samples", "id": row.sop_instance_uid, "label": label_text(row),
                              "hu": s.hu[0], "p": float(model.p_any([s.hu[0]])[0]), "spacing": s.spacing_mm[1],
                              "note": ""})
    for iid, (hu, row, sp) in grid_series_hu.items():
        n_all = int((series_lab.series_uid == row.series_uid).sum())
        grid_rows.append({"source": "rsna-series", "id": f"{row.series_uid}/{iid}", "label": label_text(row),
                          "hu": hu, "p": float(model.p_any([hu])[0]), "spacing": sp,
                          "note": f"slice {int(row.slice_index)} of {n_all}"})
    for top in (False, True):
        cand = sorted((r for r in fp_rows if r[1] == top), key=lambda r: -r[0])
        if cand:
            _, _, hu, row, sp = cand[0]
            n_all = int((series_lab.series_uid == row.series_uid).sum())
            grid_rows.append({"source": "rsna-series", "id": f"{row.series_uid}/{row.image_id}", "label": "none",
                              "hu": hu, "p": float(model.p_any([hu])[0]), "spacing": sp,
                              "note": f"slice {int(row.slice_index)} of {n_all}, "
                                      + ("top 15 % of the series" if top else "highest-P negative below the top 15 %")})
    size = model.cfg.image_size
    chans = list(model.cfg.windows.items())
    ncol = 2 * len(chans)
    cell, title_h, header = 1.9, 0.3, 1.05
    fig_h = len(grid_rows) * (cell + title_h) + header
    fig, axes = plt.subplots(len(grid_rows), ncol, figsize=(cell * ncol + 0.2, fig_h), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - header / fig_h, bottom=0.003, hspace=title_h / cell,
                        wspace=0.03)
    for i, gr in enumerate(grid_rows):
        x128 = model.inputs(gr["hu"][None])[0]
        x256 = model.inputs(gr["hu"][None], 256)[0]
        head = head_mask(gr["hu"])
        if head.any():
            r0, r1, c0, c1 = bbox(head)
            ext = max(r1 - r0, c1 - c0) / max(gr["hu"].shape)
        else:
            ext = 0.0
        gr["head_extent_fraction"] = float(ext)
        for j in range(ncol):
            ax = axes[i, j]
            img = (x128 if j < len(chans) else x256)[j % len(chans)]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                name, (lv, wd) = chans[j % len(chans)]
                ax.set_xlabel("")
                ax.text(0.5, 1.18, f"{name} L{lv:g}/W{wd:g}\n{size if j < len(chans) else 256} px",
                        transform=ax.transAxes, ha="center", va="bottom", fontsize=9, fontweight="bold")
        if gr["label"] == "none":
            verdict = "FALSE POSITIVE" if gr["p"] >= thr else "true negative"
        else:
            verdict = "detected" if gr["p"] >= thr else "MISSED"
        sp = f", {gr['spacing']:.3f} mm/px" if gr["spacing"] else ""
        head_txt = f"head = {ext:.2f} of image side" if ext > 0 else "no head in the slice"
        axes[i, 0].set_title(f"{gr['source']} {gr['id']}  [{gr['label']}]   P(any) = {gr['p']:.3f} {verdict}"
                             f"   {head_txt}{sp}" + (f"  ({gr['note']})" if gr["note"] else ""),
                             loc="left", fontsize=9.5, pad=3,
                             color="tab:blue" if gr["source"] == "CT-ICH" else "tab:red")
    fig.suptitle(f"What {Path(args.model).name} sees: its 3 input windows at {size} px (left) and 256 px (right); "
                 f"threshold P(any) >= {thr:.3f}\nblue = CT-ICH (HU rebuilt from JPG; the model's training data), "
                 "red = real RSNA DICOM", fontsize=10.5, y=1 - 0.08 / fig_h, va="top")
    fig.savefig(out / "domain_inputs.png", dpi=args.dpi)
    plt.close(fig)

    fig = plt.figure(figsize=(17, 13.5))
    gs_ = fig.add_gridspec(3, 4, hspace=0.42, wspace=0.28, top=0.94, bottom=0.05)
    ax = fig.add_subplot(gs_[0, :2])
    centres = (Accumulator.HU_BINS[:-1] + Accumulator.HU_BINS[1:]) / 2
    for d in DOMAINS:
        h = acc.hu[d] / max(1.0, acc.hu[d].sum())
        ax.plot(centres, h, color=DOMAIN_COLOR[d], lw=1.6,
                label=f"{DOMAIN_LABEL[d]}: median {summarise(per[d])['brain_median_hu']['median']:.1f} HU")
    ax.set_xlabel("HU (intracranial pixels in [-20, 120]; dithered by each domain's quantisation step)")
    ax.set_ylabel("fraction of pixels per 1 HU")
    ax.set_title("(a) brain-tissue HU")
    ax.legend(fontsize=8)
    for k, name in [(2, "head_extent_fraction"), (3, "noise_hu_3x3_model_input")]:
        ax = fig.add_subplot(gs_[0, k])
        for j, d in enumerate(DOMAINS):
            v = np.array([r[name] for r in per[d]], float)
            ax.scatter(j + rng.uniform(-0.15, 0.15, len(v)), v, s=12, color=DOMAIN_COLOR[d], alpha=0.7)
            ax.hlines(np.nanmedian(v), j - 0.3, j + 0.3, color="k", lw=2)
        ax.set_xticks(range(len(DOMAINS)))
        ax.set_xticklabels(["CT-ICH\nJPG", "CT-ICH\norig HU", "rsna-\nseries", "rsna-\nsamples"], fontsize=8.5)
        ax.set_title("(b) head extent / image side (field of view)" if k == 2
                     else f"(c) noise the model sees: local 3x3 SD,\nbrain channel at {size} px (HU)", fontsize=10)
        ax.grid(alpha=0.3)
    for c, (name, (lv, wd)) in enumerate(chans):
        ax = fig.add_subplot(gs_[1, c])
        cc = (Accumulator.CH_BINS[:-1] + Accumulator.CH_BINS[1:]) / 2
        for d in DOMAINS:
            h = acc.ch[d][c] / max(1.0, acc.ch[d][c].sum())
            m = summarise(per[d])["channel_mean_128"]["median"][c]
            ax.plot(cc, h, color=DOMAIN_COLOR[d], lw=1.5, label=f"{d}: image mean {m:.3f}")
        ax.set_yscale("log")
        ax.set_xlabel(f"channel value, pixels inside the head ({size} px input)", fontsize=9)
        ax.set_ylabel("fraction of head pixels (log)", fontsize=9)
        ax.set_title(f"({'def'[c]}) input channel {c}: {name} L{lv:g}/W{wd:g}", fontsize=10)
        ax.legend(fontsize=7.5)
    ax = fig.add_subplot(gs_[1, 3])
    ax.axis("off")
    S = {d: summarise(per[d]) for d in DOMAINS}

    def med(d: str, k: str, f: str = "{:.2f}") -> str:
        v = S[d][k]
        return "n/a" if v is None else f.format(v["median"])

    rows = [("head extent / side", "head_extent_fraction", "{:.2f}"),
            ("head area / image", "head_area_fraction", "{:.2f}"),
            ("head px in 128 input", "head_px_in_model_input", "{:.0f}"),
            ("pixel spacing mm", "pixel_spacing_mm", "{:.3f}"),
            ("noise HU native 7x7", "noise_hu_7x7_native", "{:.1f}"),
            ("noise HU model 3x3", "noise_hu_3x3_model_input", "{:.1f}"),
            ("distinct HU 0..80", "distinct_hu_values_0_80", "{:.0f}"),
            ("brain median HU", "brain_median_hu", "{:.1f}"),
            ("P(any), this slice", "p_any", "{:.3f}")]
    txt = "(g) medians" + " " * 13 + "CT-ICH   origHU   series  samples\n"
    for lab_, k, f in rows:
        txt += f"{lab_:<22}" + " ".join(f"{med(d, k, f):>8}" for d in DOMAINS) + "\n"
    ax.text(0.0, 1.0, txt, family="monospace", fontsize=8.2, va="top")
    # probes
    ax = fig.add_subplot(gs_[2, :3])
    groups = [("rsna-series\n" + cond_label[c], np.array(rs_probe[c]), y_rs) for c in conds]
    groups += [("CT-ICH (train)\nas is", np.array(ct_probe["as_is"]), yc),
               ("CT-ICH (train)\nzoomed out to\nRSNA FOV", np.array(ct_probe["zoomed_out_to_rsna_fov"]), yc)]
    for j, (name, p, y) in enumerate(groups):
        for side_, yy, col in ((-0.18, 0, "0.5"), (0.18, 1, "tab:red")):
            v = p[y == yy]
            ax.scatter(j + side_ + rng.uniform(-0.1, 0.1, len(v)), v, s=6, color=col, alpha=0.45)
            ax.hlines(np.median(v), j + side_ - 0.14, j + side_ + 0.14, color="k", lw=2)
        a = auc(y, p)
        ax.text(j, 1.3, f"AUC {a:.2f}\nsens {(p[y == 1] >= thr).mean():.2f}", ha="center", fontsize=8)
    ax.axhline(thr, color="k", ls="--", lw=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], fontsize=7.5)
    ax.set_yscale("log")
    ax.set_ylim(3e-3, 3.5)
    ax.set_ylabel("P(any), slice (log)")
    ax.set_title("(h) probes: the same model on altered inputs (grey = negative slices, red = hemorrhage slices; "
                 "dashed = threshold;\nAUC / sensitivity at the threshold per group; CT-ICH groups are the model's "
                 "training slices: 318 positive + 318 random negative)", fontsize=10)
    ax = fig.add_subplot(gs_[2, 3])
    ax.scatter(pj, pn, color="tab:cyan", edgecolor="k", s=25)
    ax.plot([1e-3, 1], [1e-3, 1], color="k", lw=0.8)
    ax.axhline(thr, color="k", ls="--", lw=0.8)
    ax.axvline(thr, color="k", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(3e-3, 1.2)
    ax.set_ylim(3e-3, 1.2)
    ax.set_xlabel("P(any) on the CT-ICH JPG slice (HU rebuilt)")
    ax.set_ylabel("P(any) on the same slice, original HU")
    ax.set_title("(i) 26 CT-ICH bleed slices:\noriginal HU vs JPG rebuild", fontsize=10)
    fig.suptitle(f"Domain gap of {Path(args.model).name}: CT-ICH vs RSNA DICOM (one slice per scan unless noted)",
                 fontsize=12, y=0.995)
    fig.savefig(out / "domain_histograms.png", dpi=args.dpi, bbox_inches="tight")
    plt.close(fig)

    # ---- JSON
    result = {
        "command": "NO_ALBUMENTATIONS_UPDATE=1 nice -n 19 python benchmarks/domain_gap.py "
                   + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, torch threads "
                   f"{args.threads}",
        "runtime_s": round(time.time() - t_start, 1),
        "model": {"path": os.path.relpath(args.model, ROOT) if Path(args.model).is_absolute() else args.model,
                  "name": model.predictor.identity.name,
         "version": model.predictor.identity.version, "sha256": model.predictor.identity.sha256,
         "preprocess": model.cfg.to_dict(), "threshold_any": thr},
        "definitions": {
            "head": "largest connected component of HU > -500 after a binary opening of radius 1/64 of the image "
                    "side (removes the table and headrest), holes filled",
            "head_extent_fraction": "larger side of the head's bounding box / image side (square images)",
            "brain": "inside the closed skull (HU > 250), eroded 2 px, HU in [-20, 120]",
            "noise_hu_7x7_native": "median over brain pixels in [0, 80] HU (eroded 3 px) of the 7x7 local SD of HU at "
                                   "native resolution (pixel sizes differ between domains)",
            "noise_hu_3x3_model_input": "median 3x3 local SD of the brain channel (L40/W80, x80 HU) of the model's "
                                        "input, over brain pixels",
            "distinct_hu_values_0_80": "number of distinct HU values among brain pixels in [0, 80] HU",
            "channel_mean_128": "mean of each input channel over the whole 128 px image (in [0, 1])",
            "channel_mean_head_128": "the same, inside the head",
            "p_any": "the model's slice P(any) for that slice",
        },
        "domains": {d: {"description": DOMAIN_LABEL[d], "summary": summarise(per[d]), "per_slice": per[d]}
                    for d in DOMAINS},
        "probes": probes,
        "grid_rows": [{k: v for k, v in gr.items() if k != "hu"} for gr in grid_rows],
        "rsna_series_per_slice": {
            "columns": ["series", "image_id", "slice_index", "relative_position", "any", "subtypes", "has_head",
                        *[f"p_{c}" for c in conds]],
            "rows": [[rs_probe["series"][i], rs_probe["image_id"][i], rs_probe["slice_index"][i],
                      rs_probe["rel_pos"][i],
                      int(rs_probe["y"][i]), rs_probe["subtypes"][i], rs_probe["has_head"][i],
                      *[round(float(rs_probe[c][i]), 4) for c in conds]] for i in range(len(rs_probe["y"]))]},
    }
    text = json.dumps(result, indent=1, default=float)
    text = re.sub(r"\[\s*([^\[\]{}\n]*(?:\n[^\[\]{}\n]*)*?)\s*\]",
                  lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text)  # scalar lists on one line
    (out / "domain_gap.json").write_text(text + "\n", encoding="utf-8")
    note(f"wrote {out / 'domain_inputs.png'}, {out / 'domain_histograms.png'}, {out / 'domain_gap.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
