"""The primary record of a managed redis or postgres store: the ConfigMap ``<name>-primary`` naming the pod
that is the primary. It is the one source of that fact: the client (read-write) Service selects the pod it
names, every pod reads it when it starts (``MLINFRA_PRIMARY``: the named pod starts as the primary, any other
as its replica), and only a failover or switchover decision (``stores.failover``) changes it.

Written with the version it was read at (a merge patch naming ``resourceVersion``): two writers that raced
would see a conflict, never a lost update. A store created before the record existed gets one naming pod 0,
which is what its pods were rendered with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mlinfra.api import datastore as api
from mlinfra.engines import names
from mlinfra.k8s import objects
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import children


@dataclasses.dataclass(frozen=True)
class Record:
    primary: str
    epoch: int = 0
    fencing: str | None = None  # the old primary whose pod is deleted before ``primary`` is promoted
    fencing_uid: str | None = None  # the uid of that pod: fenced once no pod of this uid exists
    # The server container's restart count when the fence began: fenced once it grew (its server was killed
    # in the container and the kubelet started another, which read this record) without waiting for the pod.
    fencing_restarts: int | None = None
    fencing_killed: bool = False  # its server was SIGKILLed in its container by the fence (stores.ha)
    changed_at: str | None = None  # RFC 3339: when the primary last changed
    version: str | None = None  # the ConfigMap's resourceVersion when read

    def data(self) -> dict[str, str]:
        return {
            names.PRIMARY_KEY: self.primary,
            "epoch": str(self.epoch),
            "fencing": self.fencing or "",
            "fencingUid": self.fencing_uid or "",
            "fencingRestarts": "" if self.fencing_restarts is None else str(self.fencing_restarts),
            "fencingKilled": "true" if self.fencing_killed else "",
            "changedAt": self.changed_at or "",
        }


def status_of(record: Record | None) -> dict[str, Any]:
    """The record as the DataStore's status shows it (during a failover the current primary is the one being
    fenced and the target the one being promoted)."""
    if record is None:
        return {}
    out: dict[str, Any] = {"primaryEpoch": record.epoch}
    if record.fencing:
        out |= {"currentPrimary": record.fencing, "targetPrimary": record.primary}
    else:
        out["currentPrimary"] = record.primary
    if record.changed_at:
        out["lastFailoverTime"] = record.changed_at
    return out


def parse(cm: Mapping[str, Any]) -> Record:
    data = cm.get("data") or {}
    epoch = str(data.get("epoch") or "0")
    return Record(
        primary=str(data.get(names.PRIMARY_KEY) or ""),
        epoch=int(epoch) if epoch.isdigit() else 0,
        fencing=data.get("fencing") or None,
        fencing_uid=data.get("fencingUid") or None,
        fencing_restarts=int(restarts) if (restarts := str(data.get("fencingRestarts") or "")).isdigit() else None,
        fencing_killed=data.get("fencingKilled") == "true",
        changed_at=data.get("changedAt") or None,
        version=(cm.get("metadata") or {}).get("resourceVersion"),
    )


PRIMARY_WOULD_GO = "PrimaryWouldBeRemoved"


def check_kept(record: Record | None, ds: api.DataStore) -> None:
    """A scale-down must keep the primary: a spec that would remove the pod the record names (after a failover
    to a higher ordinal) is Stalled until the primary is switched to a member that stays."""
    managed = ds.spec.managed
    if record is None or managed is None:
        return
    ordinal = record.primary.rpartition("-")[2]
    if ordinal.isdigit() and int(ordinal) >= managed.replicas:
        keep = names.pod(ds.metadata.name, 0)
        raise ProblemError(
            Problem(
                PRIMARY_WOULD_GO,
                f"spec.managed.replicas {managed.replicas} would remove {record.primary}, the primary: switch the "
                f"primary to a member that stays first (mlinfra promote {names.namespace(ds)}/{ds.metadata.name} "
                f"{keep}), then scale down",
                stalled=True,
                recheck=30.0,
            )
        )


def read(kube: objects.Kube, namespace: str, store: str) -> Record | None:
    cm = kube.get_or_none("ConfigMap", namespace, names.primary_record(store))
    if cm is None:
        return None
    record = parse(cm)
    return record if record.primary else None


def ensure(kube: objects.Kube, store: Mapping[str, Any], labels: Mapping[str, str], retained: bool) -> Record:
    """The store's record, created naming pod 0 when it has none; a ConfigMap of that name that is not the
    store's is a ChildConflict, like every child. ``retained`` (deletionPolicy Retain): created without an
    owner, as the credentials are, so that a store re-created on its kept volumes finds which of them held the
    primary (pod 0's volume may hold a replica's older data after a failover)."""
    meta = store["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    first = Record(primary=names.pod(name, 0))
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": names.primary_record(name), "namespace": namespace, "labels": dict(labels)},
        "data": first.data(),
    }
    owner = objects.owner_reference(store)
    if retained:
        found = children.create_retained(kube, obj, owner)
    else:
        obj["metadata"]["ownerReferences"] = [owner]
        found = children.create(kube, obj)
    record = parse(found)
    return record if record.primary else first


def write(kube: objects.Kube, namespace: str, store: str, record: Record) -> Record:
    """Replace the record with ``record`` if nobody changed it since ``record.version`` was read (an
    :class:`objects.ApiError` 409 otherwise); the record as written."""
    patch: dict[str, Any] = {"data": record.data()}
    if record.version is not None:
        patch["metadata"] = {"resourceVersion": record.version}
    return parse(kube.merge_patch("ConfigMap", namespace, names.primary_record(store), patch))
