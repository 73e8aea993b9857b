"""Analysis: the records as tables (``collect``), outcomes per cell (``outcomes``),
mean-field theory (``meanfield``, ``theory``), the claims' tests and verdicts
(``comparisons``, ``stats``, ``verdicts``, ``claims``) and the stage that runs them
(``analyze``)."""
