"""Labels, patient-level folds, torch datasets over the preprocessing cache, and augmentation.

Modules: :mod:`.labels` (``read_labels``, ``attach_scans``), :mod:`.folds` (``patient_folds``: splits are always
by patient, never by slice), :mod:`.datasets` (``SliceDataset``, ``ScanDataset``), :mod:`.augment`
(``train_augmentation``, ``balanced_sampler``).
"""
