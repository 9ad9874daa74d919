"""Bring a DataStore's children to their desired state and publish its connection Secret.

Idempotent: deterministic names, server-side apply, create-once credentials. ``kubectl replace`` or an
Argo CD ``Replace=true`` sync wipes Kopf's annotations and makes the object look new; running this again
changes nothing but what drifted.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from mlinfra.api import datastore as api
from mlinfra.engines import connection, names, render
from mlinfra.k8s import objects
from mlinfra.stores import endpoints
from mlinfra.stores.status import INVALID_SPEC, SECRET_NOT_FOUND, Problem, ProblemError, invalid_spec


class StoreProblem(ProblemError):
    """The DataStore cannot be served as specified."""


def parse(body: Mapping[str, Any]) -> api.DataStore:
    """The body as the API model; a spec the API server let through but the model refuses is InvalidSpec."""
    try:
        return api.DataStore.model_validate(dict(body))
    except pydantic.ValidationError as exc:
        raise StoreProblem(invalid_spec(exc)) from None


@dataclass(frozen=True)
class Applied:
    """What reconcile established: how clients connect, as published in ``<name>-conn``."""

    conn: connection.ConnectionInfo
    endpoint: str
    connection_secret: str


def _decode(secret: Mapping[str, Any], key: str) -> str | None:
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode() if raw is not None else None


def _read_secret_key(namespace: str, name: str, key: str, what: str) -> str:
    secret = objects.get_or_none("Secret", namespace, name)
    if secret is None:
        raise StoreProblem(Problem(SECRET_NOT_FOUND, f"{what}: Secret {name!r} not found in namespace "
                                   f"{namespace!r}", stalled=False))
    value = _decode(secret, key)
    if value is None:
        raise StoreProblem(Problem(SECRET_NOT_FOUND, f"{what}: Secret {name!r} has no key {key!r}", stalled=False))
    return value


def _credentials(body: Mapping[str, Any], ds: api.DataStore) -> tuple[str, str]:
    """The managed store's credentials: generated once, kept in ``<name>-credentials``, adopted if it
    already exists (a store re-created after a Retain deletion finds its data and password again)."""
    ns, name = ds.metadata.namespace or "default", ds.metadata.name
    secret_name = names.credentials_secret(name)
    username = connection.DEFAULT_USERNAMES[ds.spec.engine]
    owner = objects.owner_reference(body)
    created = objects.create({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": secret_name, "namespace": ns, "labels": names.labels(ds),
                     "ownerReferences": [owner]},
        "stringData": {key: username if key == names.USERNAME_KEY else secrets.token_urlsafe(24)
                       for key in names.credentials_keys(ds.spec.engine)},
    })
    secret = created or objects.get("Secret", ns, secret_name)
    refs = secret["metadata"].get("ownerReferences") or []
    if not any(r.get("uid") == owner["uid"] for r in refs):
        objects.merge_patch("Secret", ns, secret_name, {"metadata": {"ownerReferences": [owner]}})
    missing = [key for key in names.credentials_keys(ds.spec.engine) if _decode(secret, key) is None]
    if missing:
        raise StoreProblem(Problem(SECRET_NOT_FOUND, f"Secret {secret_name!r} lacks the key(s) {', '.join(missing)}; "
                                   "delete it to have new credentials generated", stalled=True))
    return _decode(secret, names.USERNAME_KEY) or username, str(_decode(secret, names.PASSWORD_KEY))


def _managed(body: Mapping[str, Any], ds: api.DataStore, images: Mapping[str, str] | None) -> connection.ConnectionInfo:
    username, password = _credentials(body, ds)
    owner = objects.owner_reference(body)
    for obj in render.render_managed(ds, images):
        obj.setdefault("metadata", {})["ownerReferences"] = [owner]
        objects.apply(obj)
    engine = ds.spec.engine
    return connection.ConnectionInfo(
        engine=engine, host=names.service_host(ds), port=connection.default_port(engine), username=username,
        password=password, database=connection.DEFAULT_DATABASES[engine], tls=False,
    )


def _external(ds: api.DataStore) -> connection.ConnectionInfo:
    ext = ds.spec.external
    assert ext is not None
    ns = ds.metadata.namespace or "default"
    ref = ext.credentials_secret_ref
    what = "spec.external.credentialsSecretRef"
    username = _read_secret_key(ns, ref.name, ref.username_key, what)
    password = _read_secret_key(ns, ref.name, ref.password_key, what)
    ca = None
    if ext.tls and ext.tls.ca_secret_ref:
        ca_ref = ext.tls.ca_secret_ref
        ca = _read_secret_key(ns, ca_ref.name, ca_ref.key, "spec.external.tls.caSecretRef")
    engine = ds.spec.engine
    try:
        host, port = endpoints.split_endpoint(ext.endpoint, connection.default_port(engine))
        return connection.ConnectionInfo(
            engine=engine, host=host, port=port, username=username, password=password,
            database=ext.database or connection.DEFAULT_DATABASES[engine],
            tls=bool(ext.tls and ext.tls.enabled), ca_cert=ca,
        )
    except ValueError as exc:
        # What the schema cannot say (a port above 65535): the message names the field, never a secret.
        raise StoreProblem(Problem(INVALID_SPEC, f"spec.external.endpoint {ext.endpoint!r}: {exc}",
                                   stalled=True)) from None


def reconcile(body: Mapping[str, Any], images: Mapping[str, str] | None = None) -> Applied:
    """Apply the desired state of the DataStore ``body``; raises StoreProblem for what the user must fix.
    ``images``: the operator's default image per engine (``Settings.engine_images``)."""
    ds = parse(body)
    conn = _managed(body, ds, images) if ds.spec.managed is not None else _external(ds)
    ns = ds.metadata.namespace or "default"
    secret_name = names.connection_secret(ds.metadata.name)
    objects.apply({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": secret_name, "namespace": ns, "labels": names.labels(ds),
                     "ownerReferences": [objects.owner_reference(body)]},
        "stringData": conn.to_secret_data(),
    })
    return Applied(conn=conn, endpoint=f"{conn.host}:{conn.port}", connection_secret=secret_name)


def connection_from_secret(namespace: str, name: str) -> connection.ConnectionInfo | None:
    """The published connection of the DataStore ``name`` (None before the first reconcile)."""
    secret = objects.get_or_none("Secret", namespace, names.connection_secret(name))
    if secret is None:
        return None
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return connection.ConnectionInfo.from_secret_data(data)


def delete(body: Mapping[str, Any]) -> None:
    """Honour ``deletionPolicy`` for what garbage collection would otherwise decide.

    Retain: the credentials Secret is orphaned (not garbage-collected with the store) and PVCs, which the
    StatefulSet never deletes, stay. Delete: the store's PVCs are deleted; everything else it owns goes
    with it through owner references.
    """
    ds = parse(body)
    ns, name = ds.metadata.namespace or "default", ds.metadata.name
    if ds.spec.managed is None:
        return
    if ds.spec.deletion_policy == "Retain":
        secret_name = names.credentials_secret(name)
        secret = objects.get_or_none("Secret", ns, secret_name)
        if secret is not None:
            uid = body["metadata"]["uid"]
            refs = [r for r in secret["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            objects.merge_patch("Secret", ns, secret_name, {"metadata": {"ownerReferences": refs or None}})
        return
    for pvc in objects.list_("PersistentVolumeClaim", ns, names.selector_labels(ds)):
        objects.delete("PersistentVolumeClaim", ns, pvc["metadata"]["name"])
