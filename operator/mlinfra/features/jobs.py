"""The materialization CronJob and the on-demand Job of a FeatureView (see ``mlinfra.k8s.syncjobs``).

The Job mounts, for the offline store, the view's own Secret (``syncrole.secret_name``: the view's
least-privilege role, never the store's admin credentials in ``<store>-conn``); for the online store, the
view's own Secret too (``syncuser.secret_name``: an ACL user limited to the view's keys) unless the store's
credentials may not make users: then the store's connection Secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlinfra.api import featureview as api
from mlinfra.engines import names as store_names
from mlinfra.features import sync_cli, syncrole
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


def sync_job(fv: api.FeatureView, online_secret: str | None = None) -> syncjobs.SyncJob:
    """``online_secret``: the view's own online Secret (``syncuser.secret_name``) when the reconcile made the
    view a user, else None: the store's connection Secret."""
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
                syncrole.secret_name(name),
                OFFLINE_DIR,
                sync_cli.OFFLINE_DIR_ENV,
            ),
            syncjobs.Mount(
                "online-conn",
                online_secret or store_names.connection_secret(fv.spec.online.store_ref.name),
                ONLINE_DIR,
                sync_cli.ONLINE_DIR_ENV,
            ),
        ),
        component=COMPONENT,
    )


def cronjob(
    fv: api.FeatureView, image: str, owner: Mapping[str, Any], online_secret: str | None = None
) -> dict[str, Any] | None:
    """The CronJob, or None when the view has no ``spec.materialization`` (on-demand syncs only)."""
    m = fv.spec.materialization
    if m is None:
        return None
    job = sync_job(fv, online_secret)
    return syncjobs.cronjob(job, cronjob_name(fv.metadata.name), m.schedule, m.suspend, image, owner)


def ondemand_job(
    fv: api.FeatureView, image: str, owner: Mapping[str, Any], requested_at: str, online_secret: str | None = None
) -> dict[str, Any]:
    return syncjobs.ondemand_job(sync_job(fv, online_secret), image, owner, requested_at)
