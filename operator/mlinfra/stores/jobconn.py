"""What every ``mlinfra sync ...`` command shares: its target, its exit codes, and how it finds the
DataStores' connections — mounted Secret directories inside a Job, the published Secrets otherwise."""

from __future__ import annotations

import os
import pathlib

from mlinfra.engines import connection
from mlinfra.stores import endpoints
from mlinfra.stores import reconcile as store_reconcile

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2


class Unusable(Exception):
    """The run cannot start: the message says what is missing."""


def parse_target(target: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` -> ``(namespace, name)``."""
    namespace, sep, name = target.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise Unusable(f"expected NAMESPACE/NAME, got {target!r}")
    return namespace, name


def read_conn_dir(directory: pathlib.Path) -> connection.ConnectionInfo:
    """A connection Secret mounted as a directory (one file per key; ``..data`` links are skipped)."""
    data = {path.name: path.read_bytes() for path in directory.iterdir()
            if not path.name.startswith(".") and path.is_file()}
    return connection.ConnectionInfo.from_secret_data(data)


def resolve_connection(env: str, namespace: str, datastore: str) -> connection.ConnectionInfo:
    """The store's connection: the mounted directory named by ``env``, else its published Secret."""
    directory = os.environ.get(env)
    if directory:
        info = read_conn_dir(pathlib.Path(directory))
    else:
        found = store_reconcile.connection_from_secret(namespace, datastore)
        if found is None:
            raise Unusable(f"DataStore {namespace}/{datastore} has no connection Secret yet")
        info = found
    # Development only (off unless MLINFRA_ENDPOINT_MAP is set): a managed store served on this host.
    return endpoints.resolve(info, namespace, datastore)
