"""The study's sizes and its sweeps: what ``params.yaml`` chooses between and what the
pipeline runs (``conf/sweep/<profile>/<sweep>.yaml``, one DVC stage each).

Kept out of ``study.config`` (and of every module a cell's numbers come from), so that
adding a sweep or a profile leaves every cell's code version unchanged.
"""

from __future__ import annotations

import enum


class Profile(enum.StrEnum):
    """How big the study is (params.yaml ``profile``; conf/sweep/<profile>/<sweep>.yaml)."""

    quick = "quick"  # minutes: tests and a first look
    standard = "standard"  # the study of the report: an hour on 2 cores
    full = "full"  # clusters: more depths, seeds and steps


# The sweeps of a profile, in pipeline order (dvc.yaml's sweep stage runs one per item).
SWEEPS = (
    "init",
    "train",
    "optim",
    "scale",
    "theory",
    "regularize",
    "curriculum",
    "phase",
    "width",
    "jacobian",
)
