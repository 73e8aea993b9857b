"""A reproducible study of vanishing gradients in deep fully-connected networks.

The package in layers, each importing only the ones before it:

- ``study`` (this folder): the core every layer shares: the typed config (``config``),
  the on-disk records (``records``), the data (``data``, stage ``prepare``), the study's
  profiles and sweeps (``profiles``), and the package's own import graph (``imports``);
  ``train`` is only the command ``python -m study.train`` (``study.runs.train``);
- ``study.engine``: the networks, trained and probed as stacks (what a cell computes);
- ``study.tracking``: MLflow, the browsable mirror of the records;
- ``study.runs``: one cell, one sweep, the command line;
- ``study.analysis``: the records as tables, the theory, the tests of the claims;
- ``study.report``: figures, LaTeX tables and macros, the paper.
"""
