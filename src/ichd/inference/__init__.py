"""Inference: a CT series in, per-slice and per-scan subtype probabilities, evidence and reports out.

Modules: :mod:`.predictor` (:class:`~ichd.inference.predictor.Predictor`: load a model, predict a
:class:`~ichd.types.CTSeries` in bounded-memory chunks), :mod:`.tta` (test-time augmentation views),
:mod:`.evidence` (flagged slices, Grad-CAM evidence), :mod:`.embed` (CNN embeddings for the sequence stage),
:mod:`.report_json` (versioned JSON result + schema), :mod:`.report_html` (self-contained HTML report),
:mod:`.dicom_out` (DICOM SR + Secondary Capture), :mod:`.run` (``ichd predict`` as a library call).
"""
