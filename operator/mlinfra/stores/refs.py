"""How the ML kinds reach the DataStores they reference (``storeRef``): checked, Ready, and connectable.

FeatureView, ModelRegistry and VectorIndex all go through ``connection_of``, so "store not found", "wrong
engine" and "store not Ready" read the same everywhere.
"""

from __future__ import annotations

from mlinfra.engines import connection
from mlinfra.k8s import conditions, objects
from mlinfra.stores import endpoints
from mlinfra.stores import reconcile as store_reconcile
from mlinfra.stores.status import Problem, ProblemError

STORE_NOT_FOUND = "StoreNotFound"
STORE_NOT_READY = "StoreNotReady"
WRONG_ENGINE = "WrongEngine"


def connection_of(namespace: str, ref: str, engine: str, role: str,
                  emap: endpoints.EndpointMap | None = None) -> connection.ConnectionInfo:
    """The connection of the DataStore ``ref``, which must exist, be an ``engine`` store and be Ready.

    ``role`` names the referring field in messages (e.g. ``spec.offline.storeRef``).
    """
    ds = objects.get_or_none("DataStore", namespace, ref)
    if ds is None:
        raise ProblemError(Problem(STORE_NOT_FOUND, f"{role}: DataStore {ref!r} not found in namespace "
                                   f"{namespace!r}", stalled=False))
    actual = ds.get("spec", {}).get("engine")
    if actual != engine:
        raise ProblemError(Problem(WRONG_ENGINE, f"{role}: DataStore {ref!r} is a {actual} store; "
                                   f"a {engine} store is required", stalled=True))
    ready = conditions.get((ds.get("status") or {}).get("conditions"), "Ready")
    conn = store_reconcile.connection_from_secret(namespace, ref)
    if ready is None or ready.get("status") != "True" or conn is None:
        why = (ready or {}).get("message") or "not observed yet"
        raise ProblemError(Problem(STORE_NOT_READY, f"{role}: DataStore {ref!r} is not Ready: {why}",
                                   stalled=False))
    return endpoints.resolve(conn, namespace, ref, emap) if ds["spec"].get("managed") else conn
