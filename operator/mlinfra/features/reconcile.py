"""Reconcile and observe a FeatureView: its two DataStores, the offline table, the sync role and its Secret,
the sync CronJob; the status from what the offline store and the sync Jobs show.

No Kopf here (handlers/featureview.py wires it through handlers.kind). What ``reconcile`` did to the table
is posted as events; ``observe`` reads the table as it is (read only) and never the object's own status.
Problems the user must act on are raised as ``ProblemError``; ``status.problem_status`` shows them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

from mlinfra import metrics, problems
from mlinfra.api import featureview as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection, observation
from mlinfra.features import (
    claim,
    connect,
    freshness,
    identity,
    indexbuild,
    jobs,
    layout,
    schema,
    status,
    synccreds,
    syncrole,
)
from mlinfra.k8s import conditions, jobstatus, objects
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import children

IMMUTABLE_FIELD_CHANGE = problems.IMMUTABLE_FIELD_CHANGE
TABLE_MISSING, COLUMNS_MISSING = schema.TABLE_MISSING, schema.COLUMNS_MISSING
APPLICATION_NAME = connect.APPLICATION_NAME
TABLE_IN_USE = "TableInUse"
CONFLICT_RECHECK = connect.CONFLICT_RECHECK
JOB_LABEL = jobs.KIND_LABEL
ONLINE_UNREACHABLE = connect.ONLINE_UNREACHABLE
ROLE_CONFLICT = synccreds.ROLE_CONFLICT
Stores = connect.Stores
stores = connect.stores


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
            password = synccreds.sync_password(ctx, obj)
            role = synccreds.ensure_sync_role(conn, offline, fv.spec, obj.namespace, obj.name, password)
    except syncrole.RoleConflict as exc:
        raise synccreds.role_conflict(exc) from None
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
    children.apply(ctx.kube, synccreds.sync_secret(obj, both.offline_published or offline, role, password))
    online_secret = synccreds.ensure_online_user(ctx, obj, both)
    cron = jobs.cronjob(fv, ctx.settings.job_image, obj.owner_reference(), online_secret)
    if cron is not None:
        children.apply(ctx.kube, cron)
    elif children.delete(ctx.kube, obj.owner_reference(), "CronJob", obj.namespace, jobs.cronjob_name(obj.name)):
        obj.report.event(
            "CronJobDeleted", f"CronJob {jobs.cronjob_name(obj.name)} deleted: spec.materialization is not set"
        )


def delete(ctx: Context, obj: Obj[api.FeatureView]) -> None:
    """What deleting the view does besides garbage collection: its sync role and user go (``synccreds.drop``)."""
    synccreds.drop(ctx, obj)


def request_sync(ctx: Context, obj: Obj[api.FeatureView], requested_at: str) -> str:
    """Start the one-off Job for a ``mlinfra.io/sync-requested-at`` value (idempotent); its name."""
    job = jobs.ondemand_job(
        obj.model, ctx.settings.job_image, obj.owner_reference(), requested_at, synccreds.online_secret_of(ctx, obj)
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
    synccreds.repair_online_user(ctx, obj, both.online)  # before the data checks: a restarted Redis lost the user too
    with connection.postgres(both.offline, application_name=APPLICATION_NAME) as conn:
        message = schema_message(schema.inspect_offline_table(conn, fv.spec, name))
        synccreds.repair_sync_role(ctx, obj, conn, both.offline)  # before a lost table asks for a sync Job
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
    """The view's marker in the online store: one GET, one attempt, :data:`connect.ONLINE_TIMEOUT` (a timeout is a
    ``TimeoutError``, reported as DeadlineExceeded by the handlers). Raises ProblemError when it cannot be
    read: the data cannot be vouched for then."""
    client = connect.online_client(info)
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
