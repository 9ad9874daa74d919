"""Reading Secrets: a DataStore's published connection (``<name>-conn``) and one key of a user's Secret.

The one place the operator reads Secret data; values are decoded by ``engines.connection`` and never put
in a message (messages name the Secret and the key only).
"""

from __future__ import annotations

from mlinfra.engines import connection, names
from mlinfra.k8s import objects
from mlinfra.problems import SECRET_NOT_FOUND, Problem, ProblemError


def values(secret: dict[str, object] | None) -> dict[str, str]:
    """A Secret's ``data`` decoded to text (empty for None)."""
    data = (secret or {}).get("data") or {}
    assert isinstance(data, dict)
    return {key: connection.text(key, raw) for key, raw in connection.decode_secret_data(data).items()}


def read_connection(kube: objects.Kube, namespace: str, datastore: str) -> connection.ConnectionInfo | None:
    """The published connection of the DataStore ``datastore`` (None before its first reconcile)."""
    secret = kube.get_or_none("Secret", namespace, names.connection_secret(datastore))
    if secret is None:
        return None
    return connection.ConnectionInfo.from_secret_base64(secret.get("data") or {})


def read_key(kube: objects.Kube, namespace: str, name: str, key: str, what: str) -> str:
    """The value of ``key`` in the user's Secret ``name``; SecretNotFound (not stalled: the user may create
    it later) naming ``what`` refers to it."""
    return connection.text(key, read_bytes(kube, namespace, name, key, what))


def read_bytes(kube: objects.Kube, namespace: str, name: str, key: str, what: str) -> bytes:
    """:func:`read_key` for a value that need not be text (an encryption key's raw bytes)."""
    secret = kube.get_or_none("Secret", namespace, name)
    if secret is None:
        raise ProblemError(
            Problem(SECRET_NOT_FOUND, f"{what}: Secret {name!r} not found in namespace {namespace!r}", stalled=False)
        )
    value = connection.decode_secret_data(secret.get("data") or {}).get(key)
    if value is None:
        raise ProblemError(Problem(SECRET_NOT_FOUND, f"{what}: Secret {name!r} has no key {key!r}", stalled=False))
    return value
