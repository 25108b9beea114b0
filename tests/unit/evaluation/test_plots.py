"""Plots render to PNG and put reader points where their sensitivity/specificity say."""

from __future__ import annotations

import numpy as np
import pytest

from ichd.constants import LABELS
from ichd.evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random((120, 6)) < 0.3).astype(float)
    p = np.clip(0.35 * y + 0.65 * rng.random((120, 6)), 0, 1)
    return y, p


def test_reader_points_on_model_roc(scores: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scores
    readers = {"any": {"R1": {"sensitivity": 0.8, "specificity": 0.9}, "R2": {"sensitivity": 0.6,
                                                                              "specificity": 0.95}},
               "subdural": {"R1": {"sensitivity": 0.5, "specificity": 0.99}}}
    fig = plots.reader_roc_figure(y[:, [0, 5]], p[:, [0, 5]], readers, labels=["any", "subdural"],
                                  model_points={"any": {"sensitivity": 0.7, "specificity": 0.8, "threshold": 0.4}})
    ax = fig.axes[0]
    points = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines
              if len(line.get_xdata()) == 1}
    assert points["R1 (0.80/0.90)"] == pytest.approx((0.1, 0.8))
    assert points["R2 (0.60/0.95)"] == pytest.approx((0.05, 0.6))
    assert points["model @ 0.4"] == pytest.approx((0.2, 0.7))
    assert any(line.get_label().startswith("model AUC") for line in ax.lines)
    assert ax.get_title().startswith("SDH") is False and fig.axes[1].get_title().startswith("SDH")
    assert plots.png_bytes(fig).startswith(PNG_MAGIC)


def test_all_figures_render(scores: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    y, p = scores
    t = {lab: 0.5 for lab in LABELS}
    figs = [plots.roc_pr_figure(y, p, level="slice", operating_points=t),
            plots.confusion_figure(y, p, {**t, "epidural": float("nan")}, level="scan", op_name="0.5"),
            plots.reliability_figure(y, p, level="slice")]
    for i, fig in enumerate(figs):
        path = plots.save_png(fig, tmp_path / f"{i}.png")
        assert path.read_bytes().startswith(PNG_MAGIC)
    roc = figs[0].axes[0]
    assert roc.get_xlabel().startswith("1 - specificity") and "AUC" in roc.get_legend().get_texts()[0].get_text()
    assert figs[1].axes[1].get_title() == "EDH: no threshold"
