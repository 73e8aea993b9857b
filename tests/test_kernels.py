"""Matrix products that do not depend on memory alignment (study.engine.kernels): what makes a
net's numbers the same alone and in any group."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from study.engine import kernels

from .conftest import subprocess_env

STRICT_MODE = """
import ctypes, study, torch
from study.engine import kernels
get, _ = kernels._mkl()
print(bool(get(kernels.CBWR_ALL) & kernels.CBWR_STRICT))
"""

MKL_FIRST = """
import torch
torch.bmm(torch.randn(2, 64, 64), torch.randn(2, 64, 64))  # MKL's first call
from study.engine import kernels
print(kernels.strict_blas())
"""


def run(code: str) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop(kernels.ENV, None)  # as a user's shell has it
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


needs_mkl = pytest.mark.skipif(kernels._mkl() is None, reason="PyTorch built without MKL")


@needs_mkl
def test_importing_study_puts_mkl_in_strict_mode():
    proc = run(STRICT_MODE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"]


@needs_mkl
def test_mkl_used_before_the_study_is_imported_is_reported():
    proc = run(MKL_FIRST)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False"]
    assert "MKL ran before the study could set MKL_CBWR=AUTO,STRICT" in proc.stderr


@pytest.mark.numeric  # the bits depend on the CPU's kernels: make test runs it on each
def test_each_slice_of_a_batched_product_equals_its_product_alone():
    # 1,077 examples x 10 classes: every other net's slice of the output starts 8 bytes past
    # a 64-byte line, the case where MKL's default mode gave other bits (a record's
    # train_split_loss differed by 1e-7 between a cell alone and in its group).
    assert kernels.strict_blas() in (True, None)
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(8, 1077, 16, generator=g), torch.randn(8, 16, 10, generator=g)
    together = torch.bmm(h, w)
    for i in range(8):
        alone = torch.bmm(h[i : i + 1].clone(), w[i : i + 1].clone())
        assert torch.equal(together[i], alone[0]), i
