"""Method comparison: the seed papers' systems as configurations of the one trainer and evaluation.

Each experiment is a YAML file under ``configs/experiments/`` (:class:`~ichd.experiments.config.ExperimentConfig`):
a slice-CNN configuration (overrides of a base :class:`~ichd.training.config.CnnTrainConfig`, e.g. the default
model's ``configs/cnn_multi_256.yaml``) with an optional sequence stage (overrides of a base
:class:`~ichd.training.seq.SeqTrainConfig`), or a pixel baseline (PCA + logistic regression / random forest).
:func:`ichd.experiments.runner.run_experiment` trains it on the default model's patient folds, evaluates the
out-of-fold predictions with :func:`ichd.evaluation.report.evaluate_files` and writes ``summary.json``;
:mod:`ichd.experiments.compare` turns the summaries into one Markdown table next to each paper's published numbers.

``ichd experiments list`` / ``ichd experiments run NAME`` / ``ichd experiments compare`` are the commands. Importing
this package imports nothing heavy.
"""
