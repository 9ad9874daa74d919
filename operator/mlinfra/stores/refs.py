"""How the ML kinds reach the DataStores they reference (``storeRef``): checked, Ready, and connectable.

FeatureView, ModelRegistry and VectorIndex all go through ``connection_of``, so "store not found", "wrong
engine" and "store not Ready" read the same everywhere.
"""

from __future__ import annotations

from mlinfra.context import Context
from mlinfra.engines import connection
from mlinfra.k8s import conditions
from mlinfra.problems import STORE_NOT_FOUND, STORE_NOT_READY, WRONG_ENGINE, Problem, ProblemError
from mlinfra.stores import connsecret


def connection_of(ctx: Context, namespace: str, ref: str, engine: str, role: str) -> connection.ConnectionInfo:
    """The connection of the DataStore ``ref``, which must exist, be an ``engine`` store and be Ready, as the
    operator reaches it. ``role`` names the referring field in messages (e.g. ``spec.offline.storeRef``)."""
    ds = ctx.kube.get_or_none("DataStore", namespace, ref)
    if ds is None:
        raise ProblemError(
            Problem(STORE_NOT_FOUND, f"{role}: DataStore {ref!r} not found in namespace {namespace!r}", stalled=False)
        )
    actual = ds.get("spec", {}).get("engine")
    if actual != engine:
        raise ProblemError(
            Problem(
                WRONG_ENGINE,
                f"{role}: DataStore {ref!r} is a {actual} store; a {engine} store is required",
                stalled=True,
            )
        )
    ready = conditions.get((ds.get("status") or {}).get("conditions"), "Ready")
    conn = connsecret.read_connection(ctx.kube, namespace, ref)
    if ready is None or ready.get("status") != "True" or conn is None:
        why = (ready or {}).get("message") or "not observed yet"
        raise ProblemError(Problem(STORE_NOT_READY, f"{role}: DataStore {ref!r} is not Ready: {why}", stalled=False))
    return ctx.reach(conn, namespace, ref) if ds["spec"].get("managed") else conn


def published_connection(ctx: Context, namespace: str, ref: str) -> connection.ConnectionInfo | None:
    """The connection of the DataStore ``ref`` as published for apps (in-cluster host, no redirect)."""
    return connsecret.read_connection(ctx.kube, namespace, ref)
