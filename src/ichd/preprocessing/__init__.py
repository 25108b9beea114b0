"""HU -> CT windows -> resize -> normalise, and the on-disk cache of preprocessed scans.

Modules: :mod:`.windows` (window maths), :mod:`.resize`, :mod:`.normalize`, :mod:`.config`
(:class:`~ichd.preprocessing.config.PreprocessConfig`), :mod:`.pipeline` (``preprocess_series``),
:mod:`.transforms` (MONAI-style array and dict transforms), :mod:`.cache` (``build_cache`` / ``open_cache``).
"""
