"""Help texts of the input guards (:mod:`ichd.inference.guards`), shared by ``ichd predict`` and ``ichd explain``
(both have ``--allow-contrast``)."""

from __future__ import annotations

#: ``--allow-contrast`` of ``predict`` and ``explain`` (one help text: the contrast message names the option).
ALLOW_CONTRAST_HELP = (
    "Call contrast-enhanced / CT-angiography series anyway. Without it such a series (detected from the image: "
    "iodine-bright vessels and sinuses inside the skull) gets the scan call 'not assessable' and a "
    "contrast_enhanced warning, because the model is for non-contrast head CT, where iodine looks like blood. It "
    "does not lift the other not-assessable reasons (localizer, not_head, non_axial, extreme_noise).")

#: ``--no-slabs`` of ``predict``.
NO_SLABS_HELP = (
    "Score the slices of a thin-slice series (spacing < 2.5 mm) one by one. By default such a series is read as "
    "slabs of about 5 mm (the mean HU of runs of consecutive slices: the models were trained on 5 mm slices); "
    "every slice then reports its slab's probabilities and the JSON lists the slabs.")
