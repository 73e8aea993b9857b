"""``tracking.uri``: the stores MLflow can mirror to, checked before any work, and the
credentials a URI may carry, kept out of everything the study writes or prints.

A user name and password typed into the URI (``http://alice:secret@host:5000``) would
otherwise reach ``run.json``, ``sweep.json``, Hydra's ``multirun.yaml``, the console and
the sweep's MLflow description, which every account on the server can read. They are
moved into the environment variables the client reads instead (MLflow's
``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` for a server, libpq's ``PGUSER``/``PGPASSWORD``
for PostgreSQL), where sweep workers and SLURM tasks inherit them, before Hydra reads the
command line (``study.runs.train.cli``).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from study.config import ConfigError

# Scheme (before any "+driver") -> the environment variables for its user and password;
# None: the scheme has no credentials (a file) or takes none from the environment.
SCHEMES: dict[str, tuple[str, str] | None] = {
    "sqlite": None,
    "file": None,
    "http": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "https": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "postgresql": ("PGUSER", "PGPASSWORD"),
    "mysql": None,
    "mssql": None,
}
KEY = "tracking.uri"


def scheme(uri: str) -> str:
    """The store's kind: ``sqlite``, ``postgresql``, ``http``, ...; a bare path is a file
    store, as MLflow takes it."""
    return urlsplit(uri).scheme.split("+")[0].lower() or "file"


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(the URI without user name and password, the user name, the password)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rsplit("@", 1)[1]
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return urlunsplit(parts._replace(netloc=host)), user, password


def redact(text: str, uri: str) -> str:
    """``text`` with ``uri``'s credentials, wherever they appear, removed."""
    clean, user, password = split_credentials(uri)
    text = text.replace(uri, clean)
    for secret in (password,):
        if secret:
            text = text.replace(secret, "***")
    return text


def move_credentials(uri: str, environ: dict[str, str] | os._Environ = os.environ) -> str:
    """The URI without credentials, which go to ``environ`` (the client's variables for
    this scheme; variables set already win). A scheme that reads no credentials from the
    environment is refused with one line: the password must not be typed into the URI."""
    clean, user, password = split_credentials(uri)
    if user is None and password is None:
        return uri
    names = SCHEMES.get(scheme(uri))
    if names is None:
        raise ConfigError(
            KEY,
            f"{clean}: a user name or password in the URI would be written to every record; "
            "give them to the client the way its driver reads them (e.g. a config file)",
        )
    for name, value in zip(names, (user, password), strict=True):
        if value is not None:
            environ.setdefault(name, value)
    return clean


def check(uri: str) -> None:
    """Refuse, in one line and before any work, a URI MLflow cannot use or would have to
    guess at: an unknown scheme, or a SQLite or file store whose folder is missing or
    read-only (MLflow would create the folder, or fail after the cells have trained)."""
    kind = scheme(uri)
    if kind not in SCHEMES:
        raise ConfigError(
            KEY, f"{uri}: unknown scheme {kind!r}, expected one of: {', '.join(SCHEMES)}"
        )
    if kind not in ("sqlite", "file"):
        return
    path = Path(_local_path(uri)).absolute()
    folder = path.parent  # the store itself (a database file, a folder) MLflow makes
    if not folder.is_dir():
        raise ConfigError(KEY, f"{uri}: folder {folder} does not exist; create it first")
    target = path if path.exists() else folder
    if not os.access(target, os.W_OK):
        raise ConfigError(KEY, f"{uri}: {target} is read-only; MLflow could not log to it")


def _local_path(uri: str) -> str:
    """The file a ``sqlite:///`` URI names (``sqlite:///a.db`` is relative to the working
    folder, ``sqlite:////tmp/a.db`` absolute), or the folder of a file store."""
    if scheme(uri) == "sqlite":
        return uri.split(":///", 1)[1] if ":///" in uri else ""
    return urlsplit(uri).path or "."
