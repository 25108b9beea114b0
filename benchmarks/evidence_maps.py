"""Which evidence map points at the bleed (issue 22 item 1): map variants on the 26 masked real-HU slices.

Every map is out of sample for the slice's patient:

* Grad-CAM variants of the shipped family's slice model: the fold model of a frozen-encoder run that held the
  patient out (``RUN/r0/fold{k}/cnn.pt``, folds in ``RUN/r0/folds.csv``): Grad-CAM and Grad-CAM++ on the
  registry layer (the 1280-channel head convolution, 8 x 8 at 256 px), Grad-CAM on block 10 (16 x 16),
  flip-averaged Grad-CAM (the map of the mirrored slice mirrored back, averaged with the map), and Grad-CAM kept
  to the intracranial space (inside the skull ring; the head mask minus ~12 px of scalp and bone where the ring
  is open);
* the lesion map (``ichd train lesion-map``): the leave-one-patient-out maps of ``LESION/lopo_maps.npz``, each
  from a head fitted without the slice's patient;
* a control that uses no model: the HU ramp 40 -> 70 HU inside the head (blood is 50-90 HU), to show what an
  intensity rule alone does.

Scores per map: the pointing game (the map's peak within 5 px of the mask), the fraction of the map's energy in
the mask, with patient-bootstrap 95 % CIs (``ichd.explain.localization``). The sanity check of Adebayo et al.
(2018) for the lesion map: the SSIM between the map and the map of the same model with its lesion head
re-initialised, and with the encoder re-initialised as well (low SSIM: the map depends on what was learned).
All maps are kept to the head, as every overlay is.

    python benchmarks/evidence_maps.py --run runs/frozen_default --lesion runs/lesion_map \\
        --out benchmarks/results/evidence_maps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

VARIANTS = ("gradcam", "gradcam++", "gradcam_block10", "gradcam_flip", "gradcam_intracranial", "lesion_map",
            "hu_prior_control")


def intracranial(hu: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Inside the skull ring (filled bone >= 150 HU minus the bone); where the ring is open (skull base), the head
    minus 12 px from its edge and minus bone."""
    from scipy.ndimage import distance_transform_edt

    from ichd.preprocessing.head_mask import fill_holes

    bone = hu >= 150
    inner = fill_holes(bone) & ~bone
    alt = head & ~bone & (distance_transform_edt(head) > 12)
    return inner if inner.sum() > 0.3 * alt.sum() else alt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/frozen_default", help="frozen run with r0/fold{k}/cnn.pt, r0/folds.csv")
    ap.add_argument("--lesion", default="runs/lesion_map", help="ichd train lesion-map run (lopo_maps.npz, cnn.pt)")
    ap.add_argument("--out", default="benchmarks/results/evidence_maps")
    ap.add_argument("--tolerance", type=int, default=5)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--examples", default="049_21,071_14,094_24,051_31",
                    help="comma-separated slices drawn as example PNGs (lesion map and Grad-CAM, mask outline)")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch
    import torch.nn.functional as F

    from ichd.explain.gradcam import GradCAM
    from ichd.explain.lesion import LesionMap
    from ichd.explain.localization import (
        bootstrap_means,
        energy_fraction,
        map_ssim,
        pointing_game,
        read_masked_slices,
    )
    from ichd.explain.pipeline import map_to_image
    from ichd.inference.predictor import Predictor
    from ichd.models.checkpoint import load_checkpoint
    from ichd.paths import data_dir
    from ichd.preprocessing.head_mask import head_mask
    from ichd.utils.files import atomic_write_text

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    run, lesion_run, out = Path(args.run), Path(args.lesion), Path(args.out)
    slices = read_masked_slices(data_dir() / "hu-slices")
    folds = pd.read_csv(run / "r0" / "folds.csv")
    fold_of = dict(zip(folds["patient_id"].astype(str), folds["fold"].astype(int), strict=True))
    lopo = np.load(lesion_run / "lopo_maps.npz")
    lopo_maps = dict(zip(lopo["names"].tolist(), lopo["maps"], strict=True))
    lesion_model = load_checkpoint(lesion_run / "cnn.pt").model
    predictors: dict[int, Predictor] = {}
    examples = {n.strip() for n in args.examples.split(",") if n.strip()}
    rows, sanity = [], []
    for s in slices:
        k = fold_of[s.patient_id]
        if k not in predictors:
            predictors[k] = Predictor.load(run / "r0" / f"fold{k}" / "cnn.pt")
        pr = predictors[k]
        x = pr.model_inputs(s.series)
        size = tuple(x.shape[-2:])
        head = head_mask(s.hu)
        ic = intracranial(s.hu, head)

        def to_image(m: np.ndarray, shape: tuple[int, int] = s.mask.shape, head: np.ndarray = head) -> np.ndarray:
            return map_to_image(np.asarray(m, dtype=np.float32), shape) * head

        g = GradCAM(pr.cnn)(x, "any")[0]
        flip = GradCAM(pr.cnn)(x.flip(-1), "any")[0][:, ::-1]
        maps = {
            "gradcam": to_image(g),
            "gradcam++": to_image(GradCAM(pr.cnn, method="gradcam++")(x, "any")[0]),
            "gradcam_block10": to_image(GradCAM(pr.cnn, "encoders.0.net._blocks.10")(x, "any")[0]),
            "gradcam_flip": to_image((g + flip) / 2),
            "gradcam_intracranial": to_image(g) * ic,
            "hu_prior_control": np.clip((s.hu - 40.0) / 30.0, 0, 1) * (s.hu < 100) * head,
        }
        lo = torch.from_numpy(lopo_maps[s.name])[None, None]
        maps["lesion_map"] = to_image(F.interpolate(lo, size=size, mode="bilinear", align_corners=False)[0, 0].numpy())
        if s.name in examples:
            from ichd.explain.overlay import overlay_figure, save_figure

            for name, title in (("lesion_map", "Lesion map"), ("gradcam", "Grad-CAM")):
                fig = overlay_figure(s.hu, maps[name] / max(float(maps[name].max()), 1e-12), class_name="any",
                                     probability=None, map_name=title,
                                     subtitle=f"{s.name} ({s.patient_id}), out of sample; cyan: hemorrhage mask")
                for ax in fig.axes[:2]:
                    ax.contour(s.mask, levels=[0.5], colors="cyan", linewidths=0.8)
                save_figure(fig, out / "examples" / f"{s.name}_{name}.png")
        for name in VARIANTS:
            rows.append({"slice": s.name, "patient_id": s.patient_id, "variant": name,
                         "hit": int(pointing_game(maps[name], s.mask, tolerance_px=args.tolerance)),
                         "energy_fraction": round(energy_fraction(maps[name], s.mask), 4)})
        # sanity check on the shipped lesion head (trained on every patient): re-initialised head / + encoder
        real = to_image(LesionMap(lesion_model)(x, "any")[0])
        for label, scope in (("lesion head re-initialised", "head"), ("head + encoder re-initialised", "all")):
            torch.manual_seed(0)
            rnd = load_checkpoint(lesion_run / "cnn.pt").model
            with torch.no_grad():
                rnd.lesion_head.score.weight.normal_(0, 1.0 / np.sqrt(rnd.lesion_head.score.weight.shape[1]))
                if scope == "all":
                    for mod in rnd.encoders.modules():
                        if isinstance(mod, torch.nn.Conv2d):
                            torch.nn.init.kaiming_normal_(mod.weight)
            rm = to_image(LesionMap(rnd)(x, "any")[0])
            sanity.append({"slice": s.name, "patient_id": s.patient_id, "randomization": label,
                           "ssim": round(map_ssim(real, rm), 4),
                           "hit": int(pointing_game(rm, s.mask, tolerance_px=args.tolerance))})
        print(s.name, flush=True)
    df, sdf = pd.DataFrame(rows), pd.DataFrame(sanity)
    summary: dict[str, object] = {"variants": {}, "sanity": {}}
    for name in VARIANTS:
        sub = df[df["variant"] == name]
        est = bootstrap_means({k: sub[k].to_numpy() for k in ("hit", "energy_fraction")}, sub["patient_id"].tolist(),
                              n_boot=args.n_boot, seed=0)
        summary["variants"][name] = {k: e.to_dict() for k, e in est.items()}  # type: ignore[index]
    for label in sdf["randomization"].unique():
        sub = sdf[sdf["randomization"] == label]
        est = bootstrap_means({k: sub[k].to_numpy() for k in ("ssim", "hit")}, sub["patient_id"].tolist(),
                              n_boot=args.n_boot, seed=0)
        summary["sanity"][label] = {k: e.to_dict() for k, e in est.items()}  # type: ignore[index]
    wall = time.perf_counter() - t0
    summary["meta"] = {"command": "python benchmarks/evidence_maps.py " + " ".join(argv or sys.argv[1:]),
                       "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                       "machine": f"{platform.machine()} {os.cpu_count()}-core, torch threads {args.threads}",
                       "load_1min": round(os.getloadavg()[0], 1), "wall_s": round(wall, 1),
                       "slices": len(slices), "patients": len({s.patient_id for s in slices}),
                       "tolerance_px": args.tolerance, "run": str(run), "lesion_run": str(lesion_run)}
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "per_slice.csv", index=False)
    sdf.to_csv(out / "sanity.csv", index=False)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")

    def ci(e: dict[str, float], pct: bool) -> str:
        f = (lambda v: f"{100 * v:.0f} %") if pct else (lambda v: f"{v:.2f}")
        return f"{f(e['mean'])} [{f(e['ci_low'])}, {f(e['ci_high'])}]"

    lines = ["| map | pointing game | energy in mask |", "|---|---|---|"]
    for name in VARIANTS:
        v = summary["variants"][name]  # type: ignore[index]
        lines.append(f"| {name} | {ci(v['hit'], True)} | {ci(v['energy_fraction'], False)} |")
    lines += ["", "| lesion map sanity check | SSIM to the real map | pointing game |", "|---|---|---|"]
    for label, v in summary["sanity"].items():  # type: ignore[union-attr]
        lines.append(f"| {label} | {ci(v['ssim'], False)} | {ci(v['hit'], True)} |")
    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.md", md)
    print(md)
    print(f"wall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
