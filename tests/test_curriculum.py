"""Curricula: the difficulty score, the ranking it gives, the pacing of the pool, and that
every example is reached by the stated step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from study.config import Curriculum, DataConfig, Dataset
from study.data import difficulty, load
from study.engine import curriculum
from study.engine.curriculum import SCHEDULES, batches, pool_size, ranking

N, B, STEPS = 500, 20, 100


def draws(schedule: Curriculum, score: np.ndarray, steps: int = STEPS, seed: int = 0):
    """The first ``steps`` batches of one net (index tensors)."""
    gen = torch.Generator().manual_seed(seed)
    stream = batches(score, B, steps, schedule, seed, gen)
    return [next(stream) for _ in range(steps)]


def test_mislabelled_examples_score_as_the_hardest():
    """A known answer: two well-separated blobs, a few labels flipped. Scored by models that
    did not see them, the flipped examples are confidently wrong (near +1), the rest right."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    x = rng.normal(size=(400, 2)) + 6.0 * y[:, None]
    flipped = rng.choice(400, size=10, replace=False)
    y[flipped] = 1 - y[flipped]
    score = difficulty(x.astype(np.float32), y, seed=0)
    assert set(np.argsort(score)[-10:]) == set(flipped)
    assert score[flipped].min() > 0.9
    assert np.median(np.delete(score, flipped)) < -0.9


def test_the_prepared_data_carries_a_score_per_training_example(prepared):
    splits = load(DataConfig(name=Dataset.digits, dir=str(prepared)))
    assert splits.difficulty_train.shape == splits.y_train.shape
    assert np.all(np.abs(splits.difficulty_train) <= 1)
    # Recomputing it from the prepared split gives the same scores: defined by the data alone.
    again = difficulty(splits.x_train, splits.y_train, seed=0)
    np.testing.assert_array_equal(again, splits.difficulty_train)


def test_the_ranking_opens_the_easiest_first_and_anti_the_hardest():
    score = np.random.default_rng(1).uniform(-1, 1, N).astype(np.float32)
    easy = ranking(score, SCHEDULES[Curriculum.linear], seed=0).numpy()
    hard = ranking(score, SCHEDULES[Curriculum.anti], seed=0).numpy()
    assert np.all(np.diff(score[easy]) >= 0)
    assert np.all(np.diff(score[hard]) <= 0)
    shuffled = ranking(score, SCHEDULES[Curriculum.random], seed=0).numpy()
    assert sorted(shuffled) == list(range(N))
    assert abs(np.corrcoef(score[shuffled], np.arange(N))[0, 1]) < 0.2


def test_pool_grows_linearly_from_the_start_fraction_to_everything_at_full_at():
    pacing = SCHEDULES[Curriculum.linear]
    sizes = [pool_size(t, STEPS, N, B, pacing) for t in range(1, STEPS + 1)]
    assert sizes[0] == math.ceil(N * (pacing.start + (1 - pacing.start) / (pacing.full_at * STEPS)))
    assert all(a <= b for a, b in zip(sizes, sizes[1:], strict=False))
    full = round(pacing.full_at * STEPS)
    assert sizes[full - 1] == N and sizes[full - 2] < N  # every example from step 50 on


@pytest.mark.parametrize("schedule", [Curriculum.linear, Curriculum.anti, Curriculum.random])
def test_each_batch_comes_from_its_pool_and_every_example_is_reached_by_the_stated_step(schedule):
    score = np.random.default_rng(2).uniform(-1, 1, N).astype(np.float32)
    pacing = SCHEDULES[schedule]
    ranked = ranking(score, pacing, seed=0).numpy()
    position = np.empty(N, dtype=int)
    position[ranked] = np.arange(N)
    full = round(pacing.full_at * STEPS)
    seen: set[int] = set()
    for step, idx in enumerate(draws(schedule, score), start=1):
        idx = idx.numpy()
        assert len(idx) == B and len(set(idx)) == B  # same batch size, no repeats
        if step < full:
            assert position[idx].max() < pool_size(step, STEPS, N, B, pacing)
        seen.update(idx.tolist())
        if step == full + math.ceil(N / B) - 1:  # one epoch of the whole split after full_at
            assert seen == set(range(N))


def test_without_a_curriculum_the_batches_are_shuffled_epochs_of_everything():
    score = np.zeros(N, dtype=np.float32)
    got = draws(Curriculum.none, score, steps=2 * (N // B))
    reference = curriculum.epochs(N, B, torch.Generator().manual_seed(0))
    for idx in got:
        assert torch.equal(idx, next(reference))
    first_epoch = torch.cat(got[: N // B]).numpy()
    assert sorted(first_epoch) == list(range(N))


def test_the_same_seed_gives_the_same_batches_and_another_seed_others():
    score = np.random.default_rng(3).uniform(-1, 1, N).astype(np.float32)
    a, b = draws(Curriculum.linear, score), draws(Curriculum.linear, score)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = draws(Curriculum.linear, score, seed=1)
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_the_easiest_first_curriculum_trains_on_easier_examples_early():
    score = np.random.default_rng(4).uniform(-1, 1, N).astype(np.float32)
    early = {s: np.mean([score[i.numpy()].mean() for i in draws(s, score)[:10]]) for s in
             (Curriculum.none, Curriculum.linear, Curriculum.anti)}  # fmt: skip
    assert early[Curriculum.linear] < -0.5 < early[Curriculum.none] < 0.5 < early[Curriculum.anti]
