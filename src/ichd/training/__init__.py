"""Training: one :class:`~ichd.training.trainer.Trainer` loop with callbacks, the loss (= the RSNA metric),
typed configs, and slice-CNN cross-validation (:func:`ichd.training.cnn.train_cnn`, :func:`~ichd.training.cnn.merge_folds`).

Submodules import torch; importing this package does not.
"""
