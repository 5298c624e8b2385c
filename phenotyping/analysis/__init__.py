"""Analysing a sample with a trained model, and what its results are.

Modules (import the one you need; nothing here imports torch until a model runs):

- :mod:`~phenotyping.analysis.inference`: ``predict_sample`` (decode → image QC → model → store), ``resolve_device``.
- :mod:`~phenotyping.analysis.stream`: ``predict_stream``, the same over a sample while it is being ingested
  (``predict --manifest``).
- :mod:`~phenotyping.analysis.qc`: image-level QC (``check_images``, ``QCConfig``) and the "unidentified" flag.
- :mod:`~phenotyping.analysis.results`: ``sample_results``, the one rule for which cells a differential counts;
  ``model_dir_for`` / ``load_card_for`` find a model's folder and card.
- :mod:`~phenotyping.analysis.specimens`: the model card's ``specimens`` rule (which classes each specimen's
  differential counts, which are reported apart and how) and ``specimen_check``.
- :mod:`~phenotyping.analysis.differential`: ``sample_differential`` (counts, CIs, adjusted count, EM, markers;
  marker expression itself is in :mod:`~phenotyping.analysis.markers`).
- :mod:`~phenotyping.analysis.prior`: the prior a model's probabilities assume (for EM).
- :mod:`~phenotyping.analysis.explain` and :mod:`~phenotyping.analysis.cellview`: Grad-CAM, occlusion, embeddings,
  and what the review screens show of a cell.
- :mod:`~phenotyping.analysis.bench`: throughput benchmarks (``python -m phenotyping bench``).

Layer: above ``models``, ``store`` and ``ingest``; below ``training`` (which learns the QC limits and confusion the
analysis reads from a model card) and ``agreement``.
"""
