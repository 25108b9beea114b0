"""``ichd predict`` as a library call: read an input, predict every series, write JSON / HTML / DICOM / RSNA results.

:func:`run_predict` is what the CLI runs. Outputs are all-or-nothing: every file is first written into a hidden
staging folder inside ``--out`` and moved into place only when all series and formats have succeeded, so an
error never leaves a partial result set; existing results are not overwritten unless ``overwrite`` is set.

Layout of ``--out`` (one series)::

    prediction.json   the versioned result (schema: resources/schemas/prediction-v2.schema.json)
    report.html       self-contained report
    dicom/sr.dcm, dicom/sc-001.dcm, ...
    submission.csv    (--format rsna) the RSNA 2019 submission: ID,Label rows ID_<sop>_<subtype>
                      (:mod:`ichd.inference.submission`)
    dicom/seg.dcm     (--second-reader blast-ct, DICOM input) the second reader's DICOM Segmentation
                      (:mod:`ichd.inference.dicom_seg`)

With ``--second-reader blast-ct`` (:mod:`ichd.inference.second_reader`) each series is also segmented by BLAST-CT:
its lesion volumes go into the JSON (``second_reader``) and the HTML (table + overlays), its label map into the SEG.

With several series in the input, each series gets the same layout in its own sub-folder named after its series
UID, and ``prediction.json`` at the top holds the array of all results; ``submission.csv`` stays one file at the
top holding the rows of every series.

When the input is the bundled demo study (``--demo`` or the path of the packaged demo folder), every result carries
a ``demo`` block and the HTML report a banner saying whether the study was in the model's training data
(:mod:`ichd.inference.demo`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ichd.errors import InputError
from ichd.inference.evidence import DEFAULT_MAX_FLAGGED, SliceEvidence
from ichd.inference.submission import SUBMISSION_NAME
from ichd.types import CTSeries, IngestWarning, Prediction
from ichd.utils.logging import get_logger

log = get_logger(__name__)

#: Output formats ``--format`` accepts.
FORMATS: tuple[str, ...] = ("json", "html", "dicom", "rsna")
#: Formats written when ``--out`` is given and ``--format`` is not.
DEFAULT_FORMATS: tuple[str, ...] = ("json", "html")
JSON_NAME = "prediction.json"
HTML_NAME = "report.html"
DICOM_DIR = "dicom"
STAGING_PREFIX = ".ichd-predict-"


@dataclass
class PredictOptions:
    """Options of one ``ichd predict`` run (see ``ichd predict --help``)."""

    model: str = "default"
    out: Path | None = None
    formats: tuple[str, ...] | None = None
    tta: bool = False
    gradcam: bool = True
    series_uid: str | None = None
    device: str | None = None
    window: str | None = None
    independent: bool = False
    allow_secondary_capture: bool = False
    strict: bool = False
    workers: int | None = None
    overwrite: bool = False
    batch_size: int = 16
    max_flagged: int = DEFAULT_MAX_FLAGGED
    allow_contrast: bool = False
    #: read thin-slice series (< 2.5 mm) as ~5 mm slabs (``--no-slabs``: False); a predictor passed to
    #: :func:`run_predict` keeps its own ``slabs`` setting
    slabs: bool = True
    #: ``--second-reader`` ("blast-ct" or None), its weights folder and weight files (``--blast-ct-models``,
    #: ``--blast-ct-ensemble``), and a callback ``(series_uid, done, total)`` called while it runs
    second_reader: str | None = None
    blast_ct_models: Path | None = None
    blast_ct_ensemble: str | None = None
    second_reader_progress: Callable[[str, int, int], None] | None = None


@dataclass
class SeriesResult:
    """What was predicted for one series."""

    prediction: Prediction
    evidence: list[SliceEvidence]
    result: dict[str, Any]
    folder: str  # relative output folder ("" for a single series)
    second_reading: Any = None  # ichd.inference.second_reader.SecondReading with --second-reader


@dataclass
class PredictRun:
    """The outcome: per-series results, the JSON text (object or array) and the files written."""

    results: list[SeriesResult]
    json_text: str
    files: list[Path] = field(default_factory=list)


def parse_formats(text: str | None, *, has_out: bool) -> tuple[str, ...]:
    """``"json,html"`` -> ("json", "html"); default json+html with an output folder, json alone without."""
    if text is None or not text.strip():
        return DEFAULT_FORMATS if has_out else ("json",)
    from ichd.errors import did_you_mean

    out: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in FORMATS:
            raise InputError(f"unknown output format {name!r}; {did_you_mean(name, FORMATS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise InputError(f"--format {text!r} names no format", hint="use e.g. --format json,html,dicom,rsna")
    if not has_out and set(out) - {"json"}:
        raise InputError(f"--format {','.join(out)} writes files: give an output folder with --out DIR",
                         hint="without --out only the JSON result is printed to stdout")
    return tuple(out)


def _safe_name(uid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", uid)[:120] or "series"


def select_series(series: list[CTSeries], uid: str | None) -> list[CTSeries]:
    """The series whose SeriesInstanceUID is ``uid`` (all when ``uid`` is None); :class:`InputError` when none."""
    if uid is None:
        return series
    chosen = [s for s in series if s.series_instance_uid == uid]
    if not chosen:
        listed = ", ".join(s.series_instance_uid for s in series[:10])
        raise InputError(f"--series {uid!r} is not in the input; it holds {len(series)} series: {listed}",
                         hint="`ichd ingest PATH` lists the series UIDs")
    return chosen


def _planned_files(n_series: int, formats: tuple[str, ...], folders: list[str]) -> list[str]:
    """Relative paths (files, and the dicom folders) the run will create."""
    paths = []
    if "json" in formats:
        paths.append(JSON_NAME)
    if "rsna" in formats:
        paths.append(SUBMISSION_NAME)
    for folder in folders:
        prefix = f"{folder}/" if folder else ""
        if "json" in formats and n_series > 1:
            paths.append(prefix + JSON_NAME)
        if "html" in formats:
            paths.append(prefix + HTML_NAME)
        if "dicom" in formats:
            paths.append(prefix + DICOM_DIR)
    return paths


def _check_out(out: Path, planned: list[str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a folder", hint="give a folder path")
    existing = [p for p in planned if (out / p).exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise InputError(f"{str(out)!r} already holds results ({shown})",
                         hint="choose another --out folder, or pass --overwrite to replace them")


def _dicom_context(series: CTSeries) -> tuple[Any, IngestWarning | None]:
    """Where the DICOM results go: the source study for DICOM input with valid UIDs, else a new study."""
    import highdicom as hd

    from ichd.inference.dicom_out import DicomContext, is_valid_uid, orientation_letters, split_frame

    meta = series.meta or {}
    source_series = meta.get("source_series_instance_uid") or series.series_instance_uid
    dicom_ok = (series.source_kind == "dicom" and is_valid_uid(series.study_instance_uid)
                and is_valid_uid(source_series) and all(is_valid_uid(split_frame(u)[0]) for u in series.sop_instance_uids))
    orientation = orientation_letters(meta.get("image_orientation"))
    if dicom_ok:
        reference = _source_header(series)
        note = None
        if reference is None:
            note = IngestWarning("dicom_patient_module_empty",
                                 "the source DICOM header could not be re-read: the SR and Secondary Captures "
                                 "reference the source study and series but carry an empty patient module")
        return DicomContext(study_instance_uid=series.study_instance_uid, source_series_instance_uid=source_series,
                            source_sop_class_uid=str(meta.get("sop_class_uid") or "1.2.840.10008.5.1.4.1.1.2"),
                            reference=reference, patient_orientation=orientation), note
    study = str(hd.UID())
    why = ("the input is not DICOM" if series.source_kind != "dicom"
           else "the input's UIDs are not valid DICOM UIDs")
    note = IngestWarning("generated_study_uid",
                         f"{why}: the DICOM results are in a new study {study} with an empty patient module")
    return DicomContext(study_instance_uid=study, source_series_instance_uid=None, source_sop_class_uid=None,
                        reference=None, patient_orientation=orientation), note


def _source_header(series: CTSeries) -> Any | None:
    """One source slice's header (no pixels), to copy the patient/study module into the outputs; None (with the
    reason logged, never patient data) when it cannot be re-read, e.g. the files were moved meanwhile."""
    from ichd.errors import IchdError
    from ichd.io.dicom import reference_dataset

    try:
        return reference_dataset(series, 0)
    except IchdError as e:
        log.warning("could not re-read a source DICOM header: %s", e.message)
        return None


def _model_info(predictor: Any) -> dict[str, Any]:
    """Model facts for the HTML report (bundle manifest + model card, or the checkpoint's identity)."""
    ident = predictor.identity
    info: dict[str, Any] = {"name": ident.name, "version": ident.version, "sha256": ident.sha256,
                            "scan_rule": predictor.scan_rule}
    if predictor.bundle is not None:
        b = predictor.bundle.info()
        for key in ("description", "training_data", "license", "intended_use", "threshold_policy"):
            info[key] = b.get(key)
        info["model_card_text"] = predictor.bundle.model_card()
    else:
        info["description"] = f"checkpoint {ident.path}"
    return info


def _stage_dir(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _commit(stage: Path, out: Path, planned: list[str]) -> list[Path]:
    """Move the staged files into ``out`` (replacing the planned paths, which were checked before).

    Staged files are private temporary files (mode 0600); results get the usual ``0666 & ~umask`` mode.
    """
    mode = 0o666 & ~_current_umask()
    for rel in planned:
        target = out / rel
        if target.is_dir() and (stage / rel).exists():
            shutil.rmtree(target)
    moved = []
    for root, _dirs, files in os.walk(stage):
        for name in sorted(files):
            src = Path(root) / name
            dest = out / src.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(src, mode)
            os.replace(src, dest)
            moved.append(dest)
    return moved


def run_predict(input_path: str | os.PathLike[str], opts: PredictOptions, *, predictor: Any = None,
                second_reader: Any = None) -> PredictRun:
    """Predict every series of ``input_path`` (or the one ``opts.series_uid`` names) and write the results.

    Args:
        input_path: anything :func:`ichd.io.read_ct` reads.
        opts: the options.
        predictor: an already loaded :class:`~ichd.inference.predictor.Predictor` (else loaded from
            ``opts.model``).
        second_reader: an already loaded second reader (:class:`~ichd.inference.second_reader.BlastCT`), else
            loaded from ``opts.second_reader`` when set.

    Raises:
        InputError / ModelError: bad input, bad options, unknown model; nothing is written then.
    """
    from ichd.inference.report_json import dumps, validate_result
    from ichd.io.reader import read_ct

    formats = opts.formats if opts.formats is not None else parse_formats(None, has_out=opts.out is not None)
    if opts.out is None and set(formats) - {"json"}:
        raise InputError("HTML, DICOM and RSNA submission results are files: give an output folder with --out DIR")
    if predictor is None:
        from ichd.inference.predictor import Predictor
        from ichd.models.bundled import model_for_input

        predictor = Predictor.load(model_for_input(opts.model, windowed=opts.window is not None), device=opts.device,
                                   batch_size=opts.batch_size, slabs=opts.slabs)
    if second_reader is None and opts.second_reader:
        from ichd.inference.second_reader import load_reader

        second_reader = load_reader(opts.second_reader, opts.blast_ct_models, opts.blast_ct_ensemble)
    t = time.perf_counter()
    all_series = read_ct(input_path, window=opts.window, strict=opts.strict, independent=opts.independent,
                         allow_secondary_capture=opts.allow_secondary_capture, workers=opts.workers)
    t_read = time.perf_counter() - t
    chosen = select_series(all_series, opts.series_uid)
    demo = _demo_for(input_path, predictor)
    folders = [""] if len(chosen) == 1 else [_safe_name(s.series_instance_uid) for s in chosen]
    if len(set(folders)) != len(folders):
        folders = [f"{k:02d}-{f}" for k, f in enumerate(folders, start=1)]
    planned = _planned_files(len(chosen), formats, folders)
    if opts.out is not None:
        _check_out(Path(opts.out), planned, opts.overwrite)
    need_evidence = bool({"html", "dicom"} & set(formats))
    created_out = opts.out is not None and not Path(opts.out).exists()
    stage = _stage_dir(Path(opts.out)) if opts.out is not None else None
    results: list[SeriesResult] = []
    try:
        for series, folder in zip(chosen, folders):
            results.append(_predict_one(predictor, series, folder, formats, opts, stage, t_read, need_evidence,
                                        demo=demo, reader=second_reader))
        data: Any = results[0].result if len(results) == 1 else [r.result for r in results]
        validate_result(data)
        text = dumps(data)
        files: list[Path] = []
        if stage is not None:
            from ichd.utils.files import atomic_write_text

            if "json" in formats:
                atomic_write_text(stage / JSON_NAME, text)
                if len(results) > 1:
                    for r in results:
                        atomic_write_text(stage / r.folder / JSON_NAME, dumps(r.result))
            if "rsna" in formats:
                from ichd.inference.submission import write_submission

                write_submission(stage / SUBMISSION_NAME, [r.prediction for r in results])
            files = _commit(stage, Path(opts.out), planned)  # type: ignore[arg-type]
    except BaseException:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
            if created_out:
                with contextlib.suppress(OSError):
                    Path(opts.out).rmdir()  # type: ignore[arg-type]  # only if still empty
        raise
    if stage is not None:
        shutil.rmtree(stage, ignore_errors=True)
    return PredictRun(results=results, json_text=text, files=files)


def _demo_for(input_path: str | os.PathLike[str], predictor: Any) -> dict[str, Any] | None:
    """The ``demo`` block when ``input_path`` is the bundled demo study, else None."""
    from ichd.inference.demo import demo_block, is_demo_path

    if not is_demo_path(input_path):
        return None
    block = demo_block(getattr(predictor, "bundle", None))
    log.warning("%s", block["note"])
    return block


def operating_thresholds(predictor: Any, *, independent: bool) -> tuple[dict[str, float], IngestWarning | None]:
    """The thresholds the calls use, and a note for the result.

    Whole scans use the model's (scan-level) thresholds. With ``independent`` (``--independent``: every slice is
    its own one-slice scan) a bundle's ``slice_thresholds`` (chosen on slice-level OOF predictions at the same
    policy, see :mod:`ichd.inference.bundle_build`) are used when the manifest has them; else the scan-level
    ones, with a note saying so.
    """
    from ichd.constants import LABELS

    bundle = getattr(predictor, "bundle", None)
    scan = dict(predictor.thresholds)
    if not independent:
        return scan, None
    manifest = getattr(bundle, "manifest", None) or {}
    slice_t = manifest.get("slice_thresholds")
    if isinstance(slice_t, dict) and all(isinstance(slice_t.get(lab), (int, float)) for lab in LABELS):
        return {lab: float(slice_t[lab]) for lab in LABELS}, IngestWarning(
            "slice_operating_point", "each slice is predicted as its own scan (--independent): the calls use the "
            "model's slice-level thresholds, chosen on slice-level out-of-fold predictions")
    return scan, IngestWarning(
        "no_slice_operating_point", "each slice is predicted as its own scan (--independent), but the model has no "
        "slice-level thresholds: the calls use its scan-level thresholds, which were chosen for whole scans")


def _predict_one(predictor: Any, series: CTSeries, folder: str, formats: tuple[str, ...], opts: PredictOptions,
                 stage: Path | None, t_read: float, need_evidence: bool,
                 demo: dict[str, Any] | None = None, reader: Any = None) -> SeriesResult:
    """Predict one series and write its HTML / DICOM files into the staging folder; returns its JSON result."""
    from ichd.inference.evidence import select_flagged
    from ichd.inference.report_json import prediction_to_dict

    t0 = time.perf_counter()
    pred = predictor.predict_series(series, tta=opts.tta, gradcam=False, allow_contrast=opts.allow_contrast)
    pred.thresholds, note = operating_thresholds(predictor, independent=opts.independent)
    if note is not None:
        pred.warnings.append(note)
    evidence: list[SliceEvidence] = []
    if need_evidence:
        t = time.perf_counter()
        evidence = predictor.explain(series, pred, max_slices=opts.max_flagged, gradcam=opts.gradcam,
                                     at_least_one="dicom" in formats)
        if opts.gradcam:
            pred.timing_s["gradcam"] = time.perf_counter() - t
    flagged = select_flagged(pred, opts.max_flagged)
    reading, block = _second_reading(reader, series, pred, opts) if reader is not None else (None, None)
    generated = series.source_kind != "dicom"
    pred.timing_s = {"read": t_read, **pred.timing_s}
    target = (stage / folder) if stage is not None and folder else stage
    if "dicom" in formats and target is not None:
        from ichd.inference.dicom_out import write_dicom_outputs

        t = time.perf_counter()
        ctx, note = _dicom_context(series)
        if note is not None:
            pred.warnings.append(note)
        write_dicom_outputs(target / DICOM_DIR, pred, evidence, ctx)
        if reading is not None and block is not None:
            _write_seg(target / DICOM_DIR, folder, series, pred, reading, block)
        pred.timing_s["dicom"] = time.perf_counter() - t
    if "html" in formats and target is not None:
        from ichd.inference.report_html import render_html
        from ichd.utils.files import atomic_write_text

        t = time.perf_counter()
        shown = [e for e in evidence if any(e.index == i for i, _, _ in flagged)]
        second = None
        if reading is not None and block is not None:
            from ichd.inference.second_reader import overlay_rgb, shown_slices

            second = {"block": block, "slices": [(i, overlay_rgb(series.hu[i], reading.labels[i])) for i in
                                                 shown_slices(reading.labels, [i for i, _, _ in flagged])]}
        html = render_html(pred, shown, model_info=_model_info(predictor), input_kind=series.source_kind,
                           generated_uids=generated, gradcam=opts.gradcam, demo=demo, second_reader=second)
        atomic_write_text(target / HTML_NAME, html)
        pred.timing_s["html"] = time.perf_counter() - t
    pred.timing_s["total"] = t_read + time.perf_counter() - t0
    from ichd.inference.dicom_out import orientation_letters

    iop = (series.meta or {}).get("image_orientation")
    result = prediction_to_dict(pred, flagged=flagged, input_kind=series.source_kind, generated_uids=generated,
                                demo=demo, source_files=series.source_files, second_reader=block,
                                display_orientation=orientation_letters(iop) if iop else None)
    return SeriesResult(prediction=pred, evidence=evidence, result=result, folder=folder, second_reading=reading)


def _second_reading(reader: Any, series: CTSeries, pred: Prediction,
                    opts: PredictOptions) -> tuple[Any, dict[str, Any] | None]:
    """Run the second reader on ``series``; (reading, JSON block), or (None, None) with a warning on ``pred``
    when the series cannot be segmented (one slice, no spacing)."""
    from ichd.inference.second_reader import NOTE

    uid = series.series_instance_uid
    callback = opts.second_reader_progress
    progress = (lambda done, total: callback(uid, done, total)) if callback is not None else None
    t = time.perf_counter()
    try:
        reading = reader.segment(series, progress=progress)
    except InputError as e:
        pred.warnings.append(IngestWarning("second_reader_skipped", e.message))
        return None, None
    pred.timing_s["second_reader"] = time.perf_counter() - t
    return reading, {**reading.to_dict(), "note": NOTE}


def _write_seg(dicom_dir: Path, folder: str, series: CTSeries, pred: Prediction, reading: Any,
               block: dict[str, Any]) -> None:
    """The second reader's DICOM SEG beside the SR (DICOM input only; otherwise a ``seg_not_written`` warning)."""
    from ichd.inference.dicom_seg import SEG_NAME, can_write_seg, write_segmentation

    why = can_write_seg(series)
    if why is None:
        notes: list[str] = []
        try:
            seg = write_segmentation(dicom_dir / SEG_NAME, reading.labels, series, algorithm_version=block["version"],
                                     notes=notes)
        except ValueError as e:
            why = str(e).removeprefix("no DICOM SEG: ")
        else:
            block["seg"] = {"file": f"{folder + '/' if folder else ''}{DICOM_DIR}/{SEG_NAME}",
                            "series_instance_uid": str(seg.SeriesInstanceUID),
                            "sop_instance_uid": str(seg.SOPInstanceUID)}
            pred.warnings.extend(IngestWarning("seg_new_frame_of_reference", n) for n in notes)
            return
    pred.warnings.append(IngestWarning("seg_not_written", f"no DICOM SEG of the second reader: {why}"))
