"""Evaluation plots (matplotlib, Agg canvas, no pyplot state): ROC/PR curves, confusion matrices, reliability
diagrams, and reader operating points on the model's ROC curve.

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save_png` writes it atomically and
:func:`png_bytes` renders it for embedding in HTML. Colours are fixed per label so that all plots agree.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ichd.constants import LABEL_ABBREVIATIONS, LABELS
from ichd.evaluation.calibration import expected_calibration_error, reliability_curve
from ichd.evaluation.metrics import average_precision, confusion_counts, roc_auc
from ichd.utils.files import atomic_path

#: One colour per label (colour-blind-friendly Okabe-Ito palette), in LABELS order.
LABEL_COLORS: dict[str, str] = dict(zip(LABELS, ("#000000", "#E69F00", "#56B4E9", "#009E73", "#CC79A7",
                                                 "#D55E00")))
READER_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
DPI = 110


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _name(label: str) -> str:
    return LABEL_ABBREVIATIONS.get(label, label)


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.{digits}f}"


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(fig))
    return Path(path)


def _curves(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    prec, rec, _ = precision_recall_curve(y, p)
    return fpr, tpr, rec, prec


def roc_pr_figure(y: np.ndarray, p: np.ndarray, *, level: str, labels: Sequence[str] = LABELS,
                  operating_points: Mapping[str, float] | None = None) -> Figure:
    """ROC (left) and precision-recall (right) curves of every label with a defined curve.

    ``operating_points`` (``{label: threshold}``) adds a marker where each curve's threshold lies.
    """
    fig = _new_figure(11.0, 5.0)
    ax_roc, ax_pr = fig.subplots(1, 2)
    for c, lab in enumerate(labels):
        yc, pc = y[:, c], p[:, c]
        n_pos = int(yc.sum())
        if n_pos == 0 or n_pos == len(yc):
            continue
        fpr, tpr, rec, prec = _curves(yc, pc)
        color = LABEL_COLORS.get(lab)
        ax_roc.plot(fpr, tpr, color=color, lw=1.6,
                    label=f"{_name(lab)}  AUC {_fmt(roc_auc(yc, pc))}  (n+={n_pos})")
        ax_pr.step(rec, prec, where="post", color=color, lw=1.6,
                   label=f"{_name(lab)}  AP {_fmt(average_precision(yc, pc))}  (prev. {n_pos / len(yc):.1%})")
        if operating_points and np.isfinite(operating_points.get(lab, np.nan)):
            tp, fp, tn, fn = confusion_counts(yc, pc, operating_points[lab])
            ax_roc.plot(fp / max(fp + tn, 1), tp / max(tp + fn, 1), marker="o", ms=6, color=color,
                        mec="white", mew=1.0, ls="none")
    ax_roc.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    ax_roc.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false positive rate)",
               ylabel="sensitivity (true positive rate)", title=f"ROC, {level} level")
    ax_pr.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall (sensitivity)",
              ylabel="precision (PPV)", title=f"Precision-recall, {level} level")
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.set_aspect("equal")
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8, framealpha=0.9)
    return fig


def confusion_figure(y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, float], *, level: str,
                     op_name: str, labels: Sequence[str] = LABELS) -> Figure:
    """2x2 confusion matrices (counts and row percentages) for every label at ``thresholds``."""
    ncols = 3
    nrows = int(np.ceil(len(labels) / ncols))
    fig = _new_figure(3.4 * ncols, 3.1 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (c, lab) in zip(axes, enumerate(labels)):
        t = thresholds.get(lab, np.nan)
        if not np.isfinite(t):
            ax.set_axis_off()
            ax.set_title(f"{_name(lab)}: no threshold", fontsize=10)
            continue
        tp, fp, tn, fn = confusion_counts(y[:, c], p[:, c], t)
        m = np.array([[tn, fp], [fn, tp]], dtype=float)
        rows = m.sum(axis=1, keepdims=True)
        frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{int(m[i, j])}\n{frac[i, j]:.1%}", ha="center", va="center", fontsize=10,
                        color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xticks([0, 1], ["pred. neg", "pred. pos"])
        ax.set_yticks([0, 1], ["true neg", "true pos"])
        ax.set_title(f"{_name(lab)}  (p >= {t:.3g})", fontsize=10)
    for ax in axes[len(labels):]:
        ax.set_axis_off()
    fig.suptitle(f"Confusion matrices, {level} level, operating point: {op_name}", fontsize=11)
    return fig


def reliability_figure(y: np.ndarray, p: np.ndarray, *, level: str, n_bins: int = 10,
                       labels: Sequence[str] = LABELS) -> Figure:
    """Reliability diagram per label (observed fraction vs mean predicted probability) with its ECE.

    Bars at the bottom show how many cases fall into each bin (log scale, right axis).
    """
    ncols = 3
    nrows = int(np.ceil(len(labels) / ncols))
    fig = _new_figure(3.6 * ncols, 3.4 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (c, lab) in zip(axes, enumerate(labels)):
        curve = reliability_curve(y[:, c], p[:, c], n_bins)
        ece = expected_calibration_error(y[:, c], p[:, c], n_bins)
        hist = ax.twinx()
        hist.bar((curve.bin_low + curve.bin_high) / 2, curve.count, width=1.0 / n_bins * 0.9, color="grey",
                 alpha=0.25)
        hist.set_yscale("log")
        hist.yaxis.set_minor_locator(NullLocator())  # minor log ticks are clutter and slow to render
        hist.set_ylim(0.8, max(curve.count.max() if curve.count.size else 1, 1) * 40)
        hist.set_ylabel("cases per bin", fontsize=8, color="grey")
        hist.tick_params(labelsize=7, colors="grey")
        ax.set_zorder(hist.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.plot(curve.mean_predicted, curve.fraction_positive, marker="o", ms=4, lw=1.4,
                color=LABEL_COLORS.get(lab))
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{_name(lab)}  ECE {_fmt(ece)}  (n+={int(np.sum(y[:, c] > 0.5))})")
        ax.set_xlabel("mean predicted probability", fontsize=8)
        ax.set_ylabel("observed fraction positive", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(labels):]:
        ax.set_axis_off()
    fig.suptitle(f"Reliability diagrams, {level} level ({n_bins} equal-width bins)", fontsize=11)
    return fig


def reader_roc_figure(y: np.ndarray, p: np.ndarray, readers: Mapping[str, Mapping[str, Mapping[str, Any]]],
                      *, labels: Sequence[str], model_points: Mapping[str, Mapping[str, float]] | None = None,
                      title: str = "Model ROC with human readers") -> Figure:
    """The model's ROC curve per label with each reader's (1 - specificity, sensitivity) point.

    ``y``/``p`` are ``(n_cases, len(labels))``; ``readers[label][reader]`` holds ``sensitivity`` and
    ``specificity`` against the same reference as ``y``. ``model_points[label]`` may add the model's own
    operating point (``sensitivity``, ``specificity``, ``threshold``).
    """
    n = len(labels)
    ncols = min(3, n)
    nrows = int(np.ceil(n / ncols))
    fig = _new_figure(3.8 * ncols, 3.7 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (c, lab) in zip(axes, enumerate(labels)):
        yc, pc = y[:, c], p[:, c]
        finite = np.isfinite(yc)
        yc, pc = yc[finite], pc[finite]
        if 0 < yc.sum() < len(yc):
            fpr, tpr, _, _ = _curves(yc, pc)
            ax.plot(fpr, tpr, color=LABEL_COLORS.get(lab), lw=1.6, label=f"model AUC {_fmt(roc_auc(yc, pc))}")
        else:
            ax.text(0.5, 0.5, "one class only:\nno ROC curve", ha="center", va="center", fontsize=9)
        for k, (name, op) in enumerate(readers.get(lab, {}).items()):
            sens, spec = op.get("sensitivity", np.nan), op.get("specificity", np.nan)
            if np.isfinite(sens) and np.isfinite(spec):
                ax.plot(1 - spec, sens, marker=READER_MARKERS[k % len(READER_MARKERS)], ms=8, ls="none",
                        mfc="none", mew=1.6, color="#333333", label=f"{name} ({sens:.2f}/{spec:.2f})")
        if model_points and lab in model_points:
            mp = model_points[lab]
            if np.isfinite(mp.get("sensitivity", np.nan)) and np.isfinite(mp.get("specificity", np.nan)):
                ax.plot(1 - mp["specificity"], mp["sensitivity"], marker="*", ms=12, ls="none",
                        color=LABEL_COLORS.get(lab), mec="black",
                        label=f"model @ {mp.get('threshold', np.nan):.3g}")
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=f"{_name(lab)} (n={len(yc)}, pos={int(yc.sum())})")
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7, title="reader (sens/spec)", title_fontsize=7)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    return fig
