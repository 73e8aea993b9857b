"""Writing the study's tables (parquet), shared by the stages after the sweeps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from study.records import atomic_write


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` (without its index) as parquet at ``path``, atomically; same data, same bytes."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))
