"""Helpers for testing code that uses ichd: a synthetic CT DICOM factory (:mod:`ichd.testing.factories`).

Used by ichd's own tests, the bad-input corpus generator (``scripts/make_corpus.py``) and the fuzzing seeds
(``fuzz/``); importing it needs only numpy and pydicom (plus imagecodecs for JPEG lossless files).
"""
