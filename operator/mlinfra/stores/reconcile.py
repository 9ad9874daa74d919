"""Bring a DataStore's children to their desired state and publish its connection Secret.

Idempotent: deterministic names, server-side apply, create-once credentials. ``kubectl replace`` or an
Argo CD ``Replace=true`` sync wipes Kopf's annotations and makes the object look new; running this again
changes nothing but what drifted.
"""

from __future__ import annotations

from typing import Any

from mlinfra.api import datastore as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection, names, render
from mlinfra.problems import INVALID_SPEC, Problem, ProblemError
from mlinfra.stores import connsecret, credentials


def _managed(ctx: Context, obj: Obj[api.DataStore]) -> connection.ConnectionInfo:
    """Apply the managed store's children; its credentials are generated once in ``<name>-credentials`` and
    adopted if that Secret already exists (a store re-created after a Retain deletion finds its data and
    password again)."""
    ds = obj.model
    engine = ds.spec.engine
    keys = names.credentials_keys(engine)
    default_username = connection.DEFAULT_USERNAMES[engine]
    owner = obj.owner_reference()
    found = credentials.ensure(
        ctx.kube,
        obj.namespace,
        names.credentials_secret(obj.name),
        fixed={names.USERNAME_KEY: default_username} if names.USERNAME_KEY in keys else {},
        generated=tuple(key for key in keys if key != names.USERNAME_KEY),
        labels=names.labels(ds),
        owner=owner,
    )
    for child in render.render_managed(ds, ctx.settings.engine_images):
        child.setdefault("metadata", {})["ownerReferences"] = [owner]
        ctx.kube.apply(child)
    return connection.ConnectionInfo(
        engine=engine,
        host=names.service_host(ds),
        port=connection.default_port(engine),
        username=found.get(names.USERNAME_KEY) or default_username,
        password=found[names.PASSWORD_KEY],
        database=connection.DEFAULT_DATABASES[engine],
        tls=False,
    )


def _external(ctx: Context, obj: Obj[api.DataStore]) -> connection.ConnectionInfo:
    ds = obj.model
    ext = ds.spec.external
    assert ext is not None
    ns = obj.namespace
    ref = ext.credentials_secret_ref
    what = "spec.external.credentialsSecretRef"
    username = connsecret.read_key(ctx.kube, ns, ref.name, ref.username_key, what)
    password = connsecret.read_key(ctx.kube, ns, ref.name, ref.password_key, what)
    ca = None
    if ext.tls and ext.tls.ca_secret_ref:
        ca_ref = ext.tls.ca_secret_ref
        ca = connsecret.read_key(ctx.kube, ns, ca_ref.name, ca_ref.key, "spec.external.tls.caSecretRef")
    engine = ds.spec.engine
    try:
        host, port = connection.split_endpoint(ext.endpoint, connection.default_port(engine))
        return connection.ConnectionInfo(
            engine=engine,
            host=host,
            port=port,
            username=username,
            password=password,
            database=ext.database or connection.DEFAULT_DATABASES[engine],
            tls=bool(ext.tls and ext.tls.enabled),
            ca_cert=ca,
        )
    except ValueError as exc:
        # What the schema cannot say (a port above 65535): the message names the field, never a secret.
        raise ProblemError(
            Problem(INVALID_SPEC, f"spec.external.endpoint {ext.endpoint!r}: {exc}", stalled=True)
        ) from None


def apply(ctx: Context, obj: Obj[api.DataStore]) -> connection.ConnectionInfo:
    """Apply the desired state of the DataStore and publish ``<name>-conn``; the connection published.
    Raises ProblemError for what the user must fix."""
    ds = obj.model
    conn = _managed(ctx, obj) if ds.spec.managed is not None else _external(ctx, obj)
    ctx.kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": names.connection_secret(obj.name),
                "namespace": obj.namespace,
                "labels": names.labels(ds),
                "ownerReferences": [obj.owner_reference()],
            },
            "stringData": conn.to_secret_data(),
        }
    )
    return conn


def reconcile(ctx: Context, obj: Obj[api.DataStore]) -> None:
    """The kind's reconcile step (see :func:`apply`)."""
    apply(ctx, obj)


def delete(ctx: Context, obj: Obj[api.DataStore]) -> None:
    """Honour ``deletionPolicy`` for what garbage collection would otherwise decide.

    Retain: the credentials Secret is orphaned (not garbage-collected with the store) and PVCs, which the
    StatefulSet never deletes, stay. Delete: the store's PVCs are deleted; everything else it owns goes
    with it through owner references.
    """
    ds = obj.model
    ns, name = obj.namespace, obj.name
    if ds.spec.managed is None:
        return
    if ds.spec.deletion_policy == "Retain":
        secret_name = names.credentials_secret(name)
        secret = ctx.kube.get_or_none("Secret", ns, secret_name)
        if secret is not None:
            uid = obj.body["metadata"]["uid"]
            refs: list[Any] = [r for r in secret["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            ctx.kube.merge_patch("Secret", ns, secret_name, {"metadata": {"ownerReferences": refs or None}})
        return
    for pvc in ctx.kube.list_("PersistentVolumeClaim", ns, names.selector_labels(ds)):
        ctx.kube.delete("PersistentVolumeClaim", ns, pvc["metadata"]["name"])
