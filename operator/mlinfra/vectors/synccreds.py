"""A VectorIndex's sync credentials: its PostgreSQL role (``vectors.syncrole``) made, repaired and dropped by
the operator, and the Secret ``<index>-sync-source`` of the index's own that the sync and rebuild Jobs mount
instead of the source store's admin connection Secret.

Qdrant has no per-collection credentials without a server configured for JWT RBAC: the Jobs mount the Qdrant
store's own Secret (docs/vectorindex.md says so).

No Kopf here: called by ``vectors.reconcile`` (after the source table was checked), its observation (a role
that lost its grants) and the index's deletion.
"""

from __future__ import annotations

from typing import Any

import psycopg

from mlinfra.api import vectorindex as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection
from mlinfra.engines import names as store_names
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import children, connsecret, credentials, refs
from mlinfra.vectors import jobs, syncrole

APPLICATION_NAME = "mlinfra-operator"
ROLE_CONFLICT = "RoleConflict"
SYNC_ROLE_REPAIRED = "SyncRoleRepaired"
CONFLICT_RECHECK = 60.0  # seconds: a role holding the name may be dropped by its owner without a spec change here


def labels(index: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": store_names.MANAGED_BY, jobs.KIND_LABEL: index}


def _database(source: connection.ConnectionInfo) -> str:
    return source.database or "postgres"


def ensure(
    ctx: Context, obj: Obj[api.VectorIndex], conn: psycopg.Connection[Any], source: connection.ConnectionInfo
) -> str:
    """The bookkeeping tables, the index's role and its Secret (``syncrole.secret_name``): the role's user and
    password in the connection-Secret format of the source store as it publishes it; the Secret's name.
    ``conn``: the operator's connection to the source database, outside a transaction. A role of the name that
    is not the index's: Stalled ``RoleConflict``, nothing changed, no Secret written."""
    spec = obj.model.spec
    assert spec.source is not None
    syncrole.ensure_bookkeeping(conn)
    password = credentials.password(
        ctx.kube, obj.namespace, syncrole.secret_name(obj.name), labels(obj.name), obj.owner_reference()
    )
    try:
        role = syncrole.ensure(conn, _database(source), spec.source, obj.namespace, obj.name, password)
    except syncrole.RoleConflict as exc:
        raise ProblemError(
            Problem(
                ROLE_CONFLICT,
                f"spec.source.storeRef: {exc}: nothing was changed; drop or rename that role on the server, or "
                "rename this VectorIndex",
                stalled=True,
                recheck=CONFLICT_RECHECK,
            )
        ) from None
    published = refs.published_connection(ctx, obj.namespace, spec.source.store_ref.name) or source
    secret = credentials.login_secret(
        obj.namespace,
        syncrole.secret_name(obj.name),
        labels(obj.name),
        obj.owner_reference(),
        published,
        role,
        password,
    )
    children.apply(ctx.kube, secret)
    return syncrole.secret_name(obj.name)


def repair(
    ctx: Context, obj: Obj[api.VectorIndex], conn: psycopg.Connection[Any], source: connection.ConnectionInfo
) -> None:
    """The bookkeeping tables again if they are gone (the observation reads them next), and the index's role
    its grants again when they are gone (the source table or the bookkeeping created again by hand, the role
    dropped), so the Jobs can run. The role only for an index whose reconcile made it (its Secret, controlled
    by the index, holds the password); a conflict is the reconcile's to say."""
    spec = obj.model.spec
    if spec.source is None:
        return
    syncrole.ensure_bookkeeping(conn)
    secret = ctx.kube.get_or_none("Secret", obj.namespace, syncrole.secret_name(obj.name))
    if secret is None or not _controlled_by(secret, obj):
        return
    if syncrole.in_place(conn, spec.source, obj.namespace, obj.name):
        return
    password = connsecret.values(secret).get(store_names.PASSWORD_KEY)
    if not password:
        return
    try:
        role = syncrole.ensure(conn, _database(source), spec.source, obj.namespace, obj.name, password)
    except syncrole.RoleConflict:
        return
    obj.report.warning(
        SYNC_ROLE_REPAIRED,
        f"spec.source.storeRef: the sync role {role} had lost its privileges (the source table or the "
        "bookkeeping created again, or the role dropped, by hand): granted again",
    )


def drop(ctx: Context, obj: Obj[api.VectorIndex]) -> None:
    """Drop the index's sync role (only while it carries the index's mark); the source table and the
    bookkeeping rows stay, the Secret and the Jobs go with their owner. A store that cannot be reached keeps the
    role: said in a Warning event, the deletion goes on (it must not hang on a store that is gone for good)."""
    spec = obj.model.spec
    if spec.source is None:
        return
    role = syncrole.role_name(obj.namespace, obj.name)
    try:
        source = refs.connection_of(ctx, obj.namespace, spec.source.store_ref.name, "postgres", "spec.source.storeRef")
        with connection.postgres(source, application_name=APPLICATION_NAME) as conn:
            dropped = syncrole.drop(conn, obj.namespace, obj.name)
    except (ProblemError, psycopg.Error, OSError) as exc:  # TimeoutError is an OSError
        why = exc.problem.message if isinstance(exc, ProblemError) else f"{type(exc).__name__}: {exc}"
        obj.report.warning("SyncRoleKept", f"the sync role {role} was not dropped: {why}"[:1024])
        return
    if dropped:
        obj.report.event("SyncRoleDropped", f"sync role {role} dropped")


def _controlled_by(child: dict[str, Any], obj: Obj[api.VectorIndex]) -> bool:
    uid = obj.body.get("metadata", {}).get("uid")
    refs_ = child.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == uid for r in refs_)
