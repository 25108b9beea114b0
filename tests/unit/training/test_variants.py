"""The training options the other seed papers need: progressive resizing, a step cap, binary "any" targets,
frozen layers, SGD, fixed folds from a file, mask-supervised auxiliary loss, test-time views for the OOF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ichd.constants import LABELS
from ichd.errors import ConfigError, InputError
from ichd.training.config import CnnTrainConfig, DataConfig, ModelConfig, OptimConfig
from ichd.training.losses import WeightedBCEWithLogits
from ichd.training.trainer import Trainer


class SizeSpy(nn.Module):
    """Records the side of every training input; a linear head on the pooled image."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.head = nn.Linear(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.sizes.append(int(x.shape[-1]))
        return self.head(x.mean(dim=(2, 3)))


def _loader(n: int = 16, size: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, size, size, generator=g), "target": (torch.rand(6, generator=g) > 0.7).float(),
              "slice_id": f"s{i}"} for i in range(n)]
    return DataLoader(items, batch_size=4)


def _trainer(model: nn.Module, lrs: list[float], **kw) -> Trainer:
    opt = torch.optim.Adam(model.parameters(), lr=lrs[0])
    return Trainer(model, WeightedBCEWithLogits(), opt, lr_per_epoch=lrs, device=torch.device("cpu"),
                   channels_last=False, **kw)


def test_progressive_resizing_schedule() -> None:
    model = SizeSpy()
    trainer = _trainer(model, [1e-2, 1e-2, 1e-3], image_sizes=[32, 32, 64])
    history = trainer.fit(_loader())
    assert model.sizes == [32] * 4 + [32] * 4 + [64] * 4  # 4 batches per epoch
    assert [h["lr"] for h in history] == [1e-2, 1e-2, 1e-3]
    preds = trainer.predict(_loader())  # prediction keeps the input size
    assert preds.probs.shape == (16, 6)
    with pytest.raises(ValueError, match="image_sizes"):
        _trainer(SizeSpy(), [1e-3], image_sizes=[32, 64])


def test_progressive_config_is_checked_against_the_cache() -> None:
    from ichd.training.variants import train_image_sizes

    cfg = CnnTrainConfig(optim=OptimConfig(lr_per_epoch=[1e-3, 1e-3, 1e-4], image_size_per_epoch=[64, 128, 256]))
    assert train_image_sizes(cfg, 256) == [64, 128, 256]
    with pytest.raises(ConfigError, match="cache holds 128"):
        train_image_sizes(cfg, 128)
    with pytest.raises(ConfigError, match="one size per epoch"):
        CnnTrainConfig(optim=OptimConfig(lr_per_epoch=[1e-3], image_size_per_epoch=[64, 128]))
    with pytest.raises(ConfigError, match="multiple of 32"):
        CnnTrainConfig(optim=OptimConfig(lr_per_epoch=[1e-3], image_size_per_epoch=[100]))
    assert train_image_sizes(CnnTrainConfig(), 256) is None


def test_max_steps_stops_and_skips_the_remaining_epochs() -> None:
    model = SizeSpy()
    trainer = _trainer(model, [1e-3, 1e-3, 1e-3], max_steps=6)
    history = trainer.fit(_loader(), _loader())
    assert trainer.step == 6 and len(model.sizes) == 6
    assert len(history) == 2 and history[-1]["stopped_at_max_steps"] == 1.0 and trainer.epoch == 3
    assert "val/seconds" in history[-1]  # the last epoch run is validated as the final one
    with pytest.raises(ConfigError, match="max_steps"):
        CnnTrainConfig(optim=OptimConfig(max_steps=0))


def test_any_only_head_keeps_subtypes_at_the_prevalence() -> None:
    from ichd.models import create_model
    from ichd.training.variants import ANY_ONLY_WEIGHTS, init_any_only_head, label_prevalence

    labels = pd.DataFrame({lab: [1, 0, 0, 0] if lab in ("any", "subdural") else [0, 0, 0, 0] for lab in LABELS})
    model = create_model("caceres_cnn", input_size=64)
    init_any_only_head(model, labels)
    prev = label_prevalence(labels)
    assert prev[0] == 0.25 and prev[5] == 0.25 and prev[1] == 1e-4
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = WeightedBCEWithLogits(ANY_ONLY_WEIGHTS)
    x, y = torch.rand(4, 3, 64, 64), torch.tensor(labels.to_numpy(np.float32))
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(torch.rand(3, 3, 64, 64))).numpy()
    assert np.allclose(p[:, 1:], prev[1:], atol=1e-6)  # the subtypes are not learnt: a constant guess
    assert np.ptp(p[:, 0]) > 0  # "any" depends on the image


def test_freeze_and_optimizer() -> None:
    from ichd.models import create_model
    from ichd.training.variants import freeze_parameters, make_optimizer

    model = create_model("caceres_cnn", input_size=64)
    assert freeze_parameters(model, ["backbone.body.conv1a.", "backbone.body.conv1b."]) == 4
    assert not model.backbone.body.conv1a.weight.requires_grad and model.backbone.body.conv2a.weight.requires_grad
    with pytest.raises(ConfigError, match="matches no parameter"):
        freeze_parameters(model, ["backbone.body.conv9."])
    cfg = CnnTrainConfig(optim=OptimConfig(optimizer="sgd", momentum=0.9, lr_per_epoch=[0.01]))
    opt = make_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable
    assert isinstance(make_optimizer(CnnTrainConfig(), model), torch.optim.Adam)


def test_folds_from_a_file(tmp_path: Path) -> None:
    from ichd.training.variants import training_folds

    labels = pd.DataFrame({"patient_id": ["a", "a", "b", "c"], **{lab: [0, 1, 0, 0] for lab in LABELS}})
    pd.DataFrame({"patient_id": ["a", "b", "c", "z"], "fold": [1, 0, 1, 0]}).to_csv(tmp_path / "f.csv", index=False)
    cfg = CnnTrainConfig(data=DataConfig(folds=2, folds_file=str(tmp_path / "f.csv")))
    folds = training_folds(cfg, labels)
    assert folds.to_dict() == {"a": 1, "b": 0, "c": 1}  # patient z (not in the table) is dropped
    cfg.data.folds = 3
    assert training_folds(cfg, labels).to_dict() == {"a": 1, "b": 0, "c": 1}
    labels.loc[3, "patient_id"] = "d"
    with pytest.raises(InputError, match="have no fold"):
        training_folds(cfg, labels)
    pd.DataFrame({"patient_id": ["a", "b", "d"], "fold": [0, 7, 1]}).to_csv(tmp_path / "g.csv", index=False)
    cfg.data.folds_file = str(tmp_path / "g.csv")
    with pytest.raises(InputError, match=r"fold\(s\) \[7\]"):
        training_folds(cfg, labels)
    pd.DataFrame({"patient_id": ["a", "a"], "fold": [0, 1]}).to_csv(tmp_path / "h.csv", index=False)
    cfg.data.folds_file = str(tmp_path / "h.csv")
    with pytest.raises(InputError, match="more than one fold"):
        training_folds(cfg, labels)


def test_the_default_models_folds_file_covers_its_patients() -> None:
    from ichd.data.folds import read_patient_folds

    folds = read_patient_folds(Path(__file__).resolve().parents[3] / "benchmarks/results/cnn_multi_256/folds.csv")
    assert len(folds) == 102 and sorted(set(folds)) == [0, 1, 2, 3, 4]
    assert folds["ctich-050"] == 0 and folds.index.str.startswith("ctich-").sum() == 82


def test_mask_loss_needs_a_model_with_heads() -> None:
    from ichd.models import create_model
    from ichd.training.variants import mask_aux_loss

    cfg = CnnTrainConfig(model=ModelConfig(name="resnet18"), data=DataConfig(masks=["hu-slices"]))
    with pytest.raises(ConfigError, match="no segmentation heads"):
        mask_aux_loss(cfg, create_model("resnet18", input_size=64))
    assert mask_aux_loss(CnnTrainConfig(), create_model("resnet18", input_size=64)) is None
    radnet = create_model("radnet_densenet121", input_size=64).train()
    loss_fn = mask_aux_loss(CnnTrainConfig(data=DataConfig(masks=["x"]), mask_loss_weight=0.5), radnet)
    radnet(torch.rand(2, 3, 64, 64))
    batch = {"mask": torch.ones(2, 1, 64, 64), "has_mask": torch.tensor([True, False])}
    loss = loss_fn(radnet, batch)
    assert loss.item() > 0 and loss.requires_grad
    with pytest.raises(InputError, match="mask"):
        loss_fn(radnet, {"image": torch.rand(2, 3, 64, 64)})


def test_tta_views_average_the_oof_predictions() -> None:
    from ichd.training.variants import oof_views

    assert oof_views(CnnTrainConfig(), 64) == []
    views = oof_views(CnnTrainConfig(tta=True), 64)
    assert len(views) == 4
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(views[1](x), x.flip(-1)) and torch.equal(views[0](x), x)

    class FlipSensitive(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.tensor(50.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # logit = left half minus right half brightness
            d = x[..., :32].mean(dim=(1, 2, 3)) - x[..., 32:].mean(dim=(1, 2, 3))
            return d[:, None].repeat(1, 6) * self.gain

    trainer = _trainer(FlipSensitive(), [1e-3])
    plain = trainer.predict(_loader(4)).probs
    tta = trainer.predict(_loader(4), views=views[:2]).probs  # identity + flip: sigmoid(d) + sigmoid(-d) = 1
    assert not np.allclose(plain, 0.5, atol=1e-3) and np.allclose(tta, 0.5, atol=1e-6)


def test_runs_started_before_the_new_options_still_resume() -> None:
    from ichd.training.cnn import _config_fingerprint
    from ichd.training.variants import same_fingerprint

    current = _config_fingerprint(CnnTrainConfig())
    old = {k: dict(v) if isinstance(v, dict) else v for k, v in current.items()}
    for key in ("targets", "tta", "mask_loss_weight"):
        del old[key]
    del old["optim"]["max_steps"], old["data"]["folds_file"], old["model"]["freeze"]
    assert same_fingerprint(old, current) and same_fingerprint(current, current)
    changed = _config_fingerprint(CnnTrainConfig(tta=True))
    assert not same_fingerprint(old, changed)  # a new option set away from its default is a different run
    assert not same_fingerprint(None, current)
