"""Generated credentials: created once in a Secret of their own, then only ever read.

Every password the operator makes comes from here (``secrets.token_urlsafe``), and a Secret that already
exists is kept (a store or registry re-created after a Retain deletion finds its data and password again).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from mlinfra.k8s import objects
from mlinfra.problems import SECRET_NOT_FOUND, Problem, ProblemError
from mlinfra.stores import connsecret


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
) -> dict[str, str]:
    """The values of the Secret ``name``: created with ``fixed`` values and a new password for each key of
    ``generated`` when absent, else read as it is. It is (re-)owned by ``owner``; a Secret lacking one of
    the keys is the user's to fix (Stalled), never overwritten."""
    created = kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [owner]},
            "stringData": {**fixed, **{key: new_password() for key in generated}},
        }
    )
    secret = created or kube.get("Secret", namespace, name)
    refs = secret["metadata"].get("ownerReferences") or []
    if not any(r.get("uid") == owner["uid"] for r in refs):
        kube.merge_patch("Secret", namespace, name, {"metadata": {"ownerReferences": [owner]}})
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
