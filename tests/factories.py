"""Transitional re-export: the synthetic DICOM factory now lives in :mod:`ichd.testing.factories`."""

from ichd.testing.factories import *  # noqa: F403
