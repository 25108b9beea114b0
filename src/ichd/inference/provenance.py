"""Is this input part of the model's training data? Training UIDs recorded in the bundle, checked per result.

A model's probabilities on its own training data are not an independent test. Every bundle can record the study,
series and SOP instance UIDs (the slice ids of the cache: SOPInstanceUIDs for DICOM, ``ctich-PPP-SSS`` for CT-ICH)
it was fitted on, in ``training_uids.json`` next to the weights::

    {"kind": "ichd-training-uids", "version": 1, "sources": [...],
     "studies": [...], "series": [...], "sop_instances": [...]}

and the manifest key ``training_uids: {"path": "training_uids.json", "sha256": ..., "n_studies": ...,
"n_series": ..., "n_sop_instances": ...}`` (the file's sha256 is checked when it is read; the weights and their
sha256 are not touched). :func:`ichd.inference.bundle_build.build_bundle` writes them from the cache manifest of
the training data (``--training-cache`` of ``scripts/build_bundle.py``); :func:`add_training_uids` adds them to an
existing bundle.

:meth:`ichd.inference.predictor.Predictor.predict_series` sets ``Prediction.provenance``
(:func:`provenance_block`): the JSON result (``provenance``), the HTML report (a banner), the DICOM SR (a comment)
and the viewer all say when the input's study, series or a slice is in the training data.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichd.errors import ModelError
from ichd.types import CTSeries

#: Manifest key and file name.
TRAINING_UIDS_KEY = "training_uids"
TRAINING_UIDS_FILE = "training_uids.json"
KIND = "ichd-training-uids"


@dataclass(frozen=True)
class TrainingUids:
    """The UIDs a model was fitted on."""

    studies: frozenset[str]
    series: frozenset[str]
    sop_instances: frozenset[str]
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "version": 1, "sources": list(self.sources), "studies": sorted(self.studies),
                "series": sorted(self.series), "sop_instances": sorted(self.sop_instances)}


def _source_matches(source: str, wanted: Sequence[str] | None) -> bool:
    if wanted is None:
        return True
    parts = {p.lower() for p in Path(str(source).split(":")[-1]).parts} | {str(source).lower()}
    return any(w.lower() in parts or f"/{w.lower()}" in str(source).lower() for w in wanted)


def training_uids_from_cache(caches: Iterable[str | Path], sources: Sequence[str] | None = None) -> TrainingUids:
    """The UIDs of every series in the cache folders ``caches`` (``manifest.json``: ``scan_id`` = series UID,
    ``study_instance_uid``; ``slices.csv``: ``slice_id`` = SOP instance UID), limited to the data sources named in
    ``sources`` (e.g. ``["ct-ich", "rsna-series"]``, matched against each series' recorded source path; all when
    None)."""
    studies: set[str] = set()
    series: set[str] = set()
    sops: set[str] = set()
    for cache in caches:
        root = Path(cache)
        manifest = root / "manifest.json"
        if not manifest.is_file():
            raise ModelError(f"{str(root)!r} has no manifest.json", hint="give an `ichd preprocess` cache folder")
        m = json.loads(manifest.read_text(encoding="utf-8"))
        chosen = {str(s["scan_id"]): s for s in m.get("series", [])
                  if _source_matches(str(s.get("source", "")), sources)}
        series.update(chosen)
        studies.update(str(s["study_instance_uid"]) for s in chosen.values() if s.get("study_instance_uid"))
        slices = root / "slices.csv"
        if slices.is_file():
            with open(slices, newline="", encoding="utf-8") as f:
                sops.update(row["slice_id"] for row in csv.DictReader(f) if row.get("scan_id") in chosen)
    return TrainingUids(frozenset(studies), frozenset(series), frozenset(sops), tuple(sources or ()))


def write_training_uids(folder: str | Path, uids: TrainingUids) -> dict[str, Any]:
    """Write ``training_uids.json`` into the bundle ``folder``; returns the manifest entry."""
    from ichd.utils.files import atomic_write_text

    text = json.dumps(uids.to_dict(), indent=1) + "\n"
    atomic_write_text(Path(folder) / TRAINING_UIDS_FILE, text)
    return {"path": TRAINING_UIDS_FILE, "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "n_studies": len(uids.studies), "n_series": len(uids.series),
            "n_sop_instances": len(uids.sop_instances)}


def add_training_uids(bundle_dir: str | Path, uids: TrainingUids) -> dict[str, Any]:
    """Add (or replace) the training UIDs of an existing bundle: the file and its manifest key; nothing else of
    the manifest, and neither the weights nor their sha256, changes."""
    from ichd.utils.files import atomic_write_text

    root = Path(bundle_dir)
    path = root / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest[TRAINING_UIDS_KEY] = write_training_uids(root, uids)
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return manifest[TRAINING_UIDS_KEY]


def load_training_uids(bundle: Any) -> TrainingUids | None:
    """The training UIDs of a :class:`~ichd.models.bundled.BundledModel` (None when it records none); a file that
    is missing or whose sha256 differs from the manifest is a :class:`ModelError`."""
    entry = (getattr(bundle, "manifest", None) or {}).get(TRAINING_UIDS_KEY)
    if not entry:
        return None
    path = Path(bundle.root) / str(entry.get("path", TRAINING_UIDS_FILE))
    if not path.is_file():
        raise ModelError(f"model bundle {bundle.name!r}: {path.name} is missing",
                         hint="reinstall ichd or rebuild the bundle")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != entry.get("sha256"):
        raise ModelError(f"model bundle {bundle.name!r}: {path.name} does not match its sha256 in the manifest",
                         hint="the file was changed or damaged; reinstall ichd or rebuild the bundle")
    d = json.loads(raw.decode("utf-8"))
    return TrainingUids(frozenset(d.get("studies", [])), frozenset(d.get("series", [])),
                        frozenset(d.get("sop_instances", [])), tuple(d.get("sources", [])))


def provenance_block(uids: TrainingUids | None, series: CTSeries) -> dict[str, Any] | None:
    """The ``provenance`` of a result on ``series``: ``in_training_data`` (True/False), which UIDs matched, how
    many slices are training slices, and a note; None when the model records no training UIDs."""
    if uids is None:
        return None
    matched = []
    if series.study_instance_uid in uids.studies:
        matched.append("study")
    if series.series_instance_uid in uids.series or (series.meta or {}).get("source_series_instance_uid") in uids.series:
        matched.append("series")
    n_sop = sum(1 for u in series.sop_instance_uids if u.split("#")[0] in uids.sop_instances)
    if n_sop:
        matched.append("sop_instance")
    trained = bool(matched)
    if trained:
        what = {"study": "study", "series": "series", "sop_instance": f"{n_sop} of its {series.n_slices} slices"}
        note = ("This input is part of the model's training data (" + ", ".join(what[m] for m in matched)
                + " matched the UIDs the model was fitted on): its results are not an independent test.")
    else:
        note = "None of this input's study, series or slice UIDs is among the model's training data."
    return {"in_training_data": trained, "matched": matched, "n_training_slices": n_sop, "note": note}
