"""Runs: one cell (``cell``), one sweep (``sweep``, ``pool``, ``slurm_queue``), and the
command line (``train``: ``python -m study.train``)."""
