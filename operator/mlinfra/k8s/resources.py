"""URL paths of the kinds the operator reads and writes: explicit, so no discovery round trips are needed."""

from __future__ import annotations

from typing import NamedTuple

from mlinfra import api
from mlinfra.api import base


class Kind(NamedTuple):
    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        group_version = self.api_version
        base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        if self.namespaced:
            if namespace is None:
                raise ValueError(f"{self.plural} is namespaced: a namespace is required")
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("v1", "configmaps"),
    "Secret": Kind("v1", "secrets"),
    "Service": Kind("v1", "services"),
    "Pod": Kind("v1", "pods"),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "Event": Kind("v1", "events"),
    "StatefulSet": Kind("apps/v1", "statefulsets"),
    "Deployment": Kind("apps/v1", "deployments"),  # a PostgreSQL store's WAL archiver (backups/archiver.py)
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": Kind("networking.k8s.io/v1", "networkpolicies"),
    "Job": Kind("batch/v1", "jobs"),
    "CronJob": Kind("batch/v1", "cronjobs"),
    # The operator's own kinds, named by their models.
    **{model.crd_info.kind: Kind(base.API_VERSION, model.crd_info.plural) for model in api.KINDS},
}


def kind_of(obj: dict[str, object]) -> Kind:
    kind = str(obj.get("kind"))
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"the operator does not manage objects of kind {kind!r}") from None
