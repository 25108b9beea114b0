"""``ichd serve``: an HTTP service around ``ichd.inference`` with a persistent job store.

* :mod:`ichd.service.config` — :class:`ServiceConfig`, the token (``ICHD_TOKEN`` / ``--token-file``), bind checks.
* :mod:`ichd.service.store` — studies and jobs in SQLite (WAL) under the data folder.
* :mod:`ichd.service.runner` — :class:`StudyService`: data folder, worker pool, ``submit_study(files) -> Job``.
* :mod:`ichd.service.uploads` — receiving files; zip checks (traversal, symlinks, zip bombs).
* :mod:`ichd.service.render` — slice PNGs with optional Grad-CAM overlay.
* :mod:`ichd.service.app` — the FastAPI application (:func:`create_app`).
* :mod:`ichd.service.dicom_node` — the DICOM node of ``ichd listen`` / ``ichd serve --dicom-port`` (Storage SCP,
  series completion, forwarding), with :mod:`~ichd.service.dicom_config`, :mod:`~ichd.service.dicom_staging` and
  :mod:`~ichd.service.dicom_forward`.

Heavy imports (FastAPI, torch) happen in the submodules, so importing this package is cheap.
"""
