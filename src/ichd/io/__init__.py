"""Read CT into :class:`~ichd.types.CTSeries`: DICOM (files, folders, zips, multi-frame), NIfTI, windowed images.

Use :func:`read_ct`; it picks the reader from the path (see :mod:`ichd.io.reader`).
"""

from ichd.io.reader import read_ct

__all__ = ["read_ct"]
