"""The engine: the network family, trained and probed many nets at a time as one stack.

What a cell computes comes from here (and the core's config, data and records): editing
any of it changes ``records.code_version`` and so every cell's key.
"""

from study.engine import kernels

# Before anything can call MKL: a net's numbers must not depend on its group's memory layout.
kernels.request()
