"""ichd — intracranial hemorrhage detection and subtype classification on head CT.

The pipeline, one subpackage per stage (each depends only on the ones above it)::

    io -> preprocessing -> data -> models -> training -> evaluation -> explain -> inference -> service
                                                                                          cli on top

Importing :mod:`ichd` does no work: heavy dependencies (torch, pydicom, ...) load inside
the subpackages that need them.
"""

from ichd.constants import LABELS

__version__ = "0.1.0"

__all__ = ["LABELS", "__version__"]
