"""The names and labels of everything a managed DataStore owns: the one place they are spelt.

A DataStore ``<name>`` in namespace ``<ns>`` owns the StatefulSet ``<name>`` (pods ``<name>-<i>``, volumes
``data-<name>-<i>``), the headless Service ``<name>-hl`` (stable pod DNS, ``<name>-<i>.<name>-hl.<ns>.svc``),
the client Service ``<name>`` (the primary where there is one), the read-only Service ``<name>-ro`` (the
healthy replicas of a replicated redis or postgres store), the Secrets ``<name>-credentials`` (generated)
and ``<name>-conn`` (the connection Secret), the ConfigMap ``<name>-config``, the PodDisruptionBudget
``<name>``, the NetworkPolicy ``<name>`` and the primary record ``<name>-primary`` (a ConfigMap). The
templates (``mlinfra.engines.render``), the reconciler, the observer and the local platform all take names
from here, so no name is ever built by hand in two places.

Children carry :func:`labels`, never the DataStore's own labels or annotations (copying them makes Argo CD
prune children and Kopf loop, kopf#635). :func:`selector_labels` is the stable subset that selects the
pods and volumes; it must never change (StatefulSet selectors are immutable).
"""

from __future__ import annotations

from typing import Final

from mlinfra.api import datastore

MANAGED_BY: Final = "mlinfra-operator"
COMPONENT: Final = "datastore"
DATASTORE_LABEL: Final = "mlinfra.io/datastore"
# Set by the StatefulSet controller on every pod: selects one pod (the client Service selects pod 0 with it).
POD_NAME_LABEL: Final = "statefulset.kubernetes.io/pod-name"
# Set by the operator on the pods of a replicated redis or postgres store from what each member reports:
# ``primary``, ``replica`` (streaming and caught up: the read-only Service selects these), absent otherwise.
ROLE_LABEL: Final = "mlinfra.io/role"
PRIMARY_ROLE: Final = "primary"
# The key of the primary record (``<name>-primary``) the pods read as MLINFRA_PRIMARY.
PRIMARY_KEY: Final = "primary"
REPLICA_ROLE: Final = "replica"
# The operator's own pods, as the Helm chart labels them (admitted by the optional NetworkPolicy).
OPERATOR_POD_LABELS: Final = {"app.kubernetes.io/name": "mlinfra-operator"}

# The volumeClaimTemplate of the StatefulSet; a pod's PVC is "<template>-<pod name>".
DATA_VOLUME: Final = "data"

# Keys of the credentials Secret ``<name>-credentials`` that the pods read (``secretKeyRef`` env only).
USERNAME_KEY: Final = "username"
PASSWORD_KEY: Final = "password"  # noqa: S105 - a key name, not a password
# PostgreSQL only: the password of POSTGRES_REPLICATION_USER, the role standbys stream as.
REPLICATION_PASSWORD_KEY: Final = "replication-password"  # noqa: S105 - a key name
POSTGRES_REPLICATION_USER: Final = "replicator"


def credentials_keys(engine: datastore.Engine) -> tuple[str, ...]:
    """The keys of the credentials Secret that ``engine``'s pods read (``secretKeyRef``, not optional: a pod
    whose key is missing does not start). Only postgres takes its user name from the Secret; redis
    (``default``), neo4j (``neo4j``) and qdrant (an API key, no user) have fixed or no user names."""
    if engine == "postgres":
        return (USERNAME_KEY, PASSWORD_KEY, REPLICATION_PASSWORD_KEY)
    return (PASSWORD_KEY,)


# --- child objects --------------------------------------------------------------------------------------


def statefulset(name: str) -> str:
    return name


def headless_service(name: str) -> str:
    """The Service that gives each pod a stable DNS name (``<pod>.<name>-hl.<ns>.svc``)."""
    return f"{name}-hl"


def client_service(name: str) -> str:
    """The Service clients connect to (the primary for redis and postgres; any member otherwise)."""
    return name


def read_only_service(name: str) -> str:
    """The Service of the healthy replicas of a replicated redis or postgres store (reads that may lag)."""
    return f"{name}-ro"


def primary_record(name: str) -> str:
    """The ConfigMap naming the pod that is the primary (``stores.primaryrecord``; key :data:`PRIMARY_KEY`)."""
    return f"{name}-primary"


def credentials_secret(name: str) -> str:
    return f"{name}-credentials"


def connection_secret(name: str) -> str:
    return f"{name}-conn"


def config_map(name: str) -> str:
    return f"{name}-config"


def pod_disruption_budget(name: str) -> str:
    return name


def network_policy(name: str) -> str:
    return name


def pod(name: str, ordinal: int) -> str:
    return f"{name}-{ordinal}"


def pvc(name: str, ordinal: int) -> str:
    """The PersistentVolumeClaim of pod ``ordinal`` (created from the StatefulSet's volumeClaimTemplate)."""
    return f"{DATA_VOLUME}-{pod(name, ordinal)}"


# --- DNS ------------------------------------------------------------------------------------------------


def namespace(ds: datastore.DataStore) -> str:
    return ds.metadata.namespace or "default"


def pod_host(ds: datastore.DataStore, ordinal: int = 0) -> str:
    """In-cluster DNS name of one pod, e.g. ``feats-0.feats-hl.ml.svc`` (pod 0 is the primary)."""
    name = ds.metadata.name
    return f"{pod(name, ordinal)}.{headless_service(name)}.{namespace(ds)}.svc"


def service_host(ds: datastore.DataStore) -> str:
    """In-cluster DNS name of the client Service, e.g. ``feats.ml.svc``."""
    return f"{client_service(ds.metadata.name)}.{namespace(ds)}.svc"


def read_only_host(ds: datastore.DataStore) -> str:
    """In-cluster DNS name of the read-only Service, e.g. ``feats-ro.ml.svc``."""
    return f"{read_only_service(ds.metadata.name)}.{namespace(ds)}.svc"


# --- labels ---------------------------------------------------------------------------------------------


def selector_labels(ds: datastore.DataStore) -> dict[str, str]:
    """Labels that select this store's pods and volumes. Immutable: never add or change one."""
    return pod_selector(ds.spec.engine, ds.metadata.name)


def pod_selector(engine: str, name: str) -> dict[str, str]:
    """:func:`selector_labels` of the ``engine`` store ``name``, for callers holding only its name."""
    return {"app.kubernetes.io/name": engine, "app.kubernetes.io/instance": name, DATASTORE_LABEL: name}


def labels(ds: datastore.DataStore) -> dict[str, str]:
    """Labels of every child object (and of the pods): the selector labels plus who manages them."""
    return {
        **selector_labels(ds),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": COMPONENT,
    }


def primary_selector(ds: datastore.DataStore, primary: str | None = None) -> dict[str, str]:
    """Selects the primary pod only (pod 0 unless the primary record names another): the primary of redis
    and postgres (replicas and standbys are read-only)."""
    return {**selector_labels(ds), POD_NAME_LABEL: primary or pod(ds.metadata.name, 0)}


def read_only_selector(ds: datastore.DataStore) -> dict[str, str]:
    """Selects the members the operator labelled healthy replicas."""
    return {**selector_labels(ds), ROLE_LABEL: REPLICA_ROLE}
