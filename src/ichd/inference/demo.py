"""The bundled demo study (``resources/demo``: CT-ICH patient 071) and what results on it must say.

CT-ICH patient 071 is one of the patients the shipped default model was fitted on, so its probabilities are not an
independent test. ``ichd predict`` marks results on the demo study with a ``demo`` block (JSON) and a banner (HTML):

* the input is the demo study when its path, with links resolved, is the packaged demo folder or lies inside it
  (``ichd predict --demo`` and ``ichd predict .../resources/demo`` alike);
* whether the study was in the training data comes from the model bundle's ``training_sources`` manifest key
  (:meth:`ichd.models.bundled.BundledModel.trained_on`); a model that does not list its training data (older
  bundles, plain checkpoints) gets "may have been".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ichd.paths import package_resource

#: Data source and patient of the demo study (names as in a bundle's ``training_sources``).
DEMO_SOURCE = "ct-ich"
DEMO_PATIENT = "071"
#: How results name the demo study.
DEMO_STUDY = "The bundled demo study (CT-ICH patient 071, CC BY 4.0)"

NOTE_IN_TRAINING = f"{DEMO_STUDY} was part of this model's training data; its results are not an independent test."
NOTE_UNKNOWN = (f"{DEMO_STUDY} may have been part of this model's training data (the model does not list its "
                f"training data); do not read its results as an independent test.")
NOTE_NOT_IN_TRAINING = (f"{DEMO_STUDY} was not part of this model's training data, according to the model's "
                        f"manifest.")


def demo_dir() -> Path:
    """The packaged demo study folder."""
    return package_resource("resources", "demo")


def is_demo_path(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` (links resolved) is the packaged demo folder or a file or folder inside it."""
    try:
        target = Path(path).expanduser().resolve()
        demo = demo_dir().resolve()
    except (OSError, RuntimeError):  # unreadable path or a link loop: not the demo
        return False
    return target == demo or target.is_relative_to(demo)


def demo_block(bundle: Any | None) -> dict[str, Any]:
    """The ``demo`` block of a result on the demo study, for the model ``bundle`` (a
    :class:`~ichd.models.bundled.BundledModel`, or None for a plain checkpoint)."""
    trained = bundle.trained_on(DEMO_SOURCE, DEMO_PATIENT) if bundle is not None else None
    note = {True: NOTE_IN_TRAINING, False: NOTE_NOT_IN_TRAINING, None: NOTE_UNKNOWN}[trained]
    return {"is_demo": True, "in_training_data": trained, "note": note}
