"""The lineage-sync CronJob of a ModelRegistry (see ``mlinfra.k8s.syncjobs``).

Only with ``spec.lineageSync.schedule``; otherwise the operator syncs in process every interval, on its own
connection. The Job mounts, for the metadata store, the registry's own Secret (``lineagerole.secret_name``:
the registry's least-privilege lineage role on its database, never the store's admin credentials in
``<store>-conn``); for the lineage store, the store's connection Secret: Neo4j Community has no access control
below the database, so a narrower user could not be made (docs/modelregistry.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlinfra.api import modelregistry as api
from mlinfra.engines import names as store_names
from mlinfra.k8s import syncjobs
from mlinfra.registry import lineagerole, sync_cli

METADATA_DIR = "/var/run/mlinfra/metadata"
LINEAGE_DIR = "/var/run/mlinfra/lineage"


def cronjob_name(registry: str) -> str:
    return syncjobs.cronjob_name(registry, "lineage")


def sync_job(mr: api.ModelRegistry) -> syncjobs.SyncJob:
    ns, name = mr.metadata.namespace or "default", mr.metadata.name
    assert mr.spec.lineage_store_ref is not None
    return syncjobs.SyncJob(
        kind_label="mlinfra.io/modelregistry",
        owner_name=name,
        namespace=ns,
        args=("sync", "modelregistry", f"{ns}/{name}"),
        spec_env=sync_cli.SPEC_ENV,
        spec=mr.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        mounts=(
            syncjobs.Mount(
                "metadata-conn",
                lineagerole.secret_name(name),
                METADATA_DIR,
                sync_cli.METADATA_DIR_ENV,
            ),
            syncjobs.Mount(
                "lineage-conn",
                store_names.connection_secret(mr.spec.lineage_store_ref.name),
                LINEAGE_DIR,
                sync_cli.LINEAGE_DIR_ENV,
            ),
        ),
        component="lineage-sync",
    )


def cronjob(mr: api.ModelRegistry, image: str, owner: Mapping[str, Any]) -> dict[str, Any] | None:
    sync = mr.spec.lineage_sync
    if sync is None or sync.schedule is None or mr.spec.lineage_store_ref is None:
        return None
    return syncjobs.cronjob(sync_job(mr), cronjob_name(mr.metadata.name), sync.schedule, False, image, owner)
