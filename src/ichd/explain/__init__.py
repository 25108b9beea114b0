"""Explanations for slice-CNN findings: Grad-CAM maps, overlays, scan montages and a localization check.

* :mod:`ichd.explain.gradcam` — :class:`~ichd.explain.gradcam.GradCAM` (Grad-CAM / Grad-CAM++) on the layer the
  model registry names;
* :mod:`ichd.explain.overlay` — heat map on the brain window as an RGB array or a labelled figure;
* :mod:`ichd.explain.montage` — a grid of a scan's flagged slices;
* :mod:`ichd.explain.localization` — pointing game, energy fraction, randomisation sanity check;
* :mod:`ichd.explain.pipeline` — CTSeries + model -> overlay PNGs and montages (what ``ichd explain`` runs).

Importing this package imports neither torch nor matplotlib; the submodules do so on use.
"""
