"""The index-sync CronJob and the on-demand Job of a VectorIndex (see ``mlinfra.k8s.syncjobs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlinfra.api import vectorindex as api
from mlinfra.engines import names as store_names
from mlinfra.k8s import syncjobs
from mlinfra.vectors import sync_cli

SYNC_REQUESTED_ANNOTATION = syncjobs.SYNC_REQUESTED_ANNOTATION
KIND_LABEL = "mlinfra.io/vectorindex"
SOURCE_DIR = "/var/run/mlinfra/source"
QDRANT_DIR = "/var/run/mlinfra/qdrant"
COMPONENT = "index-sync"


def cronjob_name(index: str) -> str:
    return syncjobs.cronjob_name(index, "index-sync")


def ondemand_job_name(index: str, requested_at: str) -> str:
    return syncjobs.ondemand_job_name(KIND_LABEL, index, requested_at)


def sync_job(vi: api.VectorIndex) -> syncjobs.SyncJob:
    assert vi.spec.source is not None
    ns, name = vi.metadata.namespace or "default", vi.metadata.name
    return syncjobs.SyncJob(
        kind_label=KIND_LABEL,
        owner_name=name,
        namespace=ns,
        args=(
            "sync",
            "vectorindex",
            f"{ns}/{name}",
            *(("--full",) if vi.spec.sync and vi.spec.sync.hard_deletes else ()),
        ),
        spec_env=sync_cli.SPEC_ENV,
        spec=vi.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        mounts=(
            syncjobs.Mount(
                "source-conn",
                store_names.connection_secret(vi.spec.source.store_ref.name),
                SOURCE_DIR,
                sync_cli.SOURCE_DIR_ENV,
            ),
            syncjobs.Mount(
                "qdrant-conn",
                store_names.connection_secret(vi.spec.store_ref.name),
                QDRANT_DIR,
                sync_cli.QDRANT_DIR_ENV,
            ),
        ),
        component=COMPONENT,
    )


def cronjob(vi: api.VectorIndex, image: str, owner: Mapping[str, Any]) -> dict[str, Any] | None:
    """The CronJob, or None without ``spec.sync`` (on-demand syncs only, when there is a source)."""
    if vi.spec.sync is None or vi.spec.source is None:
        return None
    return syncjobs.cronjob(
        sync_job(vi), cronjob_name(vi.metadata.name), vi.spec.sync.schedule, vi.spec.sync.suspend, image, owner
    )


def ondemand_job(vi: api.VectorIndex, image: str, owner: Mapping[str, Any], requested_at: str) -> dict[str, Any]:
    return syncjobs.ondemand_job(sync_job(vi), image, owner, requested_at)
