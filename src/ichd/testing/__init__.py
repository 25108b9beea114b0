"""Helpers for testing code that uses ichd: a synthetic CT DICOM factory (:mod:`ichd.testing.factories`), a real
``ichd serve`` subprocess (:mod:`ichd.testing.server`), a load generator for it (:mod:`ichd.testing.service_load`)
and a real Orthanc PACS (:mod:`ichd.testing.orthanc`: configuration, REST API, series made ready to store).

Used by ichd's own tests, the bad-input corpus generator (``scripts/make_corpus.py``), the fuzzing seeds (``fuzz/``)
and ``benchmarks/service_load.py``; importing the factory needs only numpy and pydicom (plus imagecodecs for JPEG
lossless files), the server helpers also ``httpx2`` (a dev dependency).
"""
