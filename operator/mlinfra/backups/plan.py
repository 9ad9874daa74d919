"""What one Backup needs to run, resolved from the Backup and its DataStore: the store, the backup id, the
policy's target and encryption. The operator builds it (and puts it in the Job as JSON); the Job reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from mlinfra.api import backup as api
from mlinfra.api import datastore as ds_api
from mlinfra.backup import catalog, configured
from mlinfra.problems import INVALID_SPEC, STORE_NOT_FOUND, Problem, ProblemError

NO_BACKUP_POLICY = "NoBackupPolicy"


class Plan(pydantic.BaseModel):
    namespace: str
    backup: str
    store: str
    store_uid: str
    engine: ds_api.Engine
    backup_id: str
    target: api.Target
    encryption: api.Encryption | None = None

    @property
    def store_prefix(self) -> str:
        return configured.store_prefix(self.namespace, self.store, self.store_uid)

    @property
    def store_ref(self) -> catalog.StoreRef:
        return catalog.StoreRef(self.namespace, self.store, self.store_uid)

    @property
    def location(self) -> str:
        return configured.location(self.target, self.store_prefix, self.backup_id)


def backup_id(body: Mapping[str, Any]) -> str:
    """Fixed by the Backup itself (its creation time and uid), so every reconcile and the Job agree on it
    before any status is written, and a second Backup created in the same second gets another id."""
    meta = body["metadata"]
    return catalog.backup_id_of(str(meta["creationTimestamp"]), str(meta["uid"]))


def resolve(backup_body: Mapping[str, Any], store_body: Mapping[str, Any] | None) -> Plan:
    """The plan. A Backup that has started carries its target in its status (the store's policy as it was
    then): it is found there even when the store, or its policy, has changed or gone. Otherwise it comes from
    the store, or ProblemError: the store is missing (it may come: not stalled), or has no backup policy."""
    namespace = backup_body["metadata"]["namespace"]
    store = backup_body["spec"]["dataStoreRef"]["name"]
    status = backup_body.get("status") or {}
    if status.get("target") and status.get("storeUid") and status.get("engine"):
        return Plan(
            namespace=namespace,
            backup=backup_body["metadata"]["name"],
            store=store,
            store_uid=status["storeUid"],
            engine=status["engine"],
            backup_id=backup_id(backup_body),
            target=api.Target.model_validate(status["target"]),
            encryption=api.Encryption.model_validate(status["encryption"]) if status.get("encryption") else None,
        )
    if store_body is None:
        raise ProblemError(
            Problem(STORE_NOT_FOUND, f"spec.dataStoreRef: DataStore {store!r} not found in {namespace!r}", False)
        )
    try:
        ds = ds_api.DataStore.model_validate(store_body)
    except pydantic.ValidationError as exc:
        raise ProblemError(
            Problem(INVALID_SPEC, f"DataStore {store!r} is invalid: fix it first ({exc.error_count()} errors)", True)
        ) from None
    if ds.spec.backup is None:
        raise ProblemError(
            Problem(
                NO_BACKUP_POLICY,
                f"DataStore {store!r} has no spec.backup: set spec.backup.target (an S3 bucket) on it, then the "
                "backup starts",
                stalled=True,
                recheck=30.0,
            )
        )
    return Plan(
        namespace=namespace,
        backup=backup_body["metadata"]["name"],
        store=store,
        store_uid=str(store_body["metadata"]["uid"]),
        engine=ds.spec.engine,
        backup_id=backup_id(backup_body),
        target=ds.spec.backup.target,
        encryption=ds.spec.backup.encryption,
    )
