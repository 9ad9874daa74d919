"""Reconcile and observe a ModelRegistry: its database, the migrations, the writer/reader roles and their
Secrets, the lineage-sync CronJob, and the in-process lineage sync; the status from what the databases show.
No Kopf here (handlers/modelregistry.py wires it).

Role names are global to a PostgreSQL server, so they carry the namespace: two registries called
``models`` in two namespaces on one server never share credentials.

Without ``spec.lineageSync.schedule`` the operator drains the outbox itself: once per reconcile, and on
observation whenever a pass is due, i.e. ``spec.lineageSync.interval`` has passed since the last one the
registry database recorded (``registry.lineage_sync_state``; before migration 3, which records every pass,
only passes that synced events leave a trace, so a pass is due only with events pending).

The lineage graph is the registry's share of its Neo4j database, keyed by ``<namespace>/<name>``
(``registry.lineage``): other registries may use the same database. A graph of that name built from another
registry database is ``LineageGraphInUse`` (Stalled), never taken over.
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass, replace
from typing import Any

import neo4j
import psycopg
from psycopg import sql

from mlinfra import metrics
from mlinfra.api import common
from mlinfra.api import modelregistry as api
from mlinfra.context import Context, Obj
from mlinfra.engines import connection, pg_roles
from mlinfra.engines import names as store_names
from mlinfra.problems import Problem, ProblemError
from mlinfra.registry import claim, graphwork, jobs, lineage, lineagerole, migrate, roles, status
from mlinfra.registry import observe as observe_mod
from mlinfra.stores import children, credentials, refs

APPLICATION_NAME = "mlinfra-operator"
DATABASE_IN_USE = "DatabaseInUse"
ROLE_CONFLICT = "RoleConflict"
LINEAGE_GRAPH_IN_USE = "LineageGraphInUse"
CONFLICT_RECHECK = 60.0  # seconds: the other registry or the role may go away without a spec change
# Seconds a handler waits for a lineage pass or a graph read (registry.graphwork): more than a pass against
# an unreachable server takes to fail on its own (a 5 s connect timeout, tried again for 5 s), far less than
# a frozen server's connection can hold a read (the server's hint: 120 s by default, or none).
NEO4J_WAIT = 15.0


def role_name(namespace: str, name: str, kind: str) -> str:
    """The registry's role of ``kind`` (writer, reader, lineage): ``engines.pg_roles.role_name``."""
    return pg_roles.role_name(namespace, name, kind)


def secret_name(name: str, kind: str) -> str:
    return f"{name}-{kind}"


@dataclass(frozen=True)
class Stores:
    metadata: connection.ConnectionInfo  # reachable from the operator (dev endpoint map applied)
    published: connection.ConnectionInfo  # as published for apps (in-cluster host)
    database: str
    lineage: connection.ConnectionInfo | None
    lineage_problem: str | None  # why the lineage store cannot be used now (it only delays the graph)


def resolve_stores(ctx: Context, obj: Obj[api.ModelRegistry]) -> Stores:
    """The registry's stores; a missing or not Ready metadata store, or a lineage store of the wrong engine,
    raises ProblemError. A lineage store that is missing or not Ready only becomes ``lineage_problem``."""
    spec, ns = obj.model.spec, obj.namespace
    ref = spec.metadata_store_ref.name
    metadata = refs.connection_of(ctx, ns, ref, "postgres", "spec.metadataStoreRef")
    published = refs.published_connection(ctx, ns, ref) or metadata
    database = spec.database or metadata.database or "postgres"
    graph, problem = None, None
    if spec.lineage_store_ref is not None:
        try:
            graph = refs.connection_of(ctx, ns, spec.lineage_store_ref.name, "neo4j", "spec.lineageStoreRef")
        except ProblemError as exc:
            if exc.problem.stalled:  # a wrong engine is the user's to fix
                raise
            problem = exc.problem.message  # a lineage store that is down only delays the graph
    return Stores(metadata, published, database, graph, problem)


def _postgres(
    info: connection.ConnectionInfo, database: str
) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
    return connection.postgres(info, APPLICATION_NAME, database=database)


def _neo4j(info: connection.ConnectionInfo) -> contextlib.AbstractContextManager[neo4j.Driver]:
    return connection.neo4j_driver(info, 5, max_transaction_retry_time=5)


def _ensure_database(stores: Stores) -> bool:
    """Create the registry's database when it is not the store's own; True when it was created. PUBLIC's
    CONNECT is revoked from a database made here: it is the registry's alone, and the registry's roles get
    CONNECT by grants of their own (the operator, its owner, needs none), so no other tenant's login — another
    registry's lineage role, say — may even connect to it. A database that exists already is left as it is
    (other applications may rely on its PUBLIC CONNECT)."""
    if stores.database == (stores.metadata.database or "postgres"):
        return False
    with _postgres(stores.metadata, stores.metadata.database or "postgres") as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (stores.database,)).fetchone():
            return False
        db = sql.Identifier(stores.database)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(db))
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(db))
    return True


def _credentials(ctx: Context, obj: Obj[api.ModelRegistry], stores: Stores, kind: str) -> tuple[str, str]:
    """The role name and password of ``kind`` (writer/reader): the password generated once, kept in the
    Secret ``<name>-<kind>`` in the connection-Secret format (host, port, database of the registry)."""
    ns, name = obj.namespace, obj.name
    user = role_name(ns, name, kind)
    labels = _labels(name)
    owner = obj.owner_reference()
    password = credentials.password(ctx.kube, ns, secret_name(name, kind), labels, owner)
    # The published store's endpoint and every TLS setting, with the role's credentials and database.
    published = replace(stores.published, database=stores.database)
    ctx.kube.apply(credentials.login_secret(ns, secret_name(name, kind), labels, owner, published, user, password))
    return user, password


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": store_names.MANAGED_BY, "mlinfra.io/modelregistry": name}


def _lineage_password(ctx: Context, obj: Obj[api.ModelRegistry]) -> str:
    """The lineage role's password: generated once, kept only in the registry's Secret
    ``lineagerole.secret_name`` (completed into the connection-Secret format once the role exists)."""
    return credentials.password(
        ctx.kube, obj.namespace, lineagerole.secret_name(obj.name), _labels(obj.name), obj.owner_reference()
    )


def _lineage_secret(obj: Obj[api.ModelRegistry], stores: Stores, role: str, password: str) -> dict[str, Any]:
    """The Secret the lineage-sync Job mounts for the metadata store: the store as published (host, port, TLS,
    CA) with the registry's database and the lineage role's credentials."""
    return credentials.login_secret(
        obj.namespace,
        lineagerole.secret_name(obj.name),
        _labels(obj.name),
        obj.owner_reference(),
        replace(stores.published, database=stores.database),
        role,
        password,
    )


def _syncs_in_process(mr: api.ModelRegistry) -> bool:
    """With a lineage store and no schedule the operator syncs; with a schedule the CronJob does."""
    return mr.spec.lineage_store_ref is not None and (mr.spec.lineage_sync or api.LineageSync()).schedule is None


def sync_due(outbox: observe_mod.Outbox, interval: datetime.timedelta) -> bool:
    """Whether an in-process sync pass is due, from what the registry database recorded of the last one."""
    if not outbox.records_passes and outbox.pending_events == 0:
        return False  # nothing to sync, and a pass would leave no trace to time the next one by
    return outbox.seconds_since_sync is None or outbox.seconds_since_sync >= interval.total_seconds()


def graph_in_use(exc: lineage.GraphInUse) -> ProblemError:
    """The Stalled problem of a lineage graph held by another registry database (nothing was changed)."""
    return ProblemError(
        Problem(
            LINEAGE_GRAPH_IN_USE,
            f"spec.lineageStoreRef: {exc}: nothing was changed; point spec.lineageStoreRef at another Neo4j "
            f"database, or, if that graph is this registry's own from before its database was created again, "
            f"delete it (MATCH (n {{registry: '{exc.registry}'}}) DETACH DELETE n)",
            stalled=True,
            recheck=CONFLICT_RECHECK,
        )
    )


def _driver_error(exc: BaseException) -> str:
    """``exc`` with its cause: the Neo4j driver words a read that timed out as a "defunct connection" and
    keeps the timeout itself as the cause."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def _still_running(exc: graphwork.StillRunning, graph: connection.ConnectionInfo) -> str:
    return (
        f"DeadlineExceeded: Neo4j at {graph.endpoint}: the lineage work of {exc.key} started {exc.age:.0f} s ago "
        f"has not finished (the operator waits {exc.wait:g} s, timeout; it goes on in the background)"
    )


def _sync_lineage(mr: api.ModelRegistry, registry: str, graph: connection.ConnectionInfo, stores: Stores) -> str | None:
    """One pass of the outbox -> graph sync of ``registry`` (``<namespace>/<name>``; constraints first), on
    connections of its own, waited for at most :data:`NEO4J_WAIT` (``registry.graphwork``); the error text
    when it could not run or did not end in time. Raises ProblemError (LineageGraphInUse) for a graph it must
    not touch."""
    batch = (mr.spec.lineage_sync or api.LineageSync()).batch_size

    def work() -> None:
        with _postgres(stores.metadata, stores.database) as conn, _neo4j(graph) as driver:
            lineage.ensure_schema(driver)
            lineage.sync(conn, driver, batch_size=batch, max_batches=20, lock_timeout_seconds=5, registry=registry)

    try:
        graphwork.run(registry, work, NEO4J_WAIT)
    except lineage.GraphInUse as exc:
        raise graph_in_use(exc) from None
    except graphwork.StillRunning as exc:  # a TimeoutError, so an OSError: first
        return _still_running(exc, graph)
    except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
        return f"lineage sync failed: {_driver_error(exc)}"[:1024]
    return None


def reconcile(ctx: Context, obj: Obj[api.ModelRegistry]) -> None:
    """Database, migrations, roles and their Secrets, the CronJob (or none) and its lineage role, and one
    lineage sync pass when the operator syncs in process (what it could not sync, observe reports).

    The lineage role (``registry.lineagerole``) is made when the registry first has a CronJob and kept while
    the registry lives (a schedule removed and given again finds it; the operator may not delete Secrets)."""
    mr, ns, name = obj.model, obj.namespace, obj.name
    stores = resolve_stores(ctx, obj)
    if _ensure_database(stores):
        obj.report.event("DatabaseCreated", f"created database {stores.database!r}")
    writer = _credentials(ctx, obj, stores, "writer")
    reader = _credentials(ctx, obj, stores, "reader")
    owner = f"{obj.namespace}/{obj.name}"
    cron = jobs.cronjob(mr, ctx.settings.job_image, obj.owner_reference())
    lineage_password = _lineage_password(ctx, obj) if cron is not None else None
    lineage_role = None
    with _postgres(stores.metadata, stores.database) as conn:
        try:
            claim.claim(conn, stores.database, owner)
            before = migrate.applied_version(conn)
            version = migrate.apply(conn, mr.spec.schema_version)
            roles.ensure_roles(conn, stores.database, writer[0], writer[1], reader[0], reader[1], owner=owner)
            if lineage_password is not None:
                lineage_role = lineagerole.ensure(conn, stores.database, ns, name, lineage_password)
        except migrate.ForeignSchema as exc:
            raise ProblemError(
                Problem(
                    DATABASE_IN_USE,
                    f"spec.database: {exc} on DataStore {mr.spec.metadata_store_ref.name!r}: nothing was changed; "
                    "give this registry a database of its own (spec.database), or drop or rename that schema",
                    stalled=True,
                    recheck=CONFLICT_RECHECK,
                )
            ) from None
        except claim.DatabaseInUse as exc:
            raise ProblemError(
                Problem(
                    DATABASE_IN_USE,
                    f"spec.database: {exc} on DataStore {mr.spec.metadata_store_ref.name!r}: nothing was changed; "
                    "give this registry a database of its own (spec.database)",
                    stalled=True,
                    recheck=CONFLICT_RECHECK,
                )
            ) from None
        except roles.RoleConflict as exc:
            raise ProblemError(
                Problem(
                    ROLE_CONFLICT,
                    f"{exc}: nothing was changed; drop or rename that role on the server, or rename this registry",
                    stalled=True,
                    recheck=CONFLICT_RECHECK,
                )
            ) from None
    if version != before:
        obj.report.event("Migrated", f"schema version {before} -> {version}")
    if lineage_role is not None and lineage_password is not None:
        children.apply(ctx.kube, _lineage_secret(obj, stores, lineage_role, lineage_password))
    if cron is not None:
        children.apply(ctx.kube, cron)
    else:
        children.delete(ctx.kube, obj.owner_reference(), "CronJob", ns, jobs.cronjob_name(name))
    if _syncs_in_process(mr) and stores.lineage is not None:
        _sync_lineage(mr, owner, stores.lineage, stores)


def observe(ctx: Context, obj: Obj[api.ModelRegistry]) -> dict[str, Any]:
    """The status from the registry database and the graph, after a lineage sync pass if one is due; records
    the lineage metrics."""
    mr, ns, name = obj.model, obj.namespace, obj.name
    registry = f"{ns}/{name}"
    stores = resolve_stores(ctx, obj)
    sync = mr.spec.lineage_sync or api.LineageSync()
    lineage_problem = stores.lineage_problem
    with _postgres(stores.metadata, stores.database) as conn:
        if (
            _syncs_in_process(mr)
            and stores.lineage is not None
            and sync_due(observe_mod.outbox(conn), common.parse_duration(sync.interval))
        ):
            lineage_problem = _sync_lineage(mr, registry, stores.lineage, stores)
        version = observe_mod.schema_version(conn)
        history = lineage.history(conn) if version else None
        counts = observe_mod.counts(conn)
        outbox = observe_mod.outbox(conn)
    graph = None
    if stores.lineage is not None and lineage_problem is None:
        info, ours = stores.lineage, history

        def read() -> observe_mod.Graph:
            with _neo4j(info) as driver:
                # Checked on every observation, not only when a pass was due: the status must not
                # flip between Stalled and Ready with the sync interval (e.g. with a CronJob syncing).
                held = lineage.graph_history(driver, registry)
                if held is not None and ours is not None and held != ours:
                    raise graph_in_use(lineage.GraphInUse(registry, None, held, ours))
                return observe_mod.graph(driver, registry)

        try:
            graph = graphwork.run(registry, read, NEO4J_WAIT)
        except graphwork.StillRunning as exc:
            lineage_problem = _still_running(exc, info)
        except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
            lineage_problem = f"lineage store: {_driver_error(exc)}"[:1024]
    max_lag = common.parse_duration(sync.max_lag)
    metrics.REGISTRY_PENDING_EVENTS.labels(ns, name).set(outbox.pending_events)
    metrics.REGISTRY_LINEAGE_LAG.labels(ns, name).set(outbox.oldest_pending_age_seconds or 0)
    metrics.REGISTRY_LINEAGE_MAX_LAG.labels(ns, name).set(max_lag.total_seconds())
    facts = status.Facts(
        generation=obj.generation,
        schema_version=version,
        writer_secret=secret_name(name, "writer"),
        reader_secret=secret_name(name, "reader"),
        counts={
            "registeredModels": counts.registered_models,
            "modelVersions": counts.model_versions,
            "datasets": counts.datasets,
            "deployments": counts.deployments,
        },
        lineage_enabled=mr.spec.lineage_store_ref is not None,
        lineage_problem=lineage_problem,
        pending_events=outbox.pending_events,
        oldest_pending_age=outbox.oldest_pending_age_seconds,
        last_sync_time=outbox.last_sync_time,
        nodes=graph.nodes if graph else None,
        relationships=graph.relationships if graph else None,
        max_lag=max_lag,
    )
    return status.compute(facts, obj.status)


def delete(ctx: Context, obj: Obj[api.ModelRegistry]) -> None:
    """Drop the registry's lineage role (only while it carries the registry's mark). The database, the
    writer and reader roles stay (users' data, and the credentials their applications hold); the Secrets and
    the CronJob go with their owner. A store that cannot be reached keeps the role: said in a Warning event,
    the deletion goes on (it must not hang on a store that is gone for good). The role is looked for on the
    store's own database first: a registry that never had one (no schedule, or a database it never got) says
    nothing, whether or not its database exists."""
    role = lineagerole.role_name(obj.namespace, obj.name)
    try:
        ref = obj.model.spec.metadata_store_ref.name
        metadata = refs.connection_of(ctx, obj.namespace, ref, "postgres", "spec.metadataStoreRef")
        with _postgres(metadata, metadata.database or "postgres") as conn:
            if not lineagerole.present(conn, obj.namespace, obj.name):
                return
        # Dropped from the registry's database: its privileges there go first.
        database = obj.model.spec.database or metadata.database or "postgres"
        with _postgres(metadata, database) as conn:
            dropped = lineagerole.drop(conn, obj.namespace, obj.name)
    except (ProblemError, psycopg.Error, OSError) as exc:  # TimeoutError is an OSError
        why = exc.problem.message if isinstance(exc, ProblemError) else f"{type(exc).__name__}: {exc}"
        obj.report.warning("LineageRoleKept", f"the lineage role {role} was not dropped: {why}"[:1024])
        return
    if dropped:
        obj.report.event("LineageRoleDropped", f"lineage role {role} dropped")
