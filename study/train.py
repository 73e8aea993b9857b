"""``python -m study.train``: one cell, or a sweep with ``-m``: the command users type.

Hydra finds ``conf/`` from this file and names the job after it (``train``); everything
else is ``study.runs.train``.
"""

from typing import Any

import hydra
from omegaconf import DictConfig

from study.runs.train import cli, task


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> dict[str, Any]:
    return task(dcfg)


if __name__ == "__main__":
    cli(main)
