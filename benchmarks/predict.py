"""Benchmark ``ichd predict``: end-to-end wall time against the model's forward pass alone, and peak memory.

Timing (after a small warm-up so one-off costs like kernel selection are not counted; end-to-end and forward
alternate ``--repeats`` times, default 3, and the ratio is of their medians)::

    python benchmarks/predict.py --model default --threads 2

* builds a 40-slice 512x512 DICOM study (synthetic head phantom, uncompressed) in a temporary folder, or uses
  ``--input PATH``;
* ``e2e``: :func:`ichd.inference.run.run_predict` with JSON output, Grad-CAM off (read + decode + preprocess +
  CNN [+ sequence] + JSON + atomic write);
* ``forward``: the model's forward pass alone (``embed_slices`` on the same preprocessed tensors, same batch
  size) — the ratio e2e / forward is the pipeline's overhead (target <= 1.5);
* the costs of the HTML report, of Grad-CAM (HTML with vs without heat maps) and of TTA.

Memory (``--memory N``): runs ``predict_series`` on a synthetic N-slice 512x512 series in a fresh subprocess
and reports its peak RSS (the input HU volume itself is N x 1 MiB of float32).

Prints one JSON object; ``--markdown`` also prints a table for docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def phantom(n: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """(n, size, size) float32 HU: air, skull ring, brain with noise, a small hyperdense blob on some slices."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    out = np.full((n, size, size), -1000.0, np.float32)
    for z in range(n):
        s = 0.6 + 0.3 * np.sin(np.pi * (z + 1) / (n + 1))
        sl = out[z]
        sl[r < s] = 1200.0
        brain = r < s - 0.06
        sl[brain] = 35.0 + rng.normal(0.0, 4.0, size=int(brain.sum())).astype(np.float32)
        if n // 3 <= z <= n // 2:
            sl[np.hypot(yy - size * 0.4, xx - size * 0.6) < size * 0.05] = 70.0
    return out


def write_dicom_study(folder: Path, n: int, size: int = 512) -> None:
    """Write an uncompressed n-slice CT series (int16 stored, intercept -1024) with valid UIDs and geometry."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    hu = phantom(n, size)
    study, series = generate_uid(), generate_uid()
    for z in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "BENCH", "Bench^Phantom"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = z + 1
        ds.ImagePositionPatient = [-128.0, -128.0, 5.0 * z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 5.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.round(hu[z] + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{z:04d}.dcm", enforce_file_format=True)


def load_predictor(model: str, device: str, batch_size: int, tmp: Path, size: int = 128) -> tuple[Any, str]:
    """The named model; when no bundled default exists yet, an untrained EfficientNet-Lite0 at ``size`` px (same
    compute as the shipped architecture at that size; probabilities meaningless)."""
    from ichd.errors import ModelError
    from ichd.inference.predictor import Predictor

    try:
        return Predictor.load(model, device=device, batch_size=batch_size), model
    except ModelError:
        if model != "default":
            raise
    from ichd.models import create_model
    from ichd.models.checkpoint import save_checkpoint
    from ichd.preprocessing.config import PreprocessConfig

    net = create_model("efficientnet_lite0", pretrained=True, input_size=size)
    path = save_checkpoint(tmp / "untrained.pt", net, preprocess=PreprocessConfig(image_size=size), half=True)
    return (Predictor.load(path, device=device, batch_size=batch_size),
            f"untrained efficientnet_lite0 @{size} px (no default bundle yet)")


def timed(fn) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_timing(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ichd.inference.embed import embed_slices
    from ichd.inference.run import PredictOptions, run_predict
    from ichd.io import read_ct
    from ichd.preprocessing.pipeline import preprocess_hu

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ichd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.input:
            study = Path(args.input)
        else:
            study = tmp / "study"
            write_dicom_study(study, args.slices)
        t_load, (predictor, model_name) = timed(lambda: load_predictor(args.model, args.device, args.batch_size, tmp,
                                                                         args.untrained_size))
        series = read_ct(study)[0]
        warm = read_ct(study)[0]
        warm.hu, warm.sop_instance_uids, warm.positions_mm = warm.hu[:2], warm.sop_instance_uids[:2], warm.positions_mm[:2]
        predictor.predict_series(warm)  # warm-up, not timed: first-call costs of torch,
        ev = predictor.explain(warm, predictor.predict_series(warm), at_least_one=True)  # Grad-CAM,
        from ichd.inference.report_html import render_html

        render_html(predictor.predict_series(warm), ev, model_info={})  # and matplotlib's import

        def e2e(name: str, formats: tuple[str, ...], *, gradcam: bool = False, tta: bool = False) -> float:
            opts = PredictOptions(out=tmp / name, formats=formats, gradcam=gradcam, tta=tta, device=args.device,
                                  batch_size=args.batch_size)
            seconds, res = timed(lambda: run_predict(study, opts, predictor=predictor))
            e2e.results[name] = res
            return seconds

        e2e.results = {}
        x = preprocess_hu(series.hu, predictor.preprocess)
        # end-to-end and forward alternate --repeats times; the ratio is of their medians (one pair alone moved
        # between 1.4x and 2.5x on a quiet 2-core machine: the forward pass's own time varies that much)
        e2e_runs, forward_runs = [], []
        for i in range(max(1, args.repeats)):
            e2e_runs.append(e2e(f"json{i}", ("json",)))
            forward_runs.append(timed(lambda: embed_slices(predictor.cnn, x, batch_size=args.batch_size,
                                                           device=predictor.device))[0])
        t_e2e, t_forward = statistics.median(e2e_runs), statistics.median(forward_runs)
        t_html = e2e("html", ("json", "html"))
        t_html_cam = e2e("html_cam", ("json", "html"), gradcam=True)
        t_tta = e2e("tta", ("json",), tta=True)
        n_flagged = len(e2e.results["html_cam"].results[0].result.get("flagged_slices", []))
        stages = e2e.results[f"json{len(e2e_runs) - 1}"].results[0].prediction.timing_s
        cam_stages = e2e.results["html_cam"].results[0].prediction.timing_s
        tta_stages = e2e.results["tta"].results[0].prediction.timing_s
        return {
            "machine": f"{platform.node()} {os.cpu_count()} CPU(s), torch threads {args.threads}, device {predictor.device}",
            "model": model_name,
            "slices": series.n_slices,
            "matrix": list(series.hu.shape[1:]),
            "model_load_s": round(t_load, 3),
            "repeats": len(e2e_runs),
            "e2e_json_s": round(t_e2e, 3),
            "forward_only_s": round(t_forward, 3),
            "ratio_e2e_over_forward": round(t_e2e / t_forward, 3),
            "e2e_json_runs_s": [round(t, 3) for t in e2e_runs],
            "forward_only_runs_s": [round(t, 3) for t in forward_runs],
            "e2e_stages_s": {k: round(v, 3) for k, v in stages.items()},
            "e2e_json_html_s": round(t_html, 3),
            "e2e_json_html_gradcam_s": round(t_html_cam, 3),
            "gradcam_cost_s": round(t_html_cam - t_html, 3),
            "gradcam_stage_s": round(cam_stages.get("gradcam", float("nan")), 3),
            "html_stage_s": round(cam_stages.get("html", float("nan")), 3),
            "gradcam_flagged_slices": n_flagged,
            "e2e_tta_s": round(t_tta, 3),
            "tta_cost_s": round(t_tta - t_e2e, 3),
            "cnn_stage_tta_s": round(tta_stages["cnn"], 3),
        }


def memory_child(n: int, batch_size: int, model: str, threads: int, size: int) -> None:
    """In a fresh process: peak RSS of predicting an n-slice 512x512 series (printed as JSON)."""
    import torch

    from ichd.types import CTSeries

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="ichd-bench-mem-") as tmp_name:
        predictor, model_name = load_predictor(model, "cpu", batch_size, Path(tmp_name), size)
        after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        hu = phantom(n)
        series = CTSeries(hu=hu, spacing_mm=(5.0, 0.5, 0.5), positions_mm=np.arange(n) * 5.0,
                          sop_instance_uids=[f"1.2.3.{i}" for i in range(n)], study_instance_uid="1.2.3",
                          series_instance_uid="1.2.4")
        with_volume = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t, pred = timed(lambda: predictor.predict_series(series))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"slices": n, "batch_size": batch_size, "model": model_name,
                      "volume_mib": round(hu.nbytes / 2**20, 1), "rss_after_model_load_mib": round(after_load, 1),
                      "rss_with_volume_mib": round(with_volume, 1), "peak_rss_mib": round(peak, 1),
                      "peak_minus_volume_and_model_mib": round(peak - with_volume, 1),
                      "predict_s": round(t, 2), "n_slices_out": int(pred.slice_probs.shape[0])}))


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--memory-child", str(args.memory), "--batch-size", str(args.batch_size),
           "--model", args.model, "--threads", str(args.threads), "--untrained-size", str(args.untrained_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(res: dict[str, Any]) -> str:
    rows = [
        ("model load (s)", res["model_load_s"]),
        (f"end-to-end, JSON, Grad-CAM off (s), median of {res['repeats']}",
         f"{res['e2e_json_s']} (runs {', '.join(map(str, res['e2e_json_runs_s']))})"),
        (f"forward pass alone, same tensors (s), median of {res['repeats']}",
         f"{res['forward_only_s']} (runs {', '.join(map(str, res['forward_only_runs_s']))})"),
        ("ratio end-to-end / forward (target <= 1.5)", res["ratio_e2e_over_forward"]),
        ("end-to-end + HTML, no Grad-CAM (s)", res["e2e_json_html_s"]),
        (f"end-to-end + HTML + Grad-CAM on {res['gradcam_flagged_slices']} flagged slices (s)",
         res["e2e_json_html_gradcam_s"]),
        ("Grad-CAM cost: difference of the two runs (s)", res["gradcam_cost_s"]),
        ("Grad-CAM stage inside the run (s)", res["gradcam_stage_s"]),
        ("HTML rendering stage (s)", res["html_stage_s"]),
        ("end-to-end with TTA (4 views) (s)", res["e2e_tta_s"]),
        ("TTA cost: difference of the runs (s)", res["tta_cost_s"]),
        ("CNN stage with TTA vs without (s)", f"{res['cnn_stage_tta_s']} vs {res['e2e_stages_s']['cnn']}"),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines.append(f"\nstages of the end-to-end run (s): {res['e2e_stages_s']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="bundled model name, bundle folder or checkpoint")
    ap.add_argument("--input", default=None, help="use this study instead of the synthetic 40-slice one")
    ap.add_argument("--slices", type=int, default=40, help="slices of the synthetic study")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=3,
                    help="end-to-end (JSON) and forward-pass runs, alternated; the ratio is of their medians")
    ap.add_argument("--untrained-size", type=int, default=128,
                    help="input size of the untrained stand-in used when there is no default bundle")
    ap.add_argument("--memory", type=int, default=0, help="also measure peak RSS for an N-slice series")
    ap.add_argument("--memory-only", action="store_true", help="skip the timing part")
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.batch_size, args.model, args.threads, args.untrained_size)
        return
    result: dict[str, Any] = {}
    if not args.memory_only:
        result["timing"] = run_timing(args)
    if args.memory:
        result["memory"] = run_memory(args)
    print(json.dumps(result, indent=2))
    if args.markdown and "timing" in result:
        print(markdown(result["timing"]))


if __name__ == "__main__":
    main()
