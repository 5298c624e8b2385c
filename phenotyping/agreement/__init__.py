"""Agreement of the model's differentials with manual counts: the statistics and the studies built on them.

- ``stats``: pure method-comparison statistics (Bland-Altman, Passing-Bablok, Deming, CCC, correlation, ICC,
  classification performance, kappa, counting spread) returning frozen results; imports only numpy and scipy.
- ``manual_counts``: manual (cytospin) counts: parsing and validation, CSV, counts <-> percent, saving to the store.
- ``paired``: paired model-vs-reference measurements per class read from the ``agreement`` command's CSV.
- ``comparison``: model vs manual percentages per sample and class, for the Agreement screen and its download.
- ``study``: a study's per-class agreement and cell-level classification agreement, computed and run over the store.
- ``composed``: studies on samples composed from held-out labelled cells of known composition.
- ``figures``: Bland-Altman and Passing-Bablok plots of ``stats`` results.

Importing this package imports none of them (``phenotyping.training`` uses ``stats`` and ``composed`` uses
``phenotyping.training``); import the submodule you need.
"""
