"""What ichd knows about its training data sources: content, counts, licence/terms and citation.

The model bundle builder (:mod:`ichd.inference.bundle_build`) writes the model card's "Training data and licence"
section, the weights' licence and the data-dependent "Known limits" from these descriptions. The facts come from
the data folder's READMEs (``shared/data/README.md``, ``shared/data/rsna-series/README.md``); keep them in step.
A source that is not listed here gets a generic description that says its provenance is not recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataSource:
    """One training data source as the model card describes it.

    ``licence_kind`` is ``"attribution"`` (CC BY-like: weights may be shared with attribution),
    ``"non-commercial"`` (weights derived from it inherit a research/non-commercial restriction) or ``"unknown"``.
    """

    name: str
    title: str
    #: Card text after the title: what the data is and its counts (without licence and citation).
    description: str
    #: Short name used in licence and limit sentences (e.g. "CT-ICH").
    short: str
    licence: str
    licence_kind: str
    citation: str
    patients: int | None = None
    slices: int | None = None
    #: Patients with any hemorrhage (for the prevalence limit).
    positive_patients: int | None = None
    #: True when the pixels are real scanner HU (DICOM); False when reconstructed; None when unknown.
    real_hu: bool | None = None
    #: Data-dependent "Known limits" bullets.
    limits: tuple[str, ...] = field(default_factory=tuple)
    #: One-line summary for the manifest's ``training_data``.
    summary: str = ""


CT_ICH = DataSource(
    name="ct-ich",
    title="CT-ICH v1.0.0",
    short="CT-ICH",
    description=(
        "PhysioNet dataset of Hssayeni et al.: 82 non-contrast head CTs of traumatic brain injury patients "
        "from one institution (patients 049-130), 2501 axial slices with per-slice subtype labels; 36 patients "
        "with hemorrhage. The dataset ships brain-window (L40/W120) and bone-window (L700/W3200) JPGs only: ichd "
        "reconstructs Hounsfield units from the two windows (`ichd.io.images.ctich_to_hu`: about 0.5 HU steps "
        "inside the brain window [-20, 100] HU, about 12.5 HU steps outside it, saturated beyond the bone window) "
        "and then applies the model's own windows."),
    licence="CC BY 4.0",
    licence_kind="attribution",
    citation=("Hssayeni M. D. et al., Intracranial Hemorrhage Segmentation Using a Deep Convolutional Model, "
              "Data 2020, 5(1):14, doi:10.3390/data5010014; dataset doi:10.13026/w8q8-ky94 (PhysioNet)"),
    patients=82,
    slices=2501,
    positive_patients=36,
    real_hu=False,
    limits=(
        ("CT-ICH: one institution and one dataset; subtypes have 4-21 positive patients each (subarachnoid 7, "
         "intraventricular 5, subdural 4 patients)."),
        ("CT-ICH: **HU reconstructed from JPG windows**, not read from DICOM (quantised inside the brain window, "
         "coarse outside it)."),
    ),
    summary="CT-ICH v1.0.0 (PhysioNet, Hssayeni et al. 2020): 82 patients, 2501 slices, JPG brain+bone windows "
            "(HU reconstructed); CC BY 4.0",
)

RSNA_SERIES = DataSource(
    name="rsna-series",
    title="rsna-series (RSNA 2019)",
    short="RSNA 2019",
    description=(
        "20 whole axial head-CT series (20 patients, one series each) from the training set of the "
        "RSNA Intracranial Hemorrhage Detection challenge 2019, as DICOM with real scanner HU; 684 slices, of "
        "which 676 are used (ingest drops the 8 duplicate-position slices of one series); 6 series with "
        "hemorrhage (59 positive slices), no epidural hemorrhage, intraventricular and subdural hemorrhage in one "
        "series each; 3 slices with missing labels are masked out of the loss. The files come from a third-party "
        "GitHub copy of the RSNA data (not from RSNA or Kaggle directly); the labels were cleaned against "
        "independent public copies of the RSNA annotation."),
    licence=("RSNA 2019 terms: non-commercial use only (academic research and education), no attempt to identify "
             "or contact the subjects, citation required when the data is shared"),
    licence_kind="non-commercial",
    citation=("Flanders A. E. et al., Construction of a Machine Learning Dataset through Collaboration: The RSNA "
              "2019 Brain CT Hemorrhage Challenge, Radiology: Artificial Intelligence 2020;2(3):e190211, "
              "doi:10.1148/ryai.2020190211"),
    patients=20,
    slices=676,
    positive_patients=6,
    real_hu=True,
    limits=(
        ("RSNA 2019 (rsna-series): 20 patients, 6 with hemorrhage, no epidural hemorrhage, intraventricular and subdural "
         "hemorrhage in one series each, so subtype outputs on DICOM input rest on very few patients."),
    ),
    summary="rsna-series (RSNA 2019 challenge training set, third-party GitHub copy): 20 patients, 676 of 684 "
            "DICOM slices (real HU), 3 missing labels masked; RSNA terms: non-commercial research/education only",
)

#: Known sources by the name of their folder in the shared data folder.
KNOWN_SOURCES: dict[str, DataSource] = {s.name: s for s in (CT_ICH, RSNA_SERIES)}


def describe_source(name: str) -> DataSource:
    """The description of source ``name``; a generic one (provenance not recorded) for an unknown name."""
    known = KNOWN_SOURCES.get(name)
    if known is not None:
        return known
    return DataSource(
        name=name, title=name, short=name,
        description=("provenance not recorded in ichd (no description of this source is known: its content, "
                     "counts, licence and citation are not stated here)."),
        licence="not recorded", licence_kind="unknown", citation="not recorded",
        summary=f"{name}: provenance not recorded")


def weights_licence(sources: Sequence[DataSource]) -> str:
    """The terms under which weights derived from ``sources`` may be shared (the most restrictive source wins)."""
    if not sources:
        return "not determined: the bundle does not record its training data"
    unknown = [s.name for s in sources if s.licence_kind == "unknown"]
    attribution = [s for s in sources if s.licence_kind == "attribution"]
    restricted = [s for s in sources if s.licence_kind == "non-commercial"]
    attr_text = " and ".join(f"{s.short}'s {s.licence} attribution" for s in attribution)
    if unknown:
        return (f"not determined: the terms of {', '.join(unknown)} are not recorded; check them before "
                "sharing or using these weights")
    if restricted:
        names = ", ".join(s.short for s in restricted)
        text = f"research and non-commercial use only ({names} terms)"
        return text + (f", with {attr_text}" if attr_text else "")
    licences = sorted({s.licence for s in attribution})
    return " + ".join(licences) + f" (derived from {', '.join(s.short for s in attribution)}; attribution required)"
