"""A FeatureView's sync credentials: its PostgreSQL role (``features.syncrole``) and Redis ACL user
(``features.syncuser``) made, repaired and dropped by the operator, and the Secrets of the view's own that
the sync Job mounts instead of the stores' admin connection Secrets.

No Kopf here: called by ``features.reconcile`` (after the offline table is the view's), its observation (a
role that lost its grants, a Redis that lost its users) and the view's deletion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from mlinfra.api import featureview as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection, observation
from mlinfra.engines import names as store_names
from mlinfra.features import connect, jobs, syncrole, syncuser
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import children, connsecret, credentials, members, refs

ROLE_CONFLICT = "RoleConflict"
ONLINE_CREDENTIALS_SHARED = "OnlineCredentialsShared"
SYNC_USER_RECREATED = "SyncUserRecreated"
SYNC_ROLE_REPAIRED = "SyncRoleRepaired"


_log = logging.getLogger(__name__)


def sync_labels(view: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": store_names.MANAGED_BY, jobs.KIND_LABEL: view}


def sync_password(ctx: Context, obj: Obj[api.FeatureView], secret: str | None = None) -> str:
    """A sync credential's password: generated once, kept only in the view's own Secret ``secret``
    (``syncrole.secret_name`` by default, ``syncuser.secret_name`` for the online store)."""
    return credentials.password(
        ctx.kube, obj.namespace, secret or syncrole.secret_name(obj.name), sync_labels(obj.name), obj.owner_reference()
    )


def sync_secret(
    obj: Obj[api.FeatureView],
    published: connection.ConnectionInfo,
    role: str,
    password: str,
    name: str | None = None,
) -> dict[str, Any]:
    """A Secret the sync Job mounts (``name``: the offline store's, ``syncrole.secret_name``, by default): the
    store as published with the view's own credentials (``credentials.login_secret``)."""
    return credentials.login_secret(
        obj.namespace,
        name or syncrole.secret_name(obj.name),
        sync_labels(obj.name),
        obj.owner_reference(),
        published,
        role,
        password,
    )


def role_conflict(exc: syncrole.RoleConflict) -> ProblemError:
    return ProblemError(
        Problem(
            ROLE_CONFLICT,
            f"spec.offline.storeRef: {exc}: nothing was changed; drop or rename that role on the server, or rename "
            "this FeatureView",
            stalled=True,
            recheck=connect.CONFLICT_RECHECK,
        )
    )


def ensure_sync_role(
    conn: psycopg.Connection[tuple[Any, ...]],
    offline: connection.ConnectionInfo,
    spec: api.FeatureViewSpec,
    namespace: str,
    view: str,
    password: str,
) -> str:
    """The view's sync role on the offline store's database (``features.syncrole``); its name."""
    return syncrole.ensure(conn, offline.database or "postgres", spec, namespace, view, password)


def ensure_online_user(ctx: Context, obj: Obj[api.FeatureView], both: connect.Stores) -> str | None:
    """The view's ACL user on the online Redis (``features.syncuser``) and its Secret; the Secret's name for
    the Job to mount, or None when the store's credentials may not manage users: the Job then mounts the
    store's own Secret, as said in a Warning event (and the view's Secret, if any, loses its user name)."""
    ns, name = obj.namespace, obj.name
    secret = syncuser.secret_name(name)
    found = ctx.kube.get_or_none("Secret", ns, secret)
    known = connsecret.values(found).get(store_names.PASSWORD_KEY) if found and _controlled_by(found, obj) else None
    # The user first, the Secret after: store credentials that may not make users leave no Secret behind.
    password = known or credentials.new_password()
    client = connect.online_client(both.online)
    try:
        user = syncuser.ensure(client, ns, name, password)
        kept = credentials.ensure(
            ctx.kube,
            ns,
            secret,
            fixed={store_names.PASSWORD_KEY: password},
            generated=(),
            labels=sync_labels(name),
            owner=obj.owner_reference(),
        )[store_names.PASSWORD_KEY]
        if kept != password:  # a Secret of ours from before (adopted): its password is the one
            password = kept
            user = syncuser.ensure(client, ns, name, password)
    except syncuser.UserConflict as exc:
        raise ProblemError(
            Problem(
                ROLE_CONFLICT,
                f"spec.online.storeRef: {exc}: nothing was changed; delete or rename that user on the server, or "
                "rename this FeatureView",
                stalled=True,
                recheck=connect.CONFLICT_RECHECK,
            )
        ) from None
    except syncuser.NotPermitted as exc:
        if found is not None and _controlled_by(found, obj) and "username" in (found.get("data") or {}):
            # Made when the store's credentials could (the operator may not delete Secrets): no longer the one
            # the Jobs mount (online_secret_of), and made whole again once they can.
            ctx.kube.merge_patch("Secret", ns, secret, {"data": {"username": None}})
        obj.report.warning(
            ONLINE_CREDENTIALS_SHARED,
            f"spec.online.storeRef: {exc}; the sync Job uses the store's own credentials "
            f"({store_names.connection_secret(obj.model.spec.online.store_ref.name)}), not a user limited to this "
            "view's keys",
        )
        return None
    except redis.TimeoutError as exc:
        raise TimeoutError(f"spec.online.storeRef: {observation.error_message(exc, both.online)}") from None
    except (redis.RedisError, OSError) as exc:
        raise ProblemError(
            Problem(
                connect.ONLINE_UNREACHABLE,
                f"spec.online.storeRef: making the sync user failed: {observation.error_message(exc, both.online)}",
                stalled=False,
            )
        ) from None
    finally:
        client.close()
    children.apply(ctx.kube, sync_secret(obj, both.online_published or both.online, user, password, secret))
    _on_every_member(ctx, obj, both.online, lambda client: syncuser.ensure(client, ns, name, password))
    return secret


def _on_every_member(
    ctx: Context, obj: Obj[api.FeatureView], online: connection.ConnectionInfo, act: Callable[[redis.Redis], Any]
) -> dict[str, Any]:
    """``act`` on each member of a managed online store, reached on its own; what it returned, by member (the
    members it was done on).

    Redis does not replicate ACL users: a user made through the client Service exists on the primary only,
    and a replica promoted by a failover would refuse the view's Jobs until the next repair. A member that
    cannot be reached now is left to the repair timer (:func:`repair_online_user`)."""
    done: dict[str, Any] = {}
    ref = obj.model.spec.online.store_ref.name
    for member, conn in sorted(members.connections(ctx, obj.namespace, ref, "redis", online).items()):
        client = connect.online_client(conn)
        try:
            done[member] = act(client)
        except (syncuser.UserConflict, syncuser.NotPermitted, redis.RedisError, OSError) as exc:
            _log.info("the sync user of %s/%s on member %s: %s", obj.namespace, obj.name, member, type(exc).__name__)
        finally:
            client.close()
    return done


def online_secret_of(ctx: Context, obj: Obj[api.FeatureView]) -> str | None:
    """The view's online Secret when the reconcile made one (a user of its own), else None (the store's)."""
    found = ctx.kube.get_or_none("Secret", obj.namespace, syncuser.secret_name(obj.name))
    if found is None or not _controlled_by(found, obj) or "username" not in (found.get("data") or {}):
        return None
    return syncuser.secret_name(obj.name)


def _controlled_by(child: dict[str, Any], obj: Obj[api.FeatureView]) -> bool:
    uid = obj.body.get("metadata", {}).get("uid")
    refs_ = child.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == uid for r in refs_)


def repair_sync_role(
    ctx: Context,
    obj: Obj[api.FeatureView],
    conn: psycopg.Connection[tuple[Any, ...]],
    offline: connection.ConnectionInfo,
) -> None:
    """Give the view's role its grants again when they are gone (the table dropped and created again by hand,
    the role dropped): the sync Job the observation then asks for must be able to read the table. Only for a
    view whose reconcile made the role (its Secret holds the password); a conflict is the reconcile's to say."""
    secret = ctx.kube.get_or_none("Secret", obj.namespace, syncrole.secret_name(obj.name))
    if secret is None or not _controlled_by(secret, obj):
        return
    if syncrole.in_place(conn, obj.model.spec, obj.namespace, obj.name):
        return
    password = connsecret.values(secret).get(store_names.PASSWORD_KEY)
    if not password:
        return
    try:
        role = ensure_sync_role(conn, offline, obj.model.spec, obj.namespace, obj.name, password)
    except syncrole.RoleConflict:
        return
    obj.report.warning(
        SYNC_ROLE_REPAIRED,
        f"spec.offline.storeRef: the sync role {role} had lost its privileges on the offline table (the table "
        "created again, or the role dropped, by hand): granted again",
    )


def repair_online_user(ctx: Context, obj: Obj[api.FeatureView], online: connection.ConnectionInfo) -> None:
    """Make the view's ACL user again when the online Redis lost it (a restart: runtime users are not kept
    without an ACL file), with the password of the view's Secret; one Warning event when it does. Only for a
    view whose reconcile made a user; what cannot be read here is left to the marker read and the reconcile."""
    if online_secret_of(ctx, obj) is None:
        return
    secret = ctx.kube.get_or_none("Secret", obj.namespace, syncuser.secret_name(obj.name))
    password = connsecret.values(secret).get(store_names.PASSWORD_KEY)
    if not password:
        return
    ns, name = obj.namespace, obj.name

    def make_if_missing(client: redis.Redis) -> bool:
        if syncuser.present(client, ns, name):
            return False
        syncuser.ensure(client, ns, name, password)
        return True

    client = connect.online_client(online)
    try:
        lost = make_if_missing(client)  # the primary, through the client Service
    except (syncuser.UserConflict, syncuser.NotPermitted, redis.RedisError, OSError):
        return
    finally:
        client.close()
    # Each member too (a replica made since, or restarted, lacks it: a failover would promote it), quietly.
    made = [member for member, did in _on_every_member(ctx, obj, online, make_if_missing).items() if did]
    if made:
        _log.info("the sync user of %s/%s made again on %s", ns, name, ", ".join(made))
    if not lost:
        return
    user = syncuser.user_name(ns, name)
    obj.report.warning(
        SYNC_USER_RECREATED,
        f"spec.online.storeRef: the online store had lost the sync user {user} (restarted without an ACL file?): "
        "made again",
    )


def drop(ctx: Context, obj: Obj[api.FeatureView]) -> None:
    """Drop the view's sync role (only while it carries the view's mark); the table, the bookkeeping rows and
    the online keys stay (users' data), the Secret and the Jobs go with their owner. A store that cannot be
    reached keeps the role: said in a Warning event, the deletion goes on (it must not hang on a store that is
    gone for good)."""
    ref = obj.model.spec.offline.store_ref.name
    try:  # the offline store only: a broken online store must not keep the role
        offline = refs.connection_of(ctx, obj.namespace, ref, "postgres", "spec.offline.storeRef")
        with connection.postgres(offline, application_name=connect.APPLICATION_NAME) as conn:
            dropped = syncrole.drop(conn, obj.namespace, obj.name)
    except (ProblemError, psycopg.Error, OSError) as exc:  # TimeoutError is an OSError
        why = exc.problem.message if isinstance(exc, ProblemError) else f"{type(exc).__name__}: {exc}"
        obj.report.warning(
            "SyncRoleKept",
            f"the sync role {syncrole.role_name(obj.namespace, obj.name)} was not dropped: {why}"[:1024],
        )
        dropped = False
    if dropped:
        obj.report.event("SyncRoleDropped", f"sync role {syncrole.role_name(obj.namespace, obj.name)} dropped")
    delete_online_user(ctx, obj)


def delete_online_user(ctx: Context, obj: Obj[api.FeatureView]) -> None:
    """Delete the view's ACL user on the online Redis, if it is the view's; said in a Warning event when the
    store cannot be reached."""
    user = syncuser.user_name(obj.namespace, obj.name)
    try:
        online = refs.connection_of(
            ctx, obj.namespace, obj.model.spec.online.store_ref.name, "redis", "spec.online.storeRef"
        )
        client = connect.online_client(online)
        try:
            deleted = syncuser.delete(client, obj.namespace, obj.name)
        finally:
            client.close()
        _on_every_member(ctx, obj, online, lambda member: syncuser.delete(member, obj.namespace, obj.name))
    except syncuser.NotPermitted:
        return  # it never had one
    except (ProblemError, redis.RedisError, OSError) as exc:
        why = exc.problem.message if isinstance(exc, ProblemError) else f"{type(exc).__name__}: {exc}"
        obj.report.warning("SyncUserKept", f"the online store's sync user {user} was not deleted: {why}"[:1024])
        return
    if deleted:
        obj.report.event("SyncUserDeleted", f"online store's sync user {user} deleted")
