"""Self-contained HTML report of one prediction: one file, every image embedded (base64 PNG), no scripts,
no external style sheets or fonts, so it opens anywhere and can be archived or mailed as is.

Sections: a banner when the input is the bundled demo study (its results are not an independent test), disclaimer,
scan summary (probability, threshold, call per subtype), probability curves along the slices, the flagged slices
with Grad-CAM overlays, the second reader (``--second-reader blast-ct``: its lesion volumes and segmentation
overlays), ingest and model warnings, the per-slice table (folded), a model card summary, and timings.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ichd import __version__
from ichd.calls import gated_subtypes
from ichd.constants import LABEL_ABBREVIATIONS, LABELS
from ichd.inference.evidence import SliceEvidence
from ichd.inference.guards import not_assessable_text
from ichd.types import Prediction

DISCLAIMER = ("Research software. ichd is not a medical device and has not been cleared or approved for clinical "
              "use. Do not use these results for diagnosis or treatment decisions.")

#: One colour per label for the curves (colour-blind-safe Okabe-Ito palette; "any" in black).
LABEL_COLOURS: dict[str, str] = {
    "any": "#000000", "epidural": "#E69F00", "intraparenchymal": "#56B4E9", "intraventricular": "#009E73",
    "subarachnoid": "#CC79A7", "subdural": "#D55E00",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d232b;
background:#f5f6f8}
main{max-width:1100px;margin:0 auto;padding:16px 24px 40px}
h1{font-size:1.5rem;margin:.4rem 0}h2{font-size:1.15rem;margin:1.6rem 0 .5rem;border-bottom:1px solid #d5d9df;
padding-bottom:.2rem}
.na{color:#7a4b00;font-weight:700}
.demo-banner{background:#fde8e8;border:2px solid #c0392b;border-radius:6px;padding:.7rem .9rem;font-size:1rem;
margin:.6rem 0}
.disclaimer{background:#fff4e5;border:1px solid #f0b35a;border-radius:6px;padding:.6rem .9rem;font-size:.92rem}
.meta{color:#4a5360;font-size:.85rem;word-break:break-all}
table{border-collapse:collapse;background:#fff;font-size:.9rem}
th,td{border:1px solid #d5d9df;padding:.3rem .6rem;text-align:left}th{background:#eceff3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pos{color:#fff;background:#c0392b;font-weight:600;border-radius:4px;padding:.1rem .45rem}
.neg{color:#1d232b;background:#dfe5ea;border-radius:4px;padding:.1rem .45rem}
.verdict{font-size:1.1rem;margin:.6rem 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #d5d9df;border-radius:6px;padding:6px}
figure img{width:100%;height:auto;display:block}figcaption{font-size:.85rem;padding:.3rem .2rem}
img.curves{width:100%;max-width:1050px;background:#fff;border:1px solid #d5d9df;border-radius:6px}
ul.warn li{margin:.2rem 0}code{font-size:.85em}
details{margin:.5rem 0}summary{cursor:pointer;font-weight:600}
pre.card{white-space:pre-wrap;background:#fff;border:1px solid #d5d9df;padding:.8rem;font-size:.82rem}
"""


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _rgb_png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def _abbrev(label: str) -> str:
    return LABEL_ABBREVIATIONS.get(label, label)


def curves_png(pred: Prediction, flagged: Sequence[int] = ()) -> bytes:
    """Per-class probability along the slices (x: slice index, inferior -> superior), the "any" threshold as a
    dashed line and flagged slices as grey bars. Rendered with matplotlib's object API (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ichd.explain.overlay import figure_png_bytes

    probs = np.asarray(pred.slice_probs, dtype=np.float64)
    n = probs.shape[0]
    x = np.arange(n)
    fig = Figure(figsize=(10.5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i in flagged:
        ax.axvspan(i - 0.5, i + 0.5, color="0.85", zorder=0)
    for j, lab in enumerate(pred.labels):
        style = {"lw": 2.4} if lab == "any" else {"lw": 1.4}
        marker = "o" if n <= 3 else None
        ax.plot(x, probs[:, j], color=LABEL_COLOURS.get(lab, None), label=f"{lab} ({_abbrev(lab)})",
                marker=marker, **style)
    ax.axhline(pred.thresholds["any"], color="black", ls="--", lw=1, label=f"any threshold {pred.thresholds['any']:.2f}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(-0.5, max(n - 0.5, 0.5))
    ax.set_xlabel("slice index (0 = most inferior)")
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return figure_png_bytes(fig)


def evidence_png(ev: SliceEvidence, threshold: float | None) -> bytes:
    """The flagged slice: brain window beside the evidence-map overlay with a colour bar (or the plain slice when
    no map was computed)."""
    from ichd.explain.overlay import BRAIN_WINDOW, display_image, figure_png_bytes, overlay_figure

    if ev.cam is None:
        gray = display_image(ev.image_hu, BRAIN_WINDOW)
        return _rgb_png(np.clip(np.round(gray * 255.0), 0, 255).astype(np.uint8))
    from ichd.explain.lesion import MAP_NAMES

    fig = overlay_figure(ev.image_hu, ev.cam, class_name=ev.label, probability=ev.probability,
                         slice_index=ev.index, threshold=threshold, dpi=80, pixel_spacing=ev.pixel_spacing,
                         map_name=MAP_NAMES.get(ev.map_method or "gradcam", "Grad-CAM"))
    return figure_png_bytes(fig)


def _fmt_p(p: float) -> str:
    return f"{p:.3f}"


def _scan_table(pred: Prediction) -> str:
    rows = []
    positive = pred.scan_positive
    gated = set(gated_subtypes(pred.scan_probs, pred.thresholds, pred.labels))
    for j, lab in enumerate(pred.labels):
        call = ('<span class="na">not assessable</span>' if pred.not_assessable
                else '<span class="pos">POSITIVE</span>' if positive[lab]
                else '<span class="neg">negative ("any" negative)</span>' if lab in gated
                else '<span class="neg">negative</span>')
        peak = int(np.argmax(pred.slice_probs[:, j]))
        rows.append(f"<tr><td>{html.escape(lab)} ({_abbrev(lab)})</td><td class=num>{_fmt_p(pred.scan_probs[j])}</td>"
                    f"<td class=num>{_fmt_p(pred.thresholds[lab])}</td><td>{call}</td><td class=num>{peak}</td></tr>")
    return ("<table><thead><tr><th>subtype</th><th>scan probability</th><th>threshold</th><th>call</th>"
            "<th>most probable slice</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _slice_table(pred: Prediction) -> str:
    head = "".join(f"<th>{_abbrev(lab)}</th>" for lab in pred.labels)
    rows = []
    skipped = {int(s["index"]): str(s["reason"]) for s in pred.skipped_slices}
    for i in range(pred.slice_probs.shape[0]):
        z = pred.positions_mm[i]
        z_txt = f"{z:.2f}" if np.isfinite(z) else "—"
        if i in skipped:
            why = "no head tissue" if skipped[i] == "no_head" else skipped[i]
            rows.append(f"<tr><td class=num>{i}</td><td class=num>{z_txt}</td>"
                        f"<td colspan={len(pred.labels)} class=meta>not scored ({html.escape(why)}): P = 0</td></tr>")
            continue
        cells = "".join(f"<td class=num>{_fmt_p(p)}</td>" for p in pred.slice_probs[i])
        rows.append(f"<tr><td class=num>{i}</td><td class=num>{z_txt}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>slice</th><th>z (mm)</th>{head}</tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def _warnings(pred: Prediction) -> str:
    if not pred.warnings:
        return "<p>None.</p>"
    items = []
    for w in pred.warnings:
        files = ""
        if w.files:
            shown = ", ".join(html.escape(f) for f in w.files[:5])
            more = f" and {len(w.files) - 5} more" if len(w.files) > 5 else ""
            files = f"<br><span class=meta>files: {shown}{more}</span>"
        items.append(f"<li><code>{html.escape(w.code)}</code>: {html.escape(w.message)}{files}</li>")
    return '<ul class="warn">' + "".join(items) + "</ul>"


def _model_section(model_info: dict[str, Any]) -> str:
    keys = [("name", "name"), ("version", "version"), ("sha256", "weights sha256"), ("description", "description"),
            ("training_data", "training data"), ("license", "licence"), ("intended_use", "intended use"),
            ("scan_rule", "scan rule")]
    rows = "".join(f"<tr><th>{label}</th><td>{html.escape(str(model_info[k]))}</td></tr>"
                   for k, label in keys if model_info.get(k))
    policy = model_info.get("threshold_policy") or {}
    if policy:
        rows += ("<tr><th>thresholds</th><td>" + "<br>".join(
            f"{html.escape(k)}: {html.escape(str(v))}" for k, v in policy.items()) + "</td></tr>")
    out = f"<table>{rows}</table>"
    card = model_info.get("model_card_text") or ""
    if card:
        out += f"<details><summary>Full model card</summary><pre class=card>{html.escape(card)}</pre></details>"
    return out


#: What the report says about a not-assessable scan, by reason.
NOT_ASSESSABLE_TEXT: dict[str, str] = {
    "contrast_enhanced": "the series looks contrast-enhanced (or a CT angiography). The model is for non-contrast "
                         "head CT, where iodine looks like blood, so no call is made; the probabilities below are "
                         "shown for reference only (ichd predict --allow-contrast calls it anyway).",
}


def _provenance_banner(pred: Prediction, demo: Mapping[str, Any] | None) -> str:
    """A banner when the input is in the model's training data (not repeated for the demo study's own banner)."""
    prov = pred.provenance or {}
    if not prov.get("in_training_data") or (demo and demo.get("is_demo")):
        return ""
    return (f'<p class="demo-banner" role="note"><strong>Training data.</strong> '
            f'{html.escape(str(prov.get("note", "")))}</p>\n')


def _demo_banner(demo: Mapping[str, Any] | None) -> str:
    """The banner at the top of a report on the bundled demo study (empty for any other input)."""
    if not demo or not demo.get("is_demo"):
        return ""
    return (f'<p class="demo-banner" role="note"><strong>Demo study.</strong> '
            f'{html.escape(str(demo.get("note", "")))}</p>\n')


def _second_reader_section(second: Mapping[str, Any] | None) -> str:
    """The second reader's volumes table and overlay figures ("" without a second reader)."""
    if not second:
        return ""
    from ichd.inference.second_reader import CLASS_COLORS, CLASS_NAMES, CLASS_TITLES, HEMORRHAGE_CLASSES

    block = second["block"]
    vols = block["volumes_ml"]
    rows = "".join(
        f'<tr><td><span style="color:rgb{CLASS_COLORS[c]}">&#9632;</span> {html.escape(CLASS_TITLES[c])}</td>'
        f'<td class=num>{vols[c]:.2f}</td></tr>' for c in CLASS_NAMES)
    rows += (f"<tr><th>hemorrhage ({' + '.join(c.upper() for c in HEMORRHAGE_CLASSES)})</th>"
             f"<th class=num>{block['hemorrhage_ml']:.2f}</th></tr>")
    models = ", ".join(html.escape(m["file"]) for m in block["models"])
    figures = "".join(
        f'<figure><img alt="slice {i} with the BLAST-CT segmentation" src="{_png_data_uri(_rgb_png(rgb))}">'
        f"<figcaption>slice {i}: BLAST-CT labels</figcaption></figure>" for i, rgb in second["slices"])
    shown = (f"<div class=grid>{figures}</div>" if figures else
             "<p>No slice has a BLAST-CT hemorrhage label or an ichd flag, so no overlay is shown.</p>")
    return (f"<h2>Second reader: BLAST-CT</h2><p class=meta>{html.escape(block.get('note', ''))} Models: {models}; "
            f"{block.get('seconds', 0):.0f} s.</p><table><thead><tr><th>class</th><th>volume (mL)</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{shown}\n")


def render_html(pred: Prediction, evidence: Sequence[SliceEvidence], *, model_info: dict[str, Any],
                input_kind: str | None = None, generated_uids: bool = False, gradcam: bool = True,
                created: _dt.datetime | None = None, demo: Mapping[str, Any] | None = None,
                second_reader: Mapping[str, Any] | None = None) -> str:
    """The report as one HTML document (text). ``demo``: the result's ``demo`` block when the input is the bundled
    demo study (:func:`ichd.inference.demo.demo_block`); its note is shown as a banner at the top.
    ``second_reader``: ``{"block": the JSON second_reader block, "slices": [(slice index, RGB overlay)]}``."""
    created = created or _dt.datetime.now(_dt.UTC)
    positive = pred.scan_positive
    pos_labels = [lab for lab in LABELS if positive[lab] and lab != "any"]
    if pred.not_assessable:
        verdict = ('<span class="na">Not assessable</span> — '
                   + html.escape(NOT_ASSESSABLE_TEXT.get(pred.not_assessable) or not_assessable_text(pred)))
    elif positive["any"]:
        verdict = ('<span class="pos">Hemorrhage suspected</span>'
                   + (f" — subtypes above threshold: {', '.join(html.escape(lab) for lab in pos_labels)}"
                      if pos_labels else " — no single subtype above its threshold"))
    else:
        verdict = '<span class="neg">No hemorrhage above the operating threshold</span>'
    gated = gated_subtypes(pred.scan_probs, pred.thresholds, pred.labels)
    if gated and not pred.not_assessable:
        verdict += (f" (the probability of {', '.join(html.escape(lab) for lab in gated)} reaches its threshold, "
                    "but a subtype is called only when \"any\" is positive)")
    curves = _png_data_uri(curves_png(pred, [e.index for e in evidence]))
    figures = []
    for ev in evidence:
        z = pred.positions_mm[ev.index]
        z_txt = f", z = {z:.1f} mm" if np.isfinite(z) else ""
        cap = (f"slice {ev.index}{z_txt}: {html.escape(ev.label)} p = {ev.probability:.3f}"
               + ("" if ev.cam is not None else " (no heat map)"))
        figures.append(f'<figure><img alt="slice {ev.index}" src="{_png_data_uri(evidence_png(ev, pred.thresholds[ev.label]))}">'
                       f"<figcaption>{cap}</figcaption></figure>")
    if figures:
        from ichd.explain.lesion import MAP_DESCRIPTIONS

        kinds = sorted({ev.map_method for ev in evidence if ev.map_method})
        heat_note = ("Heat maps: " + "; ".join(MAP_DESCRIPTIONS.get(k, k) for k in kinds)
                     + ". Each is scaled to its own maximum and kept to the head." if gradcam and kinds else
                     "Heat maps were switched off for this run; the slices are shown without them.")
        flagged_html = f"<p class=meta>{heat_note}</p><div class=grid>{''.join(figures)}</div>"
    else:
        flagged_html = "<p>No slice reached the operating threshold, so no slice is flagged.</p>"
    if pred.skipped_slices:
        n_skip = len(pred.skipped_slices)
        verdict += (f'<br><span class=meta>{n_skip} of {pred.slice_probs.shape[0]} slices show no head tissue '
                    f'(table or air only) and were not scored (P = 0): '
                    f'{", ".join(str(int(s["index"])) for s in pred.skipped_slices[:20])}'
                    f'{" ..." if n_skip > 20 else ""}</span>')
    uid_note = (" (generated by ichd: the input carried no DICOM UIDs)" if generated_uids else "")
    timing = ", ".join(f"{html.escape(k)} {v:.2f} s" for k, v in pred.timing_s.items())
    title = f"ichd report — series {pred.series_instance_uid}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>Intracranial hemorrhage report</h1>
{_demo_banner(demo)}{_provenance_banner(pred, demo)}<p class="disclaimer"><strong>Not for clinical use.</strong> {html.escape(DISCLAIMER)}</p>
<p class=meta>Study {html.escape(pred.study_instance_uid)} · series {html.escape(pred.series_instance_uid)}{uid_note}<br>
{pred.slice_probs.shape[0]} slices · input {html.escape(input_kind or 'unknown')} · model {html.escape(pred.model.get('name', ''))}
{html.escape(pred.model.get('version', ''))} · TTA {html.escape(pred.model.get('tta', 'false'))} ·
ichd {html.escape(__version__)} · {created.strftime('%Y-%m-%d %H:%M UTC')}</p>
<h2>Scan summary</h2>
<p class=verdict>{verdict}</p>
{_scan_table(pred)}
<h2>Probability along the slices</h2>
<img class=curves alt="per-class probability curves along the slices" src="{curves}">
<h2>Flagged slices</h2>
{flagged_html}
{_second_reader_section(second_reader)}<h2>Warnings</h2>
{_warnings(pred)}
<h2>Per-slice probabilities</h2>
<details><summary>Show the table ({pred.slice_probs.shape[0]} slices)</summary>{_slice_table(pred)}</details>
<h2>Model</h2>
{_model_section(model_info)}
<p class=meta>Timing: {timing}</p>
<p class="disclaimer">{html.escape(DISCLAIMER)}</p>
</main></body></html>
"""
