"""What the restore step of a bootstrapped store's pod 0 does (``spec.managed.bootstrap``), and where it does it.

The operator builds the plan from ``status.restoredFrom`` (fixed when the store was created: the source Backup
may be deleted by its own retention afterwards without the pods changing) and puts it, as JSON, in the restore
init container's environment; the container (``mlinfra restore pod``, in the operator's image) reads it back.
The Secrets it names (the target's credentials and CA, the encryption key) are mounted read-only, one directory
each, named by ``MLINFRA_RESTORE_SECRET_<n>``; the pod has no Kubernetes API access.

The layout on the data volume, shared by the init container and the engine's start script:

- ``<dataDir>/.mlinfra-restore/``: the restore's working directory (downloads; PostgreSQL's WAL to replay). The
  init container wipes it when it starts over; for PostgreSQL ``start.sh`` removes it once the server promoted.
- ``<dataDir>/.mlinfra-restore/pending``: PostgreSQL only: the restored cluster has not finished recovery yet.
  ``start.sh`` sees it, recovers on a private socket, sets the new store's passwords, then removes the marker.
- PostgreSQL's data directory (``<dataDir>/pgdata``) or Redis' ``dump.rdb`` / ``appendonlydir`` is moved into
  place last: a volume that holds it is never restored into (a pod restarted after the restore, or a volume
  that already had data).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Literal

import pydantic

from mlinfra.api import backup as api
from mlinfra.backup import configured

PLAN_ENV = "MLINFRA_RESTORE_PLAN"
SECRET_DIR_ENV = "MLINFRA_RESTORE_SECRET"  # noqa: S105 - MLINFRA_RESTORE_SECRET_<n>: the n-th Secret's directory
SECRETS_ROOT = "/var/run/mlinfra/restore-secrets"
CONTAINER = "restore"
WORK_DIR = ".mlinfra-restore"
PENDING = "pending"
BOOTSTRAP_ENGINES = ("redis", "postgres")


class RestorePlan(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True, alias_generator=pydantic.alias_generators.to_camel)

    namespace: str
    store: str  # the new store, which pod 0 belongs to
    backup: str  # the Backup's name (in the same namespace)
    backup_id: str
    engine: Literal["redis", "postgres"]
    source_store: str
    source_uid: str
    target: api.Target
    encryption: api.Encryption | None = None
    target_time: datetime.datetime | None = None  # postgres: recover to just before this time
    data_dir: str  # the data volume's mount path in the pod
    appendonly: bool = False  # redis: the new server starts with appendonly yes (seed an AOF base, not dump.rdb)
    secret_dirs: dict[str, str] = pydantic.Field(default_factory=dict)  # Secret name -> env var of its directory

    @property
    def source_prefix(self) -> str:
        """Where the source store's backups (and, for postgres, its WAL archive) are on the target."""
        return configured.store_prefix(self.namespace, self.source_store, self.source_uid)

    @property
    def location(self) -> str:
        return configured.location(self.target, self.source_prefix, self.backup_id)


def secret_names(target: api.Target, encryption: api.Encryption | None) -> list[str]:
    """The Secrets a restore reads, each once: the target's (credentials and CA, or a volume's token), the
    encryption key."""
    wanted = configured.secret_names(target)
    if encryption is not None:
        wanted.append(encryption.key_secret_ref.name)
    return list(dict.fromkeys(wanted))


def plan_in(statefulset: Mapping[str, Any]) -> RestorePlan | None:
    """The plan rendered into the StatefulSet's restore container; None without one (or with one not ours)."""
    pod = statefulset.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("initContainers") or []:
        if container.get("name") != CONTAINER:
            continue
        env = {e.get("name"): e.get("value") for e in container.get("env") or []}
        try:
            return RestorePlan.model_validate_json(env.get(PLAN_ENV) or "")
        except pydantic.ValidationError:
            return None
    return None
