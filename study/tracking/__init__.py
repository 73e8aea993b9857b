"""MLflow, the browsable mirror of the records: the runs of a group of cells (``cells``),
the experiment and parent run of a sweep (``sweeps``), the store itself (``mirror``,
``bulk``), the study's run (``publish``) and the UI (``ui``)."""
