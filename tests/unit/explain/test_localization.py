"""Pointing game, energy fraction, chance levels, SSIM and weight randomisation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from explain_toy import ToyCNN, to_input
from ichd.errors import InputError
from ichd.explain.gradcam import GradCAM
from ichd.explain.localization import (
    chance_levels,
    dilate,
    energy_fraction,
    head_region,
    map_ssim,
    parameterised_layers,
    peak,
    pointing_game,
    randomized_copy,
)


def _mask() -> np.ndarray:
    m = np.zeros((50, 50), bool)
    m[20:30, 20:30] = True
    return m


def test_pointing_game_hits_misses_and_tolerance() -> None:
    mask = _mask()
    cam = np.zeros((50, 50))
    cam[25, 25] = 1.0
    assert pointing_game(cam, mask)
    cam = np.zeros((50, 50))
    cam[25, 34] = 1.0  # 5 px right of the mask's last column (29): inside the 5-px dilation
    assert pointing_game(cam, mask, tolerance_px=5)
    assert not pointing_game(cam, mask, tolerance_px=4)
    assert not pointing_game(np.zeros((50, 50)), mask)  # no evidence at all is a miss
    assert peak(np.zeros((3, 3))) is None
    with pytest.raises(InputError):
        pointing_game(cam, np.zeros((50, 50), bool))
    with pytest.raises(InputError):
        pointing_game(cam[:10], mask)


def test_dilation_is_a_disk() -> None:
    m = np.zeros((21, 21), bool)
    m[10, 10] = True
    d = dilate(m, 5)
    assert d[10, 15] and d[15, 10] and not d[15, 15] and d.sum() == 81


def test_energy_fraction() -> None:
    mask = _mask()
    cam = np.zeros((50, 50))
    cam[20:30, 20:30] = 1.0
    cam[0:10, 0:10] = 3.0
    assert energy_fraction(cam, mask) == pytest.approx(100 / 400)
    assert energy_fraction(cam * 7.0, mask) == pytest.approx(0.25)  # scale invariant
    assert energy_fraction(np.zeros((50, 50)), mask) == 0.0
    with pytest.raises(InputError):
        energy_fraction(np.full((50, 50), np.nan), mask)


def test_chance_levels_of_a_uniform_map() -> None:
    hu = np.full((50, 50), -1000.0)
    hu[10:40, 10:40] = 30.0
    head = head_region(hu)
    assert head.sum() == 900
    hit, energy = chance_levels(_mask(), head, tolerance_px=0)
    assert energy == pytest.approx(100 / 900) and hit == pytest.approx(100 / 900)
    hit5, _ = chance_levels(_mask(), head)
    assert hit5 > hit
    uniform = head.astype(float)
    assert energy_fraction(uniform, _mask()) == pytest.approx(energy)


def test_ssim_of_maps() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((40, 40))
    assert map_ssim(a, a * 3.0) == pytest.approx(1.0)  # max-normalised first
    assert map_ssim(a, rng.random((40, 40))) < 0.3
    assert map_ssim(np.zeros((40, 40)), np.zeros((40, 40))) == pytest.approx(1.0)
    with pytest.raises(InputError):
        map_ssim(a, a[:10])


def test_randomized_copy_full_and_cascading() -> None:
    torch.manual_seed(0)
    model = ToyCNN()
    before = copy.deepcopy(model.state_dict())
    names = parameterised_layers(model)
    assert names == ["features.0", "features.2", "features.4", "classifier"]
    full = randomized_copy(model, mode="full", seed=1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # original untouched
    changed = [k for k, v in full.state_dict().items() if not torch.equal(v, before[k])]
    assert {k.rsplit(".", 1)[0] for k in changed} == set(names)
    top = randomized_copy(model, mode="cascading", fraction=0.5, seed=1)
    changed = {k.rsplit(".", 1)[0] for k, v in top.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"features.4", "classifier"}
    again = randomized_copy(model, mode="full", seed=1)
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in again.state_dict().items())  # seeded
    with pytest.raises(InputError):
        randomized_copy(model, mode="half")  # type: ignore[arg-type]


def test_randomised_model_gives_different_maps(trained_toy, toy_data) -> None:
    """The Adebayo et al. sanity check on the toy task: maps of a randomised model must not match."""
    x = to_input(toy_data[0][:8])
    real = GradCAM(trained_toy)(x, 0)
    rand = GradCAM(randomized_copy(trained_toy, mode="full", seed=0))(x, 0)
    ssim = np.mean([map_ssim(a, b) for a, b in zip(real, rand, strict=True)])
    assert ssim < 0.6


def test_peak_of_a_border_plateau_is_its_centre_not_the_image_edge() -> None:
    from ichd.explain.overlay import resize_map

    coarse = np.zeros((4, 4), np.float32)
    coarse[1, 0] = 1.0  # top cell on the left border
    up = resize_map(coarse, (64, 64))
    r, c = peak(up)
    assert 20 <= r <= 27 and 0 < c <= 8  # inside the plateau between the border and the cell centre, not column 0
    assert peak(np.array([[0.0, 2.0], [1.0, 0.0]])) == (0, 1)
