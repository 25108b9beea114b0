"""Constants shared by every stage: label order, metric weights, CT windows, normalisation.

There is exactly one definition of each; import it from here.
"""

from __future__ import annotations

from typing import Final

#: Label order used everywhere (RSNA 2019 order): files, tensors, reports.
LABELS: Final[tuple[str, ...]] = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
NUM_CLASSES: Final[int] = len(LABELS)

#: Short names used in tables and plots.
LABEL_ABBREVIATIONS: Final[dict[str, str]] = {
    "any": "ANY",
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
}

#: RSNA 2019 weighted multi-label log loss weights ("any" counts twice), in LABELS order.
LABEL_WEIGHTS: Final[tuple[float, ...]] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)

#: Hounsfield value used for air / outside the field of view.
AIR_HU: Final[float] = -1024.0


#: The seed's three CT windows (level, width) in HU, in channel order.
SEED_WINDOWS: Final[dict[str, tuple[float, float]]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "soft_tissue": (40.0, 380.0),
}

#: CT-ICH JPG export windows (level, width) in HU.
CTICH_BRAIN_WINDOW: Final[tuple[float, float]] = (40.0, 120.0)
CTICH_BONE_WINDOW: Final[tuple[float, float]] = (700.0, 3200.0)

#: Per-channel mean / std of the seed (Burduja et al. 2020) for the three windows scaled to [0, 1].
SEED_MEAN: Final[tuple[float, float, float]] = (0.1738, 0.1433, 0.1970)
SEED_STD: Final[tuple[float, float, float]] = (0.3161, 0.2850, 0.3111)

#: Environment variable naming the shared data folder, and its default (relative to the CWD).
DATA_ENV_VAR: Final[str] = "ICHD_DATA"
DEFAULT_DATA_DIR: Final[str] = "../shared/data"
