"""What a net needs in memory, estimated from its shape before it is built, so that a run
too big for the machine is refused in one line instead of being killed by the kernel.

The estimate counts float32 tensors: the parameters with their gradients, the optimizer's
state and the probe's copies (:data:`PARAMETER_COPIES`), a training step's activations
(each block keeps about :data:`STEP_TENSORS` tensors of the batch's size for the backward
pass; a dense block also keeps the concatenation it read), a probe's (the same, at the
probe's batch size and ``probe.batches`` times), and an evaluation over the largest split
(no graph: a few tensors of the split's size at a time), beside what Python and torch take
(:data:`FIXED`). Against the peak resident memory of real runs of very different shapes
(tests/test_memory.py) it is above the peak, by a factor of 1.1 to 3.1 (the larger for small
nets, where the fixed part dominates).
"""

from __future__ import annotations

import os

from study.config import Config, ConfigError, Optimizer, Skip
from study.data import Splits

FLOAT = 4  # bytes
# Copies of the parameters at the peak, measured (tests/test_memory.py): the parameters, their
# gradients, the initial state they were stacked from, the probe's copy before an update
# and its difference after, the probe's own gradients, the update's temporaries ... Ten
# covered the peak here (AVX2, 1,021 MB for a width-2048 AdamW net) but not on an AVX-512
# machine (1,440 MB: other kernels keep other buffers), hence the margin.
PARAMETER_COPIES = 16
# ... and the optimizer's state: SGD's momentum, AdamW's two moments.
OPTIMIZER_STATES = {Optimizer.sgd: 1, Optimizer.adamw: 2}
# Per block and example in a training step: the Linear output and its gradient, the norm's
# output and saved statistics, the activation, the dropout mask, the skip's output.
STEP_TENSORS = 8
EVAL_TENSORS = 3  # an evaluation holds the input and output of one block at a time
# The interpreter, torch and the data, whatever the net: 400-560 MB in a run started alone,
# but up to ~920 MB for a small net started from inside the test suite (measured, not yet
# explained), hence the allowance: for small nets it dominates the estimate.
FIXED = 1 << 30


def parameters(cfg: Config, in_features: int, classes: int) -> int:
    """The net's parameter count (biases, norms and gates included)."""
    m = cfg.model
    out = m.block_width()
    total, width = (in_features + 1) * m.width, m.width
    for _ in range(m.depth):
        total += (width + 1) * out + (2 * out if m.norm != "none" else 0)
        if m.skip == Skip.highway:
            total += (width + 1) * m.width
        width = width + out if m.skip == Skip.dense else m.width
    return total + (width + 1) * classes


def activation_units(cfg: Config) -> int:
    """Units a forward pass keeps per example: every block's output, and for dense nets the
    concatenation each block reads."""
    m = cfg.model
    out = m.block_width()
    if m.skip != Skip.dense:
        return m.depth * out
    return sum(m.width + i * out for i in range(m.depth)) + m.depth * out


def estimate(cfg: Config, in_features: int, classes: int, largest_split: int) -> int:
    """Bytes one net of ``cfg`` needs at its peak (an upper estimate)."""
    units = activation_units(cfg)
    widest = max(cfg.model.width, cfg.model.width + cfg.model.depth * cfg.model.block_width())
    step = STEP_TENSORS * units * cfg.train.batch_size
    probe = STEP_TENSORS * units * cfg.probe.batch_size * cfg.probe.batches
    evaluation = EVAL_TENSORS * widest * largest_split
    copies = PARAMETER_COPIES + OPTIMIZER_STATES[cfg.optim.name]
    params = copies * parameters(cfg, in_features, classes)
    return FLOAT * (params + max(step, probe, evaluation)) + FIXED


def available() -> int | None:
    """Memory the machine can give a new process now (Linux's MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError  # unreachable


def check(cfg: Config, splits: Splits, nets: int = 1) -> None:
    """Refuse (one-line ConfigError) ``nets`` nets of ``cfg`` on ``splits`` that would not
    fit in the memory available now; ``memory_check=false`` skips this."""
    if not cfg.memory_check:
        return
    need = nets * estimate(cfg, splits.num_features, splits.num_classes, splits.largest_split)
    have = available()
    if have is not None and need > have:
        m = cfg.model
        raise ConfigError(
            "model",
            f"{'a net' if nets == 1 else f'{nets} nets'} of depth {m.depth:,} and width "
            f"{m.width:,} ({m.skip} skips, batch {cfg.train.batch_size}) need about "
            f"{_size(need)} (estimated); this machine has {_size(have)} available "
            "(memory_check=false runs it anyway)",
        )
