"""The materialization CronJob and the on-demand Job of a FeatureView (see ``mlinfra.k8s.syncjobs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlinfra.api import featureview as api
from mlinfra.engines import names as store_names
from mlinfra.features import sync_cli
from mlinfra.k8s import syncjobs

SYNC_REQUESTED_ANNOTATION = syncjobs.SYNC_REQUESTED_ANNOTATION
OFFLINE_DIR = "/var/run/mlinfra/offline"
ONLINE_DIR = "/var/run/mlinfra/online"
SPEC_ENV = sync_cli.SPEC_ENV
COMPONENT = "materialization"
KIND_LABEL = syncjobs.FEATUREVIEW_LABEL


def cronjob_name(view: str) -> str:
    return syncjobs.cronjob_name(view, "materialize")


def ondemand_job_name(view: str, requested_at: str) -> str:
    return syncjobs.ondemand_job_name(KIND_LABEL, view, requested_at)


def sync_job(fv: api.FeatureView) -> syncjobs.SyncJob:
    ns, name = fv.metadata.namespace or "default", fv.metadata.name
    return syncjobs.SyncJob(
        kind_label=KIND_LABEL,
        owner_name=name,
        namespace=ns,
        args=("sync", "featureview", f"{ns}/{name}"),
        spec_env=SPEC_ENV,
        spec=fv.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        mounts=(
            syncjobs.Mount(
                "offline-conn",
                store_names.connection_secret(fv.spec.offline.store_ref.name),
                OFFLINE_DIR,
                sync_cli.OFFLINE_DIR_ENV,
            ),
            syncjobs.Mount(
                "online-conn",
                store_names.connection_secret(fv.spec.online.store_ref.name),
                ONLINE_DIR,
                sync_cli.ONLINE_DIR_ENV,
            ),
        ),
        component=COMPONENT,
    )


def cronjob(fv: api.FeatureView, image: str, owner: Mapping[str, Any]) -> dict[str, Any] | None:
    """The CronJob, or None when the view has no ``spec.materialization`` (on-demand syncs only)."""
    m = fv.spec.materialization
    if m is None:
        return None
    return syncjobs.cronjob(sync_job(fv), cronjob_name(fv.metadata.name), m.schedule, m.suspend, image, owner)


def ondemand_job(fv: api.FeatureView, image: str, owner: Mapping[str, Any], requested_at: str) -> dict[str, Any]:
    return syncjobs.ondemand_job(sync_job(fv), image, owner, requested_at)
