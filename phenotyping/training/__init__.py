"""Fitting a model from a manifest and measuring it; everything a model card records about how it was made.

Modules:

- :mod:`~phenotyping.training.train`: ``train(manifest, label_column, out, …)`` and ``TrainConfig``, the loop.
- :mod:`~phenotyping.training.device`: where the loop runs (``--device`` / ``LEUKO_DEVICE``): CUDA with autocast,
  pinned memory and, for fp16, gradient scaling; the CPU in full precision. One epoch's pass (``train_epoch``).
- :mod:`~phenotyping.training.data`: manifest rows, image loading, channel-aware augmentation, grouped splits,
  ``CellDataset``.
- :mod:`~phenotyping.training.evaluate`: ``evaluate_model_dir`` and the classification/regression metrics.
- :mod:`~phenotyping.training.losses`: multi-task losses (``make_loss``).
- :mod:`~phenotyping.training.calibration`: temperature scaling and the unidentified-queue threshold.
- :mod:`~phenotyping.training.postfit`: card sections fitted after training (prior, confident confusion, image-QC
  limits); ``calibrate_model_dir`` refreshes an older card.
- :mod:`~phenotyping.training.licence`: the data set's licence, recorded in the card.
- :mod:`~phenotyping.training.finetune`: ``finetune(parent_dir, manifest, …)`` (``train --init-from``): a model
  adapted to new cells, its parent's classes and preprocessing kept, the card's ``lineage`` (parent, data added,
  before/after on held-out new cells).
- :mod:`~phenotyping.training.adapt`: the Models page's adaptation job over reviewed cells (``submit_adaptation``,
  the child registered not usable; ``mark_usable``).

What travels with a trained model (preprocessing, checkpoint format) is in :mod:`phenotyping.models`.
Layer: above ``analysis`` (post-fit QC limits use its checks), below ``agreement``, ``jobs`` and ``cli``.
"""
