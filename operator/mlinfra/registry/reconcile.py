"""Reconcile a ModelRegistry: its database, the migrations, the writer/reader roles and their Secrets,
and the lineage graph's constraints. No Kopf here (handlers/modelregistry.py calls it).

Role names are global to a PostgreSQL server, so they carry the namespace: two registries called
``models`` in two namespaces on one server never share credentials.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import neo4j
import psycopg
import pydantic
from psycopg import sql

from mlinfra.api import common
from mlinfra.api import modelregistry as api
from mlinfra.engines import connection
from mlinfra.engines import names as store_names
from mlinfra.k8s import objects
from mlinfra.registry import jobs, lineage, migrate, roles, status, sync_cli
from mlinfra.registry import observe as observe_mod
from mlinfra.stores import endpoints, refs
from mlinfra.stores import reconcile as store_reconcile
from mlinfra.stores.status import ProblemError, invalid_spec


def parse(body: Mapping[str, Any]) -> api.ModelRegistry:
    try:
        return api.ModelRegistry.model_validate(dict(body))
    except pydantic.ValidationError as exc:
        raise ProblemError(invalid_spec(exc)) from None


def role_name(namespace: str, name: str, kind: str) -> str:
    """``mlinfra_<ns>_<name>_<kind>`` as a PostgreSQL identifier (63 bytes at most, unique by a hash)."""
    raw = re.sub(r"[^a-z0-9_]", "_", f"mlinfra_{namespace}_{name}_{kind}".lower())
    if len(raw) <= 63:
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{raw[: 63 - len(kind) - 10]}_{digest}_{kind}"


def secret_name(name: str, kind: str) -> str:
    return f"{name}-{kind}"


@dataclass(frozen=True)
class Stores:
    metadata: connection.ConnectionInfo  # reachable from the operator (dev endpoint map applied)
    published: connection.ConnectionInfo  # as published for apps (in-cluster host)
    database: str
    lineage: connection.ConnectionInfo | None
    lineage_problem: str | None


def resolve_stores(mr: api.ModelRegistry, emap: endpoints.EndpointMap) -> Stores:
    ns = mr.metadata.namespace or "default"
    ref = mr.spec.metadata_store_ref.name
    metadata = refs.connection_of(ns, ref, "postgres", "spec.metadataStoreRef", emap)
    published = store_reconcile.connection_from_secret(ns, ref) or metadata
    database = mr.spec.database or metadata.database or "postgres"
    lineage, problem = None, None
    if mr.spec.lineage_store_ref is not None:
        try:
            lineage = refs.connection_of(ns, mr.spec.lineage_store_ref.name, "neo4j", "spec.lineageStoreRef", emap)
        except ProblemError as exc:
            if exc.problem.stalled:  # a wrong engine is the user's to fix
                raise
            problem = exc.problem.message  # a lineage store that is down only delays the graph
    return Stores(metadata, published, database, lineage, problem)


def postgres(info: connection.ConnectionInfo,
             database: str) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
    return sync_cli.postgres(info, database)


def neo4j_driver(info: connection.ConnectionInfo) -> contextlib.AbstractContextManager[neo4j.Driver]:
    return connection.neo4j_driver(info, 5, max_transaction_retry_time=5)


def ensure_database(stores: Stores) -> None:
    if stores.database == (stores.metadata.database or "postgres"):
        return
    with postgres(stores.metadata, stores.metadata.database or "postgres") as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (stores.database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(stores.database)))


def _credentials(body: Mapping[str, Any], mr: api.ModelRegistry, stores: Stores, kind: str) -> tuple[str, str]:
    """The role name and password of ``kind`` (writer/reader): generated once, kept in the Secret
    ``<name>-<kind>`` in the connection-Secret format (host, port, database of the registry)."""
    ns, name = mr.metadata.namespace or "default", mr.metadata.name
    user = role_name(ns, name, kind)
    existing = objects.get_or_none("Secret", ns, secret_name(name, kind))
    raw = ((existing or {}).get("data") or {}).get("password")
    password = base64.b64decode(raw).decode() if raw else secrets.token_urlsafe(24)
    info = connection.ConnectionInfo("postgres", stores.published.host, stores.published.port, user, password,
                                     stores.database, stores.published.tls, stores.published.ca_cert)
    objects.apply({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": secret_name(name, kind), "namespace": ns,
                     "labels": {"app.kubernetes.io/managed-by": store_names.MANAGED_BY,
                                "mlinfra.io/modelregistry": name},
                     "ownerReferences": [objects.owner_reference(body)]},
        "stringData": info.to_secret_data(),
    })
    return user, password


@dataclass(frozen=True)
class Applied:
    schema_version: int
    writer_secret: str
    reader_secret: str


def reconcile(body: Mapping[str, Any], emap: endpoints.EndpointMap, job_image: str) -> tuple[Applied, Stores]:
    mr = parse(body)
    stores = resolve_stores(mr, emap)
    ensure_database(stores)
    writer = _credentials(body, mr, stores, "writer")
    reader = _credentials(body, mr, stores, "reader")
    with postgres(stores.metadata, stores.database) as conn:
        version = migrate.apply(conn, mr.spec.schema_version)
        roles.ensure_roles(conn, stores.database, writer[0], writer[1], reader[0], reader[1])
    name = mr.metadata.name
    cron = jobs.cronjob(mr, job_image, objects.owner_reference(body))
    if cron is not None:
        objects.apply(cron)
    else:
        objects.delete("CronJob", mr.metadata.namespace or "default", jobs.cronjob_name(name))
    return Applied(version, secret_name(name, "writer"), secret_name(name, "reader")), stores


def sync_lineage(mr: api.ModelRegistry, stores: Stores) -> str | None:
    """One pass of the outbox -> graph sync (constraints first); the error text when it could not run."""
    if stores.lineage is None:
        return stores.lineage_problem
    batch = mr.spec.lineage_sync.batch_size if mr.spec.lineage_sync else api.LineageSync().batch_size
    try:
        with neo4j_driver(stores.lineage) as driver, postgres(stores.metadata, stores.database) as conn:
            lineage.ensure_schema(driver)
            lineage.sync(conn, driver, batch_size=batch, max_batches=20, lock_timeout_seconds=5)
    except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
        return f"lineage sync failed: {type(exc).__name__}: {exc}"[:1024]
    return None


def observe(mr: api.ModelRegistry, stores: Stores, lineage_problem: str | None) -> status.Facts:
    with postgres(stores.metadata, stores.database) as conn:
        version = observe_mod.schema_version(conn)
        counts = observe_mod.counts(conn)
        outbox = observe_mod.outbox(conn)
    graph = None
    if stores.lineage is not None and lineage_problem is None:
        try:
            with neo4j_driver(stores.lineage) as driver:
                graph = observe_mod.graph(driver)
        except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
            lineage_problem = f"lineage store: {type(exc).__name__}: {exc}"[:1024]
    sync = mr.spec.lineage_sync or api.LineageSync()
    name = mr.metadata.name
    return status.Facts(
        generation=mr.metadata.generation, schema_version=version,
        writer_secret=secret_name(name, "writer"), reader_secret=secret_name(name, "reader"),
        counts={"registeredModels": counts.registered_models, "modelVersions": counts.model_versions,
                "datasets": counts.datasets, "deployments": counts.deployments},
        lineage_enabled=mr.spec.lineage_store_ref is not None, lineage_problem=lineage_problem,
        pending_events=outbox.pending_events, oldest_pending_age=outbox.oldest_pending_age_seconds,
        last_sync_time=outbox.last_sync_time,
        nodes=graph.nodes if graph else None, relationships=graph.relationships if graph else None,
        max_lag=common.parse_duration(sync.max_lag))
