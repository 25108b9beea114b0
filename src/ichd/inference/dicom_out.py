"""DICOM-native results: a Comprehensive SR with the scan-level findings and Secondary Capture overlays.

Written with highdicom, so the objects are valid instances a PACS can store next to the source study:

* **Secondary Capture** (``SCImage``), one per shown slice: the slice in the brain window with the Grad-CAM heat
  map blended in (RGB, no burned-in text), in a new series of the source study. Each references its source CT
  slice (Source Image Sequence) when the input was DICOM with valid UIDs.
* **Comprehensive SR**, in another new series: algorithm name and version, a disclaimer, and per label a
  *Finding* (SNOMED CT "Intracranial hemorrhage" for ``any``; codes of the private scheme ``99ICHD`` for the
  subtypes, declared in the Coding Scheme Identification Sequence) with *Presence of property*
  (present/absent at the model's operating threshold; *indeterminate* for every label of a not-assessable scan,
  e.g. a contrast-enhanced series), *Probability*, the threshold, the best-illustrating SC image and, for DICOM
  input, the most probable source slice (INFERRED FROM). Comments say when the scan is not assessable, which
  slices were not scored (no head tissue) and when the input is in the model's training data (:func:`sr_notes`).

Patient and study attributes are copied from one source header when the input is DICOM (so the results file
under the right patient); for other input (PNG/JPG, NIfTI, DICOM without valid UIDs) a new study UID is
generated and the patient module is left empty, and a warning says so.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichd import __version__
from ichd.constants import LABEL_ABBREVIATIONS
from ichd.inference.evidence import SliceEvidence
from ichd.types import Prediction

#: Private coding scheme for the hemorrhage subtypes (no SNOMED CT codes for them ship with pydicom).
PRIVATE_SCHEME = "99ICHD"
#: Series numbers of the new series (high, to sort after the scanner's series).
SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
MANUFACTURER = "ichd"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

_PATIENT_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                           "StudyTime", "ReferringPhysicianName", "AccessionNumber", "StudyID")


@dataclass(frozen=True)
class DicomContext:
    """Where the outputs belong.

    Attributes:
        study_instance_uid: study of the source (or a new one for non-DICOM input).
        source_series_instance_uid: the source series (None when it is not a DICOM series).
        source_sop_class_uid: SOP class of the source slices (None when not DICOM).
        reference: a dataset with the patient/study module to copy (from a source header), or None.
        patient_orientation: (row, column) direction letters of the displayed slices, e.g. ("L", "P").
    """

    study_instance_uid: str
    source_series_instance_uid: str | None
    source_sop_class_uid: str | None
    reference: Any | None
    patient_orientation: tuple[str, str] = ("L", "P")

    @property
    def references_source(self) -> bool:
        return self.source_series_instance_uid is not None and self.source_sop_class_uid is not None


_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(uid: str | None) -> bool:
    """True for a syntactically valid DICOM UID (numeric components without leading zeros, at most 64 chars)."""
    return bool(uid) and len(str(uid)) <= 64 and _UID_RE.fullmatch(str(uid)) is not None


def split_frame(slice_uid: str) -> tuple[str, int | None]:
    """``"<SOPInstanceUID>#<frame>"`` (a frame of a multi-frame image, as the reader names it) -> (uid, frame);
    a plain SOPInstanceUID -> (uid, None)."""
    uid, sep, frame = slice_uid.partition("#")
    return (uid, int(frame)) if sep and frame.isdigit() else (slice_uid, None)


def _letter(v: Sequence[float]) -> str:
    """The DICOM patient-orientation letter of a direction's dominant LPS component (highdicom takes one letter
    per direction, so a tilted column direction like P+F is reported as its dominant P)."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    k = int(np.argmax(np.abs(np.asarray(v, dtype=float))))
    return letters[k][0] if v[k] > 0 else letters[k][1]


def orientation_letters(image_orientation: Sequence[float] | None) -> tuple[str, str]:
    """(row, column) letters from ImageOrientationPatient; ("L", "P") (standard axial display) when unknown."""
    if not image_orientation or len(image_orientation) != 6:
        return ("L", "P")
    iop = [float(x) for x in image_orientation]
    return (_letter(iop[:3]), _letter(iop[3:]))


def _reference_for(ctx: DicomContext) -> Any:
    """A dataset holding exactly the patient/study attributes to copy (empty values where unknown)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.StudyInstanceUID = ctx.study_instance_uid
    src = ctx.reference
    for kw in _PATIENT_STUDY_KEYWORDS:
        value = getattr(src, kw, "") if src is not None else ""
        setattr(ds, kw, value if value is not None else "")
    name = str(ds.PatientName)
    if name and "^" not in name and "=" not in name:
        # a single-component name is the family name; DICOM's trailing caret says so explicitly (highdicom
        # otherwise warns, on every result, that "CQ500-CT-1" is unlikely to be a person name)
        ds.PatientName = name + "^"
    return ds


def _slice_stub(ref: Any, ctx: DicomContext, sop_instance_uid: str) -> Any:
    """Minimal dataset standing for one source CT slice (used as SR evidence)."""
    import copy

    ds = copy.deepcopy(ref)
    ds.SeriesInstanceUID = ctx.source_series_instance_uid
    ds.SOPClassUID = ctx.source_sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.Modality = "CT"
    return ds


def _finding_code(label: str):
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    if label == "any":
        return codes.SCT.IntracranialHemorrhage
    meaning = f"{label.capitalize()} hemorrhage"
    return CodedConcept(LABEL_ABBREVIATIONS[label], PRIVATE_SCHEME, meaning)


def _overlay_rgb(ev: SliceEvidence) -> np.ndarray:
    from ichd.explain.overlay import BRAIN_WINDOW, display_image, overlay

    if ev.cam is None:
        gray = np.clip(np.round(display_image(ev.image_hu, BRAIN_WINDOW) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return overlay(ev.image_hu, ev.cam, window=BRAIN_WINDOW, pixel_spacing=ev.pixel_spacing)


def build_secondary_captures(pred: Prediction, evidence: Sequence[SliceEvidence], ctx: DicomContext, *,
                             series_instance_uid: str | None = None) -> list[Any]:
    """One ``SCImage`` per evidence slice (brain window + the evidence map overlay), in a new series."""
    import highdicom as hd

    ref = _reference_for(ctx)
    series_uid = series_instance_uid or hd.UID()
    out = []
    for k, ev in enumerate(evidence, start=1):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref, _overlay_rgb(ev), photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
            series_instance_uid=series_uid, series_number=SC_SERIES_NUMBER, sop_instance_uid=hd.UID(),
            instance_number=k, manufacturer=MANUFACTURER, patient_orientation=ctx.patient_orientation,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
        sc.BodyPartExamined = "HEAD"  # unpaired: Laterality (General Series, Type 2C) stays absent
        sc.SeriesDescription = "ichd evidence overlays (research use only)"
        sc.BurnedInAnnotation = "NO"
        sc.ImageType = ["DERIVED", "SECONDARY"]
        heat = ({"lesion": "lesion map (per-pixel hemorrhage probability, trained on masks)"}.get(
            ev.map_method or "", "Grad-CAM heat map of the slice CNN") if ev.cam is not None else "no heat map")
        sc.DerivationDescription = (f"slice {ev.index}, brain window L40/W80, {heat} for {ev.label} "
                                    f"(p={ev.probability:.3f}); ichd {__version__}, model {pred.model.get('name')}")[:1024]
        sc.ImageComments = "Research software, not a medical device. Heat maps are not segmentations."
        sc.SoftwareVersions = __version__
        if ctx.references_source:
            from pydicom.dataset import Dataset

            uid, frame = split_frame(pred.sop_instance_uids[ev.index])
            item = Dataset()
            item.ReferencedSOPClassUID = ctx.source_sop_class_uid
            item.ReferencedSOPInstanceUID = uid
            if frame is not None:
                item.ReferencedFrameNumber = frame
            sc.SourceImageSequence = [item]
        out.append(sc)
    return out


def sr_notes(pred: Prediction) -> list[str]:
    """The SR's extra comments: not-assessable scan, slices not scored, thin slices read as slabs, training
    data."""
    notes = []
    if pred.not_assessable:
        from ichd.inference.guards import not_assessable_text

        notes.append(f"Scan call: NOT ASSESSABLE ({pred.not_assessable}): {not_assessable_text(pred)}. No finding "
                     "is called, the probabilities are for reference only.")
    if pred.skipped_slices:
        idx = ", ".join(str(int(s["index"])) for s in pred.skipped_slices[:40])
        notes.append(f"{len(pred.skipped_slices)} slices without head tissue were not scored (probability 0): "
                     f"{idx}{' ...' if len(pred.skipped_slices) > 40 else ''}")
    if pred.slabs:
        notes.append(next((w.message for w in pred.warnings if w.code == "thin_slices_as_slabs"),
                          f"Thin slices read as {len(pred.slabs)} slabs of about 5 mm."))
    prov = pred.provenance or {}
    if prov.get("in_training_data"):
        notes.append(str(prov.get("note", "This input is part of the model's training data.")))
    return notes


def build_sr(pred: Prediction, evidence: Sequence[SliceEvidence], scs: Sequence[Any], ctx: DicomContext, *,
             series_instance_uid: str | None = None) -> Any:
    """The Comprehensive SR with the scan-level findings (see the module docstring)."""
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from highdicom.sr import (
        CodeContentItem,
        CodedConcept,
        ContainerContentItem,
        ContentSequence,
        ImageContentItem,
        NumContentItem,
        TextContentItem,
    )
    from pydicom.sr.codedict import codes

    ratio = CodedConcept("{ratio}", "UCUM", "ratio")
    positive = pred.scan_positive
    sc_by_label: dict[str, Any] = {}
    for ev, sc in zip(evidence, scs):
        sc_by_label.setdefault(ev.label, sc)
    ref = _reference_for(ctx)
    stubs: dict[str, Any] = {}
    findings = []
    for j, lab in enumerate(pred.labels):
        finding = CodeContentItem(name=codes.DCM.Finding, value=_finding_code(lab), relationship_type="CONTAINS")
        props = [
            CodeContentItem(name=codes.DCM.PresenceOfProperty,
                            value=(codes.SCT.Indeterminate if pred.not_assessable
                                   else codes.SCT.Present if positive[lab] else codes.SCT.Absent),
                            relationship_type="HAS PROPERTIES"),
            NumContentItem(name=codes.DCM.Probability, value=round(float(pred.scan_probs[j]), 6), unit=ratio,
                           relationship_type="HAS PROPERTIES"),
            NumContentItem(name=CodedConcept("THRESHOLD", PRIVATE_SCHEME, "Operating threshold"),
                           value=round(float(pred.thresholds[lab]), 6), unit=ratio,
                           relationship_type="HAS PROPERTIES"),
        ]
        if lab in sc_by_label:
            sc = sc_by_label[lab]
            props.append(ImageContentItem(name=codes.DCM.BestIllustrationOfFinding,
                                          referenced_sop_class_uid=sc.SOPClassUID,
                                          referenced_sop_instance_uid=sc.SOPInstanceUID,
                                          relationship_type="HAS PROPERTIES"))
        if ctx.references_source and positive[lab] and not pred.not_assessable:
            uid, frame = split_frame(pred.sop_instance_uids[int(np.argmax(pred.slice_probs[:, j]))])
            stubs.setdefault(uid, _slice_stub(ref, ctx, uid))
            props.append(ImageContentItem(name=codes.DCM.SourceImage, referenced_sop_class_uid=ctx.source_sop_class_uid,
                                          referenced_sop_instance_uid=uid, referenced_frame_numbers=frame,
                                          relationship_type="INFERRED FROM"))
        finding.ContentSequence = ContentSequence(props)
        findings.append(finding)
    container = ContainerContentItem(name=codes.DCM.Findings, relationship_type="CONTAINS")
    container.ContentSequence = ContentSequence(findings)
    comment = ("Automated result of ichd, research software, not a medical device: do not use for diagnosis. "
               "Probabilities come from the model named above; presence is probability >= operating threshold.")
    notes = sr_notes(pred)
    root = ContainerContentItem(name=CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = ContentSequence([
        TextContentItem(name=codes.DCM.AlgorithmName, value=str(pred.model.get("name", ""))[:64] or "ichd",
                        relationship_type="CONTAINS"),
        TextContentItem(name=codes.DCM.AlgorithmVersion,
                        value=f"{pred.model.get('version', '')} (ichd {__version__})"[:64],
                        relationship_type="CONTAINS"),
        TextContentItem(name=codes.DCM.Comment, value=comment, relationship_type="CONTAINS"),
        *[TextContentItem(name=codes.DCM.Comment, value=text, relationship_type="CONTAINS") for text in notes],
        container,
    ])
    # Every referenced instance is evidence; each carries the same copied patient/study module.
    evidence_ds = list(stubs.values()) + list(scs)
    if not evidence_ds:
        raise ValueError("an SR needs at least one Secondary Capture or source slice to reference")
    scheme = CodingSchemeIdentificationItem(designator=PRIVATE_SCHEME, name="ichd hemorrhage subtype codes",
                                            responsible_organization="ichd project")
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence_ds, content=root, series_instance_uid=series_instance_uid or hd.UID(),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False, coding_schemes=[scheme],
        series_description="ichd ICH findings (research use only)",
    )
    now = _dt.datetime.now()
    sr.ContentDate = now.strftime("%Y%m%d")
    sr.ContentTime = now.strftime("%H%M%S")
    sr.SoftwareVersions = __version__
    return sr


def write_dicom_outputs(out_dir: str | Path, pred: Prediction, evidence: Sequence[SliceEvidence],
                        ctx: DicomContext) -> list[Path]:
    """Write ``sr.dcm`` and ``sc-NNN.dcm`` (one per evidence slice) into ``out_dir``; returns the paths.

    Each file is written atomically. The caller stages the whole output folder (see
    :mod:`ichd.inference.run`), so a failure leaves no partial result set behind.
    """
    from ichd.utils.files import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scs = build_secondary_captures(pred, evidence, ctx)
    sr = build_sr(pred, evidence, scs, ctx)
    paths = []
    for k, sc in enumerate(scs, start=1):
        path = out / f"sc-{k:03d}.dcm"
        with atomic_path(path) as tmp:
            sc.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    path = out / "sr.dcm"
    with atomic_path(path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    paths.append(path)
    return paths
