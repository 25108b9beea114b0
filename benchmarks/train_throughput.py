"""Training throughput: the real data pipeline vs. the same training step on random tensors.

Both sides run the same :meth:`ichd.training.trainer.Trainer.train_epoch` (forward, weighted BCE, backward,
Adam step, channels_last) on the same model, batch size and thread count, in the same process. The "real" side
draws batches from the training DataLoader of ``ichd train cnn`` (memory-mapped uint8 cache -> float ->
augmentation -> collate, with the config's worker count); the "synthetic" side feeds pre-built random
tensors, so its rate is the compute-only ceiling. ratio = real / synthetic; the target is >= 0.85 (data loading
is not the bottleneck). Rounds alternate which side runs first (ABBA) to cancel drift from other load on the
machine.

    python benchmarks/train_throughput.py --config configs/cnn_ctich.yaml --batches 12 --rounds 3

Writes a JSON summary (``--out``, default benchmarks/results/train_throughput.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/cnn_ctich.yaml", help="training config YAML")
    ap.add_argument("--batches", type=int, default=12, help="timed batches per round and side")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches before each side's first round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating synthetic/real rounds")
    ap.add_argument("--workers", type=int, default=None, help="override data.num_workers")
    ap.add_argument("--threads", type=int, default=None, help="override torch threads (default: config)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config override KEY=VALUE (dotted key, YAML value), e.g. data.cache=cache/ctich-256")
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json", help="JSON output path")
    args = ap.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

    import torch
    import yaml

    from ichd.data.folds import patient_folds, split_fold
    from ichd.models import create_model
    from ichd.training.cnn import load_training_table, make_loaders
    from ichd.training.config import load_cnn_config
    from ichd.training.losses import WeightedBCEWithLogits
    from ichd.training.trainer import Trainer
    from ichd.utils.device import resolve_device
    from ichd.utils.files import atomic_write_text
    from ichd.utils.progress import set_progress_enabled

    overrides = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.overrides)}
    if args.workers is not None:
        overrides["data.num_workers"] = args.workers
    cfg = load_cnn_config(args.config, overrides)
    threads = args.threads or cfg.threads
    if threads:
        torch.set_num_threads(threads)
    set_progress_enabled(False)
    device = resolve_device(cfg.device)
    cache, labels = load_training_table(cfg)
    folds = patient_folds(labels, cfg.data.folds, cfg.data.fold_seed)
    train_df, _ = split_fold(labels, folds, 0)
    loader, _, generator, _ = make_loaders(cfg, cache, train_df, None, cfg.seed)
    size = int(cache.image_size)
    model = create_model(cfg.model.name, pretrained=cfg.model.pretrained, input_size=size)
    trainer = Trainer(model, WeightedBCEWithLogits(), torch.optim.Adam(model.parameters(), lr=1e-5),
                      lr_per_epoch=[1e-5], device=device, channels_last=cfg.optim.channels_last, seed=cfg.seed,
                      loader_generator=generator, log_every=10**9, desc="throughput")
    bs = cfg.optim.batch_size
    g = torch.Generator().manual_seed(0)
    synthetic = [{"image": torch.rand(bs, 3, size, size, generator=g),
                  "target": (torch.rand(bs, 6, generator=g) < 0.2).float()} for _ in range(4)]

    real_iter = iter(loader)

    def real_batches(n: int):
        nonlocal real_iter
        for _ in range(n):
            try:
                yield next(real_iter)
            except StopIteration:
                real_iter = iter(loader)
                yield next(real_iter)

    def synthetic_batches(n: int):
        return itertools.islice(itertools.cycle(synthetic), n)

    trainer.train_epoch(list(synthetic_batches(args.warmup)), 0)
    trainer.train_epoch(real_batches(args.warmup), 0)
    rows = []
    for r in range(args.rounds):
        # Alternate which side goes first (ABBA) so a trend in the machine's load does not favour one side.
        if r % 2 == 0:
            syn = trainer.train_epoch(synthetic_batches(args.batches), 0)["train/img_per_s"]
            real = trainer.train_epoch(real_batches(args.batches), 0)["train/img_per_s"]
        else:
            real = trainer.train_epoch(real_batches(args.batches), 0)["train/img_per_s"]
            syn = trainer.train_epoch(synthetic_batches(args.batches), 0)["train/img_per_s"]
        rows.append({"round": r, "synthetic_img_per_s": syn, "real_img_per_s": real, "ratio": real / syn})
        print(f"round {r}: synthetic {syn:.2f} img/s, real pipeline {real:.2f} img/s, ratio {real / syn:.3f}",
              flush=True)
    syn_total = statistics.mean(x["synthetic_img_per_s"] for x in rows)
    real_total = statistics.mean(x["real_img_per_s"] for x in rows)
    doc = {"config": args.config, "model": cfg.model.name, "image_size": size, "batch_size": bs,
           "num_workers": cfg.data.num_workers, "threads": torch.get_num_threads(), "device": str(device),
           "batches_per_round": args.batches, "rounds": rows, "synthetic_img_per_s": syn_total,
           "real_img_per_s": real_total, "ratio": real_total / syn_total,
           "median_round_ratio": statistics.median(x["ratio"] for x in rows),
           "machine": f"{platform.node()} {os.cpu_count()} CPUs", "load_avg": os.getloadavg(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(Path(args.out), json.dumps(doc, indent=2))
    print(f"mean: synthetic {syn_total:.2f} img/s, real {real_total:.2f} img/s, ratio {doc['ratio']:.3f} "
          f"(target >= 0.85); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
