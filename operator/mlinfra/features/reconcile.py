"""Reconcile and observe a FeatureView: its two DataStores, the offline table, the sync role and its Secret,
the sync CronJob; the status from what the offline store and the sync Jobs show.

No Kopf here (handlers/featureview.py wires it through handlers.kind). What ``reconcile`` did to the table
is posted as events; ``observe`` reads the table as it is (read only) and never the object's own status.
Problems the user must act on are raised as ``ProblemError``; ``status.problem_status`` shows them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from redis import backoff as redis_backoff
from redis import retry as redis_retry

from mlinfra import metrics, problems
from mlinfra.api import featureview as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection, observation
from mlinfra.engines import names as store_names
from mlinfra.features import (
    claim,
    freshness,
    identity,
    indexbuild,
    jobs,
    layout,
    schema,
    status,
    syncrole,
    syncuser,
)
from mlinfra.k8s import conditions, jobstatus, objects
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import children, connsecret, credentials, refs

IMMUTABLE_FIELD_CHANGE = problems.IMMUTABLE_FIELD_CHANGE
TABLE_MISSING, COLUMNS_MISSING = schema.TABLE_MISSING, schema.COLUMNS_MISSING
APPLICATION_NAME = "mlinfra-operator"
TABLE_IN_USE = "TableInUse"
CONFLICT_RECHECK = 60.0  # seconds: the other view may go away or change its table without a spec change here
JOB_LABEL = "mlinfra.io/featureview"
ONLINE_UNREACHABLE = "OnlineStoreUnreachable"
ROLE_CONFLICT = "RoleConflict"
ONLINE_CREDENTIALS_SHARED = "OnlineCredentialsShared"
SYNC_USER_RECREATED = "SyncUserRecreated"
SYNC_ROLE_REPAIRED = "SyncRoleRepaired"
ONLINE_TIMEOUT = 5.0  # seconds for the marker's one GET: the timer must not hang on a stuck Redis


@dataclass(frozen=True)
class Stores:
    offline: connection.ConnectionInfo  # reachable from the operator (dev endpoint map applied)
    online: connection.ConnectionInfo
    offline_published: connection.ConnectionInfo | None = None  # as published for apps (in-cluster host)
    online_published: connection.ConnectionInfo | None = None


def stores(ctx: Context, obj: Obj[api.FeatureView]) -> Stores:
    """Both DataStores, checked (exist, right engine, Ready) and reachable by the operator."""
    spec = obj.model.spec
    offline = refs.connection_of(ctx, obj.namespace, spec.offline.store_ref.name, "postgres", "spec.offline.storeRef")
    return Stores(
        offline=offline,
        online=refs.connection_of(ctx, obj.namespace, spec.online.store_ref.name, "redis", "spec.online.storeRef"),
        offline_published=refs.published_connection(ctx, obj.namespace, spec.offline.store_ref.name) or offline,
        online_published=refs.published_connection(ctx, obj.namespace, spec.online.store_ref.name),
    )


def sync_labels(view: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": store_names.MANAGED_BY, JOB_LABEL: view}


def sync_password(ctx: Context, obj: Obj[api.FeatureView], secret: str | None = None) -> str:
    """A sync credential's password: generated once, kept only in the view's own Secret ``secret``
    (``syncrole.secret_name`` by default, ``syncuser.secret_name`` for the online store)."""
    return credentials.ensure(
        ctx.kube,
        obj.namespace,
        secret or syncrole.secret_name(obj.name),
        fixed={},
        generated=(store_names.PASSWORD_KEY,),
        labels=sync_labels(obj.name),
        owner=obj.owner_reference(),
    )[store_names.PASSWORD_KEY]


def sync_secret(
    obj: Obj[api.FeatureView],
    published: connection.ConnectionInfo,
    role: str,
    password: str,
    name: str | None = None,
) -> dict[str, Any]:
    """A Secret the sync Job mounts (``name``: the offline store's, ``syncrole.secret_name``, by default): the
    connection-Secret format of the store as published (endpoint, database, TLS, CA) with the view's own
    credentials (``sync_command`` reads it as it reads ``<store>-conn``, and the dev platform's endpoint map
    still applies by the store's name)."""
    info = dataclasses.replace(published, username=role, password=password)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name or syncrole.secret_name(obj.name),
            "namespace": obj.namespace,
            "labels": sync_labels(obj.name),
            "ownerReferences": [obj.owner_reference()],
        },
        "stringData": info.to_secret_data(),
    }


def role_conflict(exc: syncrole.RoleConflict) -> ProblemError:
    return ProblemError(
        Problem(
            ROLE_CONFLICT,
            f"spec.offline.storeRef: {exc}: nothing was changed; drop or rename that role on the server, or rename "
            "this FeatureView",
            stalled=True,
            recheck=CONFLICT_RECHECK,
        )
    )


def reconcile(ctx: Context, obj: Obj[api.FeatureView]) -> None:
    """Create or evolve the offline table and the bookkeeping schema, then the sync role and the Secret the
    Job mounts; apply (or remove) the sync CronJob."""
    fv = obj.model
    both = stores(ctx, obj)
    offline = both.offline
    try:
        with connection.postgres(offline, application_name=APPLICATION_NAME) as conn:
            schema.ensure_bookkeeping(conn)
            schema_name, table = layout.offline_table(obj.name, fv.spec.offline.schema_name, fv.spec.offline.table)
            claim.claim(conn, schema_name, table, f"{obj.namespace}/{obj.name}")
            result = schema.ensure_offline_table(conn, fv.spec, obj.name)
            # Only once the table is the view's: a refused view writes nothing, not even its Secret.
            password = sync_password(ctx, obj)
            role = ensure_sync_role(conn, offline, fv.spec, obj.namespace, obj.name, password)
    except syncrole.RoleConflict as exc:
        raise role_conflict(exc) from None
    except claim.TableInUse as exc:
        raise ProblemError(
            Problem(
                TABLE_IN_USE,
                f"spec.offline.table: {exc} on this PostgreSQL server: nothing was changed; give this view a table of "
                "its own (spec.offline.table or spec.offline.schema)",
                stalled=True,
                recheck=CONFLICT_RECHECK,
            )
        ) from None
    except schema.ImmutableFieldChange as exc:
        raise ProblemError(
            Problem(IMMUTABLE_FIELD_CHANGE, f"refused, nothing was changed: {exc}", stalled=True)
        ) from None
    if result.created:
        obj.report.event("TableCreated", f"table {result.table} created")
    if result.added:
        obj.report.event("ColumnsAdded", f"table {result.table}: added columns {', '.join(result.added)}")
    if result.indexes_built:
        obj.report.event("IndexesBuilt", f"table {result.table}: built {', '.join(result.indexes_built)} concurrently")
    if result.indexes_pending:
        started = indexbuild.start(offline, fv.spec, obj.name) if result.large else None
        obj.report.event(
            "IndexesPending",
            f"table {result.table}: {', '.join(result.indexes_pending)} not built yet: {result.pending_why}"
            + ("" if not result.large else "; started now" if started else "; a build is running"),
        )
    children.apply(ctx.kube, sync_secret(obj, both.offline_published or offline, role, password))
    online_secret = ensure_online_user(ctx, obj, both)
    cron = jobs.cronjob(fv, ctx.settings.job_image, obj.owner_reference(), online_secret)
    if cron is not None:
        children.apply(ctx.kube, cron)
    elif children.delete(ctx.kube, obj.owner_reference(), "CronJob", obj.namespace, jobs.cronjob_name(obj.name)):
        obj.report.event(
            "CronJobDeleted", f"CronJob {jobs.cronjob_name(obj.name)} deleted: spec.materialization is not set"
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


def _admin_redis(info: connection.ConnectionInfo) -> redis.Redis:
    """The store's credentials, one attempt per call, :data:`ONLINE_TIMEOUT`."""
    return redis.Redis(
        **connection.redis_kwargs(info, ONLINE_TIMEOUT), retry=redis_retry.Retry(redis_backoff.NoBackoff(), 0)
    )


def ensure_online_user(ctx: Context, obj: Obj[api.FeatureView], both: Stores) -> str | None:
    """The view's ACL user on the online Redis (``features.syncuser``) and its Secret; the Secret's name for
    the Job to mount, or None when the store's credentials may not manage users: the Job then mounts the
    store's own Secret, as said in a Warning event (and the view's Secret, if any, loses its user name)."""
    ns, name = obj.namespace, obj.name
    secret = syncuser.secret_name(name)
    found = ctx.kube.get_or_none("Secret", ns, secret)
    known = connsecret.values(found).get(store_names.PASSWORD_KEY) if found and _controlled_by(found, obj) else None
    # The user first, the Secret after: store credentials that may not make users leave no Secret behind.
    password = known or credentials.new_password()
    client = _admin_redis(both.online)
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
                recheck=CONFLICT_RECHECK,
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
                ONLINE_UNREACHABLE,
                f"spec.online.storeRef: making the sync user failed: {observation.error_message(exc, both.online)}",
                stalled=False,
            )
        ) from None
    finally:
        client.close()
    children.apply(ctx.kube, sync_secret(obj, both.online_published or both.online, user, password, secret))
    return secret


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
    client = _admin_redis(online)
    try:
        if syncuser.present(client, obj.namespace, obj.name):
            return
        user = syncuser.ensure(client, obj.namespace, obj.name, password)
    except (syncuser.UserConflict, syncuser.NotPermitted, redis.RedisError, OSError):
        return
    finally:
        client.close()
    obj.report.warning(
        SYNC_USER_RECREATED,
        f"spec.online.storeRef: the online store had lost the sync user {user} (restarted without an ACL file?): "
        "made again",
    )


def delete(ctx: Context, obj: Obj[api.FeatureView]) -> None:
    """Drop the view's sync role (only while it carries the view's mark); the table, the bookkeeping rows and
    the online keys stay (users' data), the Secret and the Jobs go with their owner. A store that cannot be
    reached keeps the role: said in a Warning event, the deletion goes on (it must not hang on a store that is
    gone for good)."""
    ref = obj.model.spec.offline.store_ref.name
    try:  # the offline store only: a broken online store must not keep the role
        offline = refs.connection_of(ctx, obj.namespace, ref, "postgres", "spec.offline.storeRef")
        with connection.postgres(offline, application_name=APPLICATION_NAME) as conn:
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
        client = _admin_redis(online)
        try:
            deleted = syncuser.delete(client, obj.namespace, obj.name)
        finally:
            client.close()
    except syncuser.NotPermitted:
        return  # it never had one
    except (ProblemError, redis.RedisError, OSError) as exc:
        why = exc.problem.message if isinstance(exc, ProblemError) else f"{type(exc).__name__}: {exc}"
        obj.report.warning("SyncUserKept", f"the online store's sync user {user} was not deleted: {why}"[:1024])
        return
    if deleted:
        obj.report.event("SyncUserDeleted", f"online store's sync user {user} deleted")


def request_sync(ctx: Context, obj: Obj[api.FeatureView], requested_at: str) -> str:
    """Start the one-off Job for a ``mlinfra.io/sync-requested-at`` value (idempotent); its name."""
    job = jobs.ondemand_job(
        obj.model, ctx.settings.job_image, obj.owner_reference(), requested_at, online_secret_of(ctx, obj)
    )
    children.create(ctx.kube, job)
    return str(job["metadata"]["name"])


def schema_message(table: schema.TableState) -> str:
    """SchemaApplied's message for a table in place; raises the Problem of a table that is not."""
    if not table.exists:
        raise ProblemError(Problem(TABLE_MISSING, f"table {table.table} does not exist", stalled=False))
    if table.missing:
        raise ProblemError(
            Problem(COLUMNS_MISSING, f"table {table.table} lacks columns {', '.join(table.missing)}", stalled=False)
        )
    parts = [f"table {table.table} up to date"]
    if table.retained:
        parts.append(f"kept columns of removed features {', '.join(table.retained)} (not served)")
    return "; ".join(parts)


def observe(ctx: Context, obj: Obj[api.FeatureView]) -> dict[str, Any]:
    """The status from the stores, the offline table as it is, the last run and the newest sync Job; records
    the freshness metrics."""
    fv, ns, name = obj.model, obj.namespace, obj.name
    both = stores(ctx, obj)
    repair_online_user(ctx, obj, both.online)  # before the data checks: a restarted Redis lost the user too
    with connection.postgres(both.offline, application_name=APPLICATION_NAME) as conn:
        message = schema_message(schema.inspect_offline_table(conn, fv.spec, name))
        repair_sync_role(ctx, obj, conn, both.offline)  # before a lost table asks for a sync Job
        data = data_state(conn, both.online, fv.spec, ns, name)
        last = freshness.last_run(conn, ns, name)
    fresh, mismatches = data.freshness, data.mismatches
    if mismatches:
        announce_loss(ctx, obj, list(mismatches), data.recorded)
    failed = jobstatus.newest_failure(ctx.kube, ns, {JOB_LABEL: name})
    objective = status.max_lag(fv)
    # An unknown lag removes the series (as a removed objective does): 0 would claim the view is fresh.
    metrics.set_objective(metrics.FEATUREVIEW_FRESHNESS_LAG, ns, name, fresh.lag_seconds)
    metrics.set_objective(
        metrics.FEATUREVIEW_FRESHNESS_MAX_LAG, ns, name, objective.total_seconds() if objective is not None else None
    )
    schema_name, table = layout.offline_table(name, fv.spec.offline.schema_name, fv.spec.offline.table)
    return status.compute(
        status.Facts(
            generation=obj.generation,
            offline_table=layout.qualified_name(schema_name, table),
            online_key_pattern=layout.key_pattern(ns, name),
            schema_message=message,
            freshness=fresh,
            last_run=last,
            job_failed=failed,
            max_lag=objective,
            mismatches=mismatches,
        ),
        obj.status,
    )


@dataclass(frozen=True)
class DataState:
    """Freshness as far as the watermark can be trusted, and why it cannot (``mismatches``)."""

    freshness: freshness.Freshness
    mismatches: tuple[identity.Mismatch, ...]
    recorded: identity.Recorded | None


def data_state(
    conn: psycopg.Connection[tuple[Any, ...]],
    online: connection.ConnectionInfo,
    spec: api.FeatureViewSpec,
    namespace: str,
    view: str,
) -> DataState:
    """The view's freshness from PostgreSQL, checked against the online store's marker and the offline table
    (``features.identity``): a watermark that describes other data gives an unknown lag."""
    fresh = freshness.compute(conn, spec, namespace, view)
    known = identity.recorded(conn, namespace, view)
    table_id = identity.offline_table(conn, spec, view)
    # The marker is read only when there is a recorded one to compare it with.
    marker = online_marker(online, namespace, view) if known is not None and known.known else None
    mismatches = tuple(identity.judge(known, marker, table_id))
    return DataState(freshness.distrusted(fresh) if mismatches else fresh, mismatches, known)


def online_marker(info: connection.ConnectionInfo, namespace: str, view: str) -> str | None:
    """The view's marker in the online store: one GET, one attempt, :data:`ONLINE_TIMEOUT` (a timeout is a
    ``TimeoutError``, reported as DeadlineExceeded by the handlers). Raises ProblemError when it cannot be
    read: the data cannot be vouched for then."""
    client = redis.Redis(
        **connection.redis_kwargs(info, ONLINE_TIMEOUT), retry=redis_retry.Retry(redis_backoff.NoBackoff(), 0)
    )
    try:
        return identity.marker(client, namespace, view)
    except redis.TimeoutError as exc:
        raise TimeoutError(f"spec.online.storeRef: {observation.error_message(exc, info)}") from None
    except (redis.RedisError, OSError) as exc:
        raise ProblemError(
            Problem(
                ONLINE_UNREACHABLE,
                f"spec.online.storeRef: reading the materialization marker failed: "
                f"{observation.error_message(exc, info)}",
                stalled=False,
            )
        ) from None
    finally:
        client.close()


def announce_loss(
    ctx: Context, obj: Obj[api.FeatureView], mismatches: list[identity.Mismatch], known: identity.Recorded | None
) -> None:
    """One Warning event when the observation turns to "the data is not what the watermark says" (the status
    stored before says otherwise), and, for a view synced on a schedule, a sync Job now rather than at the
    next cron tick. A view without a schedule (or suspended) is synced when its user says so."""
    first = mismatches[0]
    previous = conditions.get(obj.status.get("conditions"), "Materialized")
    if previous is not None and previous.get("reason") == first.status_reason:
        return  # already said; a timer tick is not news
    message = "; ".join(m.message for m in mismatches)
    m = obj.model.spec.materialization
    if m is not None and not m.suspend:
        # One Job per lost epoch: the observation repeated (an operator restart) finds the same Job.
        seed = f"{first.run_reason}/{known.epoch if known else ''}"
        requested_at = f"{first.run_reason.lower()}-{hashlib.sha256(seed.encode()).hexdigest()[:12]}"
        try:
            job = request_sync(ctx, obj, requested_at)
        except (ProblemError, objects.ApiError) as exc:
            message += f"; starting a sync Job failed ({exc}), the CronJob resyncs at its next run"
        else:
            message += f"; sync Job {job} started"
    obj.report.warning(first.status_reason, message)
