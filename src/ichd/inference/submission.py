"""The RSNA 2019 submission CSV of ``ichd predict --format rsna``.

Layout (the Kaggle "RSNA Intracranial Hemorrhage Detection" submission): header ``ID,Label``, then six rows per
image, one per subtype::

    ID,Label
    ID_000012eaf_any,0.012345
    ID_000012eaf_epidural,0.000321
    ...

**ID rule.** ``ID = <slice id>_<subtype>``, where the slice id is the image's SOPInstanceUID exactly as in
``prediction.json`` (``slices[].sop_instance_uid``; ``<SOPInstanceUID>#<frame>`` for a frame of a multi-frame
file, the generated slice id for non-DICOM input) and the subtype is one of :data:`ichd.constants.LABELS`.
RSNA images' SOPInstanceUIDs already start with ``ID_`` (``ID_000012eaf``), so for RSNA input this is exactly
Kaggle's ``ID_<hex>_<subtype>``. Nothing is added to or stripped from other UIDs (``1.2.840.113619..._any``):
readers of this format (:func:`ichd.data.labels.rsna_long_to_wide`, used by ``ichd evaluate`` and for RSNA's
``stage_2_train.csv``) take everything before the last ``_`` as the slice id, so the file reads back to the
same slice ids that labels tables and the predict JSON use; an added ``ID_`` would match no label.

Probabilities are written with 6 decimals, the precision of ``prediction.json``, so both files hold the same
values. Rows are sorted by ID; several series share one file.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from ichd.errors import InputError, ModelError
from ichd.types import Prediction

#: File name of the submission in ``--out``.
SUBMISSION_NAME = "submission.csv"
#: Header of the submission.
HEADER: tuple[str, str] = ("ID", "Label")
#: Decimals of the probabilities (as ``prediction.json``).
DECIMALS = 6


def submission_id(slice_id: str, label: str) -> str:
    """The row ID of one image and subtype: ``<slice id>_<subtype>`` (see the module docstring)."""
    return f"{slice_id}_{label}"


def submission_rows(predictions: Sequence[Prediction]) -> list[tuple[str, str]]:
    """``(ID, probability text)`` for every image x subtype of ``predictions``, sorted by ID.

    Raises:
        InputError: an image without a slice id, or one slice id in two places (e.g. the same SOPInstanceUID in
            two series): the file could not be read back unambiguously.
        ModelError: a probability that is not a finite number in [0, 1] (an ichd bug).
    """
    rows: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for pred in predictions:
        probs = pred.slice_probs
        if probs.ndim != 2 or probs.shape[0] != len(pred.sop_instance_uids) or probs.shape[1] != len(pred.labels):
            raise ModelError(f"series {pred.series_instance_uid}: slice probabilities of shape {probs.shape} do not "
                             f"match {len(pred.sop_instance_uids)} slice(s) x {len(pred.labels)} labels")
        for i, sop in enumerate(pred.sop_instance_uids):
            slice_id = str(sop).strip()
            if not slice_id or slice_id != str(sop):
                raise InputError(f"series {pred.series_instance_uid}: slice {i} has no usable SOPInstanceUID "
                                 f"({sop!r}) for the RSNA submission")
            if slice_id in seen:
                raise InputError(f"SOPInstanceUID {slice_id} occurs in more than one place (series "
                                 f"{seen[slice_id]} and {pred.series_instance_uid}): the RSNA submission needs "
                                 "one row per image and subtype",
                                 hint="predict the series separately (--series UID), or leave out --format rsna")
            seen[slice_id] = pred.series_instance_uid
            for j, label in enumerate(pred.labels):
                p = float(probs[i, j])
                if not math.isfinite(p) or p < 0.0 or p > 1.0:
                    raise ModelError(f"series {pred.series_instance_uid}: slice {slice_id} has probability {p!r} "
                                     f"for {label}")
                rows.append((submission_id(slice_id, label), f"{p:.{DECIMALS}f}"))
    rows.sort(key=lambda r: r[0])
    return rows


def submission_text(predictions: Sequence[Prediction]) -> str:
    """The whole CSV (header + rows, ``\\n`` line ends) for ``predictions``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(submission_rows(predictions))
    return buf.getvalue()


def write_submission(path: str | Path, predictions: Sequence[Prediction]) -> Path:
    """Write the submission of ``predictions`` to ``path`` atomically; returns the path."""
    from ichd.utils.files import atomic_write_text

    return atomic_write_text(path, submission_text(predictions))
