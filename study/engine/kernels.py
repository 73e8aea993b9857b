"""Matrix products whose bits do not depend on where their operands sit in memory.

A net's numbers must not depend on the group it trains in (``study.engine.stack``): no operation
mixes nets, and each net's slice of a batched product is its own product. That is not
enough on its own. MKL, which does PyTorch's float32 matrix products on x86, picks its
kernel by the operands' memory alignment as well as by their shapes, and a net's slice of
a group's output starts wherever the nets before it end: with 10 classes and 1,077
examples, every other slice starts 8 bytes past a 64-byte line, and its logits came out
up to 2e-6 different from the same net alone (seen on AVX-512 and AVX2 machines, whatever
``ATEN_CPU_CAPABILITY`` says). MKL's strict conditional numerical reproducibility
(``MKL_CBWR=AUTO,STRICT``: its fastest code path for this CPU, results independent of
alignment) removes the dependence; measured here it costs nothing a step.

MKL takes the mode at its first call and never changes it afterwards, so ``study``
sets ``MKL_CBWR`` when it is imported (``study/__init__.py``), and :func:`strict_blas`
checks, where cells run, that the mode took. Other BLAS libraries (a CPU build without
MKL, CUDA) are left as they are.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path

from study.config import ConfigError, Device

log = logging.getLogger(__name__)

ENV = "MKL_CBWR"
MODE = "AUTO,STRICT"
# mkl_cbwr_set/get (mkl_service.h): the AUTO branch with the STRICT flag; all settings.
CBWR_AUTO, CBWR_STRICT, CBWR_ALL = 2, 0x10000, -1


def _mkl():
    """PyTorch's MKL service functions, or None where PyTorch was built without MKL."""
    import torch

    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get, set_ = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_set
    except (OSError, AttributeError):
        return None
    for fn in (get, set_):
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return get, set_


@functools.cache  # a process-wide setting, fixed at MKL's first call
def strict_blas() -> bool | None:
    """True if MKL runs in strict mode in this process (set now if MKL has not run yet);
    False, with a warning, if MKL ran before the mode could be set; None without MKL."""
    mkl = _mkl()
    if mkl is None:
        return None
    get, set_ = mkl
    if get(CBWR_ALL) & CBWR_STRICT or set_(CBWR_AUTO | CBWR_STRICT) == 0:
        return True
    log.warning(
        "MKL ran before the study could set %s=%s: a net's numbers may differ from the "
        "same net in another group by about 1e-7 (import study before any torch "
        "computation, or set %s=%s in the environment)",
        ENV, MODE, ENV, MODE,
    )  # fmt: skip
    return False


def resolve_device(device: Device):
    """The torch device ``train.device`` names; CUDA asked for but absent is bad input."""
    import torch

    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda requested but no CUDA device is available")
    return torch.device(str(device))


def check_device(device: Device) -> None:
    """:func:`resolve_device`'s refusal, without importing torch where no GPU is asked for."""
    if device is Device.cuda:
        resolve_device(device)


def request() -> None:
    """Ask for the strict mode before MKL's first call (it reads the environment then);
    a user's own ``MKL_CBWR`` is left alone."""
    os.environ.setdefault(ENV, MODE)
