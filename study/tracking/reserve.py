"""Room held on a SQLite store's disk so that a sweep can always end its parent run.

A sweep logs thousands of runs into its store. When that disk fills, the cells that can no
longer be mirrored stay recorded (their records are written first, elsewhere), but the
parent run could not be ended either and would show RUNNING for ever. So a sweep holds a
little space on the store's file system while it runs (a file beside the database) and
gives it back just before it ends the parent run. A tracking server manages its own disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from study.tracking import uri as uris

SIZE = 4 << 20  # ending a run takes a few rows; SQLite's journal a few pages more


def reserve_path(uri: str) -> Path | None:
    """Where a sweep on this store keeps its room (None: not a SQLite file)."""
    if uris.scheme(uri) != "sqlite" or ":///" not in uri:
        return None
    database = Path(uri.split(":///", 1)[1])
    return database.with_name(f".{database.name}.reserve")


class Reserve:
    """Space beside a SQLite store: :meth:`hold` takes it, :meth:`release` gives it back."""

    def __init__(self, uri: str):
        self.path = reserve_path(uri)

    def hold(self) -> None:
        """Take up to :data:`SIZE` (at most half of what is free)."""
        if self.path is None:
            return
        size = min(SIZE, shutil.disk_usage(self.path.parent).free // 2)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)  # blocks really taken, not a sparse file
        except OSError:
            pass  # a file system without fallocate: the sweep runs without the room
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
