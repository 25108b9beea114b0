"""Small untrained models for tests of the inference stage (``ichd predict``): a CNN checkpoint, a sequence
checkpoint and a model bundle, built in seconds on the CPU. Their outputs are meaningless but deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ichd.constants import LABELS

#: Small input size keeps the CPU tests fast (EfficientNet-Lite0 needs a multiple of 32).
TEST_IMAGE_SIZE = 64


def make_cnn_checkpoint(path: Path, *, image_size: int = TEST_IMAGE_SIZE) -> Path:
    """An untrained EfficientNet-Lite0 checkpoint: the offline ImageNet backbone (so embeddings vary with the
    image; a random-init backbone gives ~1e-9 features) and a seeded random head, saved in fp16."""
    import torch

    from ichd.models import create_model
    from ichd.models.checkpoint import save_checkpoint
    from ichd.preprocessing.config import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", pretrained=True, input_size=image_size)
    torch.nn.init.normal_(model.classifier.weight, std=0.05)
    save_checkpoint(path, model, preprocess=PreprocessConfig(image_size=image_size), half=True)
    return path


def make_seq_checkpoint(path: Path, cnn_checkpoint: Path, *, thresholds: float = 0.4) -> Path:
    """A random 1-layer BiLSTM over PCA-8 features of ``cnn_checkpoint``, embedding that CNN and thresholds."""
    import torch

    from ichd.models import create_model
    from ichd.models.checkpoint import read_checkpoint, save_checkpoint
    from ichd.models.feature_selection import FeatureSelector, SelectorConfig
    from ichd.models.sequence import sequence_checkpoint_extra

    torch.manual_seed(1)
    rng = np.random.default_rng(0)
    selector = FeatureSelector(SelectorConfig(method="pca", k=8)).fit(rng.normal(size=(40, 1280)).astype(np.float32))
    model = create_model("seq_lstm", feature_dim=8, hidden=16, layers=1, dropout=0.0)
    extra = sequence_checkpoint_extra(selector, scan_rule="max", cnn_checkpoint=read_checkpoint(cnn_checkpoint))
    extra["thresholds"] = dict.fromkeys(LABELS, thresholds)
    save_checkpoint(path, model, extra=extra)
    return path


def make_bundle(out: Path, cnn_checkpoint: Path, *, name: str = "test-model", threshold: float = 0.5) -> Path:
    """A CNN-only model bundle around ``cnn_checkpoint`` with one threshold for every label."""
    from ichd.models.bundled import write_bundle

    write_bundle(out, name=name, version="0.0.1", files={"cnn": cnn_checkpoint},
                 thresholds=dict.fromkeys(LABELS, threshold), model_card="# test model\n\nRandom weights.\n",
                 extra={"description": "untrained weights for tests", "scan_rule": "max",
                        "license": "Apache-2.0 (test fixture)"})
    return out


def single_thread_torch():
    """Generator for an autouse fixture: torch on one CPU thread while a test module runs (on a shared 2-core
    machine, torch's default of one thread per core oversubscribes the CPU and runs several times slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_training_data(root: Path, patients: dict[int, int], *, size: int = TEST_IMAGE_SIZE,
                       seed: int = 0) -> tuple[Path, Path]:
    """A tiny CT-ICH-layout training set: random JPG slices cached at ``size`` px (``root/cache``) and an ichd
    labels CSV with random subtypes, "any" set from them (``root/labels.csv``). Returns ``(cache, labels)``."""
    import pandas as pd

    from ichd.preprocessing.cache import build_cache
    from ichd.preprocessing.config import PreprocessConfig
    from ichd.testing.factories import write_ctich_tree

    root = Path(root)
    write_ctich_tree(root / "ctich", patients, size=64)
    build_cache([root / "ctich"], root / "cache", PreprocessConfig(image_size=size), workers=0)
    rng = np.random.default_rng(seed)
    rows = []
    for p, n in patients.items():
        for s in range(1, n + 1):
            y = (rng.random(6) < 0.4).astype(int)
            y[0] = int(y[1:].any())
            rows.append({"slice_id": f"ctich-{p:03d}-{s:03d}", "scan_id": f"ctich-{p:03d}",
                         "patient_id": f"ctich-{p:03d}", "slice_index": s - 1, **dict(zip(LABELS, y))})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "cache", root / "labels.csv"
