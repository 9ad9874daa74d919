"""Generated credentials: created once in a Secret of their own, then only ever read.

Every password the operator makes comes from here (``secrets.token_urlsafe``), and a Secret the operator made
for an earlier object of the same name is kept (a store or registry re-created after a Retain deletion finds
its data and password again); a Secret of that name someone else made is never taken over.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from typing import Any

from mlinfra.engines import connection
from mlinfra.engines.names import PASSWORD_KEY
from mlinfra.k8s import objects
from mlinfra.problems import SECRET_NOT_FOUND, Problem, ProblemError
from mlinfra.stores import children, connsecret


def new_password() -> str:
    return secrets.token_urlsafe(24)


def ensure(
    kube: objects.Kube,
    namespace: str,
    name: str,
    fixed: Mapping[str, str],
    generated: tuple[str, ...],
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    retained: bool = False,
) -> dict[str, str]:
    """The values of the Secret ``name``: created with ``fixed`` values and a new password for each key of
    ``generated`` when absent, else read as it is. An existing Secret is used only if it is ``owner``'s, or was
    the operator's for an earlier object of the same kind and name (it carries the operator's labels for that
    name, see ``k8s.ownership``: a store re-created after a Retain deletion finds its password) and is then
    adopted; any other Secret
    of that name is the user's: ChildConflict, untouched. A Secret lacking one of the keys is the user's to
    fix (Stalled), never overwritten.

    ``retained``: the Secret must outlive ``owner`` (deletionPolicy Retain), so it names no owner at all and is
    ``owner``'s by its labels only (``k8s.ownership.create_retained``): a reference would let the garbage
    collector delete it, under foreground deletion even before the owner's finalizer could keep it."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if not retained:
        metadata["ownerReferences"] = [owner]
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "stringData": {**fixed, **{key: new_password() for key in generated}},
    }
    secret = children.create_retained(kube, body, owner) if retained else children.create(kube, body)
    found = connsecret.values(secret)
    missing = [key for key in (*fixed, *generated) if key not in found]
    if missing:
        raise ProblemError(
            Problem(
                SECRET_NOT_FOUND,
                f"Secret {name!r} lacks the key(s) {', '.join(missing)}; delete it to have new credentials generated",
                stalled=True,
            )
        )
    return found


def password(kube: objects.Kube, namespace: str, name: str, labels: Mapping[str, str], owner: Mapping[str, Any]) -> str:
    """The password kept in ``owner``'s Secret ``name`` (key ``password``): generated the first time, then
    read (:func:`ensure`); the role or user it is for is made with it afterwards."""
    return ensure(kube, namespace, name, fixed={}, generated=(PASSWORD_KEY,), labels=labels, owner=owner)[PASSWORD_KEY]


def login_secret(
    namespace: str,
    name: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any],
    published: connection.ConnectionInfo,
    username: str,
    password: str,
) -> dict[str, Any]:
    """A Secret in the connection-Secret format of a store (``<store>-conn``: endpoint, database, TLS, CA as
    ``published``) with other credentials: what a Job of an object mounts to log in as that object's own
    least-privilege user. The sync commands read it as they read the store's Secret, and the development
    platform's endpoint map still applies (by the store's host)."""
    info = dataclasses.replace(published, username=username, password=password)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [dict(owner)]},
        "stringData": info.to_secret_data(),
    }
