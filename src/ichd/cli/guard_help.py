"""Help texts of the input guards (:mod:`ichd.inference.guards`), shared by ``ichd predict`` and ``ichd explain``
(both have ``--allow-contrast``)."""

from __future__ import annotations

#: ``--allow-contrast`` of ``predict`` and ``explain`` (one help text: the contrast message names the option).
ALLOW_CONTRAST_HELP = (
    "Call contrast-enhanced / CT-angiography series anyway. Without it such a series (detected from the image: "
    "iodine-bright vessels and sinuses inside the skull) gets the scan call 'not assessable' and a "
    "contrast_enhanced warning, because the model is for non-contrast head CT, where iodine looks like blood. It "
    "does not lift the other not-assessable reasons (localizer, not_head, non_axial, extreme_noise).")

#: What ``predict --help`` and ``explain --help`` say about the input guards (:mod:`ichd.inference.guards`).
GUARDS_HELP = (
    "Input guards: slices without head tissue are not scored (P = 0, listed as skipped_slices). The scan call is "
    "'not assessable' (no finding called or explained, probabilities kept) for a contrast-enhanced series (see "
    "--allow-contrast), a localizer/scout image (localizer), an image larger than any head (not_head: body CT), "
    "non-axial slices (non_axial: a NIfTI stored sagittal/coronal, or anisotropic pixels) and a brain noise SD "
    "above 30 HU (extreme_noise). A series covering under 10 cm along z (short_coverage) and a BodyPartExamined "
    "naming no part of the head (body_part) only get a warning. DICOM localizers and non-axial reformats are "
    "skipped when read (exit code 2 when nothing else is left). Heat maps are drawn inside the head only.")
