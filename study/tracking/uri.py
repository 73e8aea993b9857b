"""``tracking.uri``: the stores MLflow can mirror to, checked before any work, and the
credentials a URI may carry, kept out of everything the study writes or prints.

A user name and password typed into the URI (``http://alice:secret@host:5000``) would
otherwise reach ``run.json``, ``sweep.json``, Hydra's ``multirun.yaml``, the console and
the sweep's MLflow description, which every account on the server can read. They are
moved into the environment variables the client reads instead (MLflow's
``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` for a server, libpq's ``PGUSER``/``PGPASSWORD``
for PostgreSQL), where sweep workers and SLURM tasks inherit them, before Hydra reads the
command line (``study.runs.train.cli``). A URI whose credentials cannot be taken apart
(a password with an unencoded ``/``, ``?`` or ``#``) is refused, and a URI that still
holds credentials when it is checked (from a config file, an interpolation) too: both
in one line that shows ``***`` in their place.
"""

from __future__ import annotations

import os
import re
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
# Stores named by a path, where an "@" is part of a file name, not of credentials.
LOCAL = ("sqlite", "file")
# "scheme://", then everything up to the last "@": the user information, wherever the
# URI's host part would end. urlsplit ends it at the first "/", "?" or "#", so a password
# holding one (unencoded) would hide from it and pass as a path.
USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)@", re.DOTALL)


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


def redacted(uri: str) -> str:
    """``uri`` as an error line may show it: ``***`` for its user information."""
    return USERINFO.sub(r"\1***@", uri)


def _leftover(uri: str) -> bool:
    """Whether ``uri`` still holds credentials (a store named by a path never does)."""
    return scheme(uri) not in LOCAL and USERINFO.match(uri) is not None


def move_credentials(
    uri: str, environ: dict[str, str] | os._Environ = os.environ, key: str = KEY
) -> str:
    """The URI without credentials, which go to ``environ`` (the client's variables for
    this scheme). They replace what those variables held: a URI typed for this run says
    who the user means to be. A scheme that reads no credentials from the environment, or
    credentials that cannot be taken apart, are refused with one line that does not show
    them. ``key``: where the URI came from, for that line. A value in Hydra's quotes
    (``'http://alice:a,b@host'``) keeps its quotes."""
    quote = uri[0] if len(uri) > 1 and uri[0] == uri[-1] and uri[0] in "'\"" else ""
    # Inside Hydra's quotes, a quote of the same kind is escaped with a backslash.
    bare = uri[1:-1].replace(f"\\{quote}", quote) if quote else uri
    if scheme(bare) in LOCAL:
        return uri
    clean, user, password = split_credentials(bare)
    names = SCHEMES.get(scheme(bare))
    if _leftover(clean):  # a list of URIs, or a password with an unencoded "/", "?", "#"
        where = " and ".join(names) if names else "the client's own configuration"
        raise ConfigError(
            key,
            f"{redacted(clean)}: cannot tell the user name and password from the host; "
            f"percent-encode the password's / ? # @ (/ as %2F), or set {where} instead",
        )
    if user is None and password is None:
        return uri
    if names is None:
        raise ConfigError(
            key,
            f"{clean}: a user name or password in the URI would be written to every record; "
            "give them to the client the way its driver reads them (e.g. a config file)",
        )
    for name, value in zip(names, (user, password), strict=True):
        if value is not None:
            environ[name] = value
    if quote:  # back in Hydra's quotes, as typed
        clean = quote + clean.replace(quote, "\\" + quote) + quote
    return clean


def check(uri: str) -> None:
    """Refuse, in one line and before any work, a URI MLflow cannot use or would have to
    guess at: an unknown scheme, or a SQLite or file store whose folder is missing or
    read-only (MLflow would create the folder, or fail after the cells have trained). A
    URI that still holds credentials got past ``move_credentials`` (a config file, an
    interpolation): refused before Hydra's records of the job are kept."""
    if _leftover(uri):
        raise ConfigError(
            KEY,
            f"{redacted(uri)}: a user name or password in the URI would be written to every "
            "record; set them in the client's environment variables, or type the URI on "
            "the command line (tracking.uri=...), which moves them there",
        )
    kind = scheme(uri)
    if kind not in SCHEMES:
        raise ConfigError(
            KEY, f"{uri}: unknown scheme {kind!r}, expected one of: {', '.join(SCHEMES)}"
        )
    if kind not in LOCAL:
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
