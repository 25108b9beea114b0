"""The second reader's label map as a DICOM Segmentation (highdicom), referencing the source CT slices.

One SEG instance in a new series of the source study (``SEG_SERIES_NUMBER``), BINARY, with up to four segments -
the BLAST-CT classes (:data:`ichd.inference.second_reader.CLASS_NAMES`) - coded with SNOMED CT: category
*Morphologically abnormal structure*; property type *Hemorrhage* for IPH (region *Brain*), EAH and IVH (region
*Brain ventricle*), *Edema* for perilesional oedema (region *Brain*). Every segment is listed even when empty, so a
reader sees what was looked for; frames without any voxel of a segment are left out (highdicom's
``omit_empty_frames``; an entirely empty map keeps all its empty frames, as highdicom does then). Each
frame's geometry and its Derivation/Source Image Sequence come from the source slice's header, which is re-read
(no pixels) from the input files: so a SEG is only written for DICOM input read from single-frame CT slices
(:func:`can_write_seg` says why not otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ichd import __version__
from ichd.types import CTSeries

#: Series number of the SEG (after the SC 9901 and SR 9902 series of ``dicom_out``).
SEG_SERIES_NUMBER = 9903
SEG_NAME = "seg.dcm"


def can_write_seg(series: CTSeries) -> str | None:
    """None when a SEG can reference ``series``' slices; else the reason it cannot."""
    from ichd.inference.dicom_out import is_valid_uid, split_frame

    if series.source_kind != "dicom" or not series.meta.get("files"):
        return "the input is not DICOM"
    if any(split_frame(u)[1] is not None for u in series.sop_instance_uids):
        return "the slices are frames of a multi-frame image"
    uids = [series.study_instance_uid, series.series_instance_uid, *series.sop_instance_uids]
    if not all(is_valid_uid(u) for u in uids):
        return "the input's UIDs are not valid DICOM UIDs"
    return None


def source_headers(series: CTSeries) -> list[Any]:
    """The headers (no pixel data) of every slice of ``series``, in slice order."""
    from ichd.inference.dicom_out import _PATIENT_STUDY_KEYWORDS
    from ichd.io.dicom import reference_dataset

    headers = []
    for i in range(series.n_slices):
        ds = reference_dataset(series, i)
        for kw in _PATIENT_STUDY_KEYWORDS:  # Type 2 attributes the SEG copies: empty where the source lacks them
            if kw not in ds:
                setattr(ds, kw, "")
        name = str(ds.PatientName)
        if name and "^" not in name and "=" not in name:
            ds.PatientName = name + "^"  # a one-component name is the family name (as dicom_out's SR and SCs)
        headers.append(ds)
    return headers


def segment_descriptions(algorithm_version: str) -> list[Any]:
    """The four segment descriptions (numbers 1..4 = BLAST-CT's label values)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from ichd.inference.second_reader import CLASS_NAMES, CLASS_TITLES

    algorithm = hd.AlgorithmIdentificationSequence(name="BLAST-CT", family=codes.DCM.ArtificialIntelligence,
                                                  version=algorithm_version[:64])
    property_type = {"iph": codes.SCT.Hemorrhage, "eah": codes.SCT.Hemorrhage, "oedema": codes.SCT.Edema,
                     "ivh": codes.SCT.Hemorrhage}
    region = {"iph": [codes.SCT.Brain], "eah": [], "oedema": [codes.SCT.Brain], "ivh": [codes.SCT.BrainVentricle]}
    out = []
    for number, name in enumerate(CLASS_NAMES, start=1):
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=CLASS_TITLES[name][:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=property_type[name], algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, anatomic_regions=region[name] or None,
            tracking_id=f"blast-ct-{name}", tracking_uid=hd.UID()))
    return out


def build_segmentation(labels: np.ndarray, headers: Sequence[Any], *, algorithm_version: str,
                       series_instance_uid: str | None = None) -> Any:
    """A highdicom ``Segmentation`` of ``labels`` ((z, rows, columns) uint8, values 0..4) on the slices whose
    ``headers`` are given (same order and size)."""
    import highdicom as hd

    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] != len(headers):
        raise ValueError(f"label map {labels.shape} does not match {len(headers)} source slices")
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    if labels.shape[1:] != (rows, cols):
        raise ValueError(f"label map slices {labels.shape[1:]} are not the source's {rows}x{cols}")
    if labels.max(initial=0) > 4:
        raise ValueError("label values must be 0..4")
    seg = hd.seg.Segmentation(
        source_images=list(headers), pixel_array=labels.astype(np.uint8), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(algorithm_version),
        series_instance_uid=series_instance_uid or hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ichd",
        manufacturer_model_name="ichd second reader: BLAST-CT", software_versions=__version__,
        device_serial_number="none", content_description="BLAST-CT lesions (research use only)",
        content_label="BLASTCT", series_description="ichd BLAST-CT lesion segmentation (research use only)",
        omit_empty_frames=True)
    source = headers[0]
    if str(seg.get("PatientIdentityRemoved", "")).upper() == "YES" and "DeidentificationMethod" not in seg \
            and "DeidentificationMethodCodeSequence" not in seg:
        # Type 1C once PatientIdentityRemoved is YES (copied from the source): the source's method, else say so
        seg.DeidentificationMethod = str(source.get("DeidentificationMethod") or
                                         "de-identified source; its method is not recorded in the source")[:64]
        if "DeidentificationMethodCodeSequence" in source:
            seg.DeidentificationMethodCodeSequence = source.DeidentificationMethodCodeSequence
    return seg


def write_segmentation(path: str | Path, labels: np.ndarray, series: CTSeries, *, algorithm_version: str,
                       notes: list[str] | None = None) -> Any:
    """Build the SEG for ``series`` and write it atomically to ``path``; returns the dataset.

    Source slices without a FrameOfReferenceUID (Type 1 in the CT IOD, but absent from some anonymised data, e.g.
    CQ500) get one new UID for the SEG, and a line in ``notes`` says so: the frames still reference their source
    slices by SOP Instance UID and carry the source's patient positions."""
    from ichd.utils.files import atomic_path

    why = can_write_seg(series)
    if why is not None:
        raise ValueError(f"no DICOM SEG: {why}")
    headers = source_headers(series)
    with_frame = sum("FrameOfReferenceUID" in h for h in headers)
    if with_frame == 0:
        import highdicom as hd

        frame = hd.UID()
        for h in headers:
            h.FrameOfReferenceUID = frame
        if notes is not None:
            notes.append(f"the source slices have no FrameOfReferenceUID: the SEG carries a new one ({frame}); its "
                         "frames reference the source slices by SOP Instance UID")
    lacking = [kw for kw in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
               if any(kw not in h for h in headers)]
    if lacking:
        raise ValueError(f"no DICOM SEG: the source slices lack {', '.join(lacking)}")
    seg = build_segmentation(labels, headers, algorithm_version=algorithm_version)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return seg
