"""The order in which a net sees its training examples: random epochs, or a curriculum.

A curriculum ranks the training split by the difficulty score the prepare stage fixed
(``study.data.difficulty``) and paces it: at step t (1-based) of a budget of T steps the
net draws its batch from the ``pool`` of the first

    n_t = max(B, ceil(n * min(1, start + (1 - start) * t / (full_at * T))))

examples of the ranking, B distinct ones uniformly at random; so the pool holds a fraction
``start`` of the n examples at first and every example from step ``full_at * T`` on. From
then on the batches are those of training without a curriculum (shuffled epochs of the
whole split), so every example has been drawn by step ``full_at * T + n / B``. A curriculum
changes the order only: the same steps, the same batch size, the same examples seen in all.

Hacohen & Weinshall (2019) call ``start`` and ``full_at`` a linear pacing function; the
``anti`` and ``random`` schedules are their controls (the hardest first; a random ranking).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from study.config import Curriculum


@dataclass(frozen=True)
class Pacing:
    ranking: str  # "easiest" first, "hardest" first, or "random"
    start: float  # fraction of the training split in the pool at the first step
    full_at: float  # fraction of the budget after which the pool holds every example


SCHEDULES: dict[Curriculum, Pacing | None] = {
    Curriculum.none: None,
    Curriculum.linear: Pacing("easiest", start=0.2, full_at=0.5),
    Curriculum.anti: Pacing("hardest", start=0.2, full_at=0.5),
    Curriculum.random: Pacing("random", start=0.2, full_at=0.5),
}

# A curriculum's own random stream (the random ranking), apart from the batch stream.
RANKING_STREAM = 2_000_003


def epochs(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs; the last partial batch is dropped (batch norm needs full ones)."""
    batch_size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


def ranking(difficulty: np.ndarray, pacing: Pacing, seed: int) -> torch.Tensor:
    """The training examples in the order a curriculum opens them (ties: by index)."""
    if pacing.ranking == "random":
        stream = torch.Generator().manual_seed(seed + RANKING_STREAM)
        return torch.randperm(len(difficulty), generator=stream)
    score = difficulty if pacing.ranking == "easiest" else -difficulty
    return torch.from_numpy(np.argsort(score, kind="stable"))


def pool_size(step: int, steps: int, n: int, batch_size: int, pacing: Pacing) -> int:
    """n_t of the module docstring: how many of the ranked examples step ``step`` draws from."""
    ramp = max(pacing.full_at * steps, 1.0)
    fraction = min(1.0, pacing.start + (1.0 - pacing.start) * step / ramp)
    return min(n, max(min(batch_size, n), math.ceil(n * fraction)))


def batches(
    difficulty: np.ndarray,
    batch_size: int,
    steps: int,
    schedule: Curriculum,
    seed: int,
    generator: torch.Generator,
) -> Iterator[torch.Tensor]:
    """The index batches of one net, step after step; ``generator`` is its batch stream."""
    n = len(difficulty)
    pacing = SCHEDULES[Curriculum(schedule)]
    if pacing is not None:
        ranked = ranking(difficulty, pacing, seed)
        batch = min(batch_size, n)
        for step in range(1, steps + 1):
            pool = pool_size(step, steps, n, batch_size, pacing)
            if pool == n:
                break
            yield ranked[torch.randperm(pool, generator=generator)[:batch]]
    yield from epochs(n, batch_size, generator)
