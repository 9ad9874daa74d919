"""The secrets a backup's target needs, from wherever they are: the operator reads the Secrets through the API,
the backup Job reads the same Secrets mounted as files. Both end in :func:`target` and :func:`key`, so the two
open the target the same way. No value is ever put in a message: they name the Secret and the key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import pydantic

from mlinfra.api import backup as api
from mlinfra.backup import configured
from mlinfra.backup.http_target import HttpTarget
from mlinfra.backup.sealed import EncryptionKey
from mlinfra.backup.target import Target
from mlinfra.config import Settings
from mlinfra.context import Context
from mlinfra.engines import connection, names
from mlinfra.k8s import objects, syncjobs
from mlinfra.problems import SECRET_NOT_FOUND, Problem, ProblemError
from mlinfra.stores import connsecret, sync_command

P = TypeVar("P", bound=pydantic.BaseModel)

INVALID_ENCRYPTION_KEY = "InvalidEncryptionKey"

# (secret name, key, what refers to it) -> the value
Reader = Callable[[str, str, str], bytes]
# (in-cluster host, port, namespace, Service) -> where this process connects (a volume target's server)
Reach = Callable[[str, int, str, str], tuple[str, int]]


def mounted_reader(dirs: dict[str, Path]) -> Reader:
    """Secrets mounted as directories (secret name -> directory), as the backup Job sees them."""

    def read(name: str, key: str, what: str) -> bytes:
        directory = dirs.get(name)
        path = directory / key if directory is not None else None
        if path is None or not path.is_file():
            raise ProblemError(Problem(SECRET_NOT_FOUND, f"{what}: Secret {name!r} has no key {key!r}", stalled=False))
        return path.read_bytes()

    return read


def api_reader(ctx: Context, namespace: str) -> Reader:
    return kube_reader(ctx.kube, namespace)


def kube_reader(kube: objects.Kube, namespace: str) -> Reader:
    """The Secrets of ``namespace`` through the Kubernetes API (the operator; ``mlinfra restore``)."""

    def read(name: str, key: str, what: str) -> bytes:
        return connsecret.read_bytes(kube, namespace, name, key, what)

    return read


def target(spec: api.Target, read: Reader, namespace: str, reach: Reach | None = None) -> Target:
    """The target ``spec`` names, opened with the values of its Secrets (``namespace``: the store's, where a
    volume target's server runs; ``reach``: how this process reaches that server, the Service by default)."""
    if spec.volume is not None:
        return volume_target(spec.volume.claim_name, read, namespace, reach)
    s3 = spec.s3
    assert s3 is not None  # the model allows exactly one of s3 and volume
    creds = s3.credentials_secret_ref
    what = "spec.backup.target.s3.credentialsSecretRef"
    ca_ref = s3.tls.ca_secret_ref
    access = configured.S3Access(
        access_key=connection.text(creds.access_key_id_key, read(creds.name, creds.access_key_id_key, what)).strip(),
        secret_key=connection.text(
            creds.secret_access_key_key, read(creds.name, creds.secret_access_key_key, what)
        ).strip(),
        ca=read(ca_ref.name, ca_ref.key, "spec.backup.target.s3.tls.caSecretRef") if ca_ref is not None else None,
    )
    return configured.s3_target(spec, access)


@functools.cache
def _context() -> Context:
    return Context.from_settings(Settings.from_env())  # as sync_command: the map re-reads its file on change


def volume_target(claim: str, read: Reader, namespace: str, reach: Reach | None = None) -> HttpTarget:
    """The server of ``claim`` (:mod:`mlinfra.stores.volumeserver`) at its Service, or where the development
    platform's endpoint map says it is served (an operator or a Job run outside the cluster)."""
    server = configured.volume_server(claim)
    secret = configured.volume_token_secret(claim)
    token = connection.text(
        configured.VOLUME_TOKEN_KEY,
        read(secret, configured.VOLUME_TOKEN_KEY, f"the token of backup volume {claim!r}"),
    ).strip()
    reach = reach or _context().reach_service
    host, port = reach(f"{server}.{namespace}.svc", configured.VOLUME_PORT, namespace, server)
    where = f"backup volume {claim!r} (served by {server} in {namespace})"
    return HttpTarget(host=host, port=port, token=token, where=where)


def key(encryption: api.Encryption | None, read: Reader) -> EncryptionKey | None:
    if encryption is None:
        return None
    ref = encryption.key_secret_ref
    value = read(ref.name, ref.key, "spec.backup.encryption.keySecretRef")
    try:
        return EncryptionKey.from_secret_value(f"{ref.name}/{ref.key}", value)
    except ValueError as exc:
        raise ProblemError(Problem(INVALID_ENCRYPTION_KEY, f"spec.backup.encryption: {exc}", stalled=True)) from None


# --- the pods that read them (the backup Job, the WAL archiver) ------------------------------------------------


class PodPlan(Protocol):
    """What a backup pod's plan says about where it reads and writes."""

    @property
    def store(self) -> str: ...

    @property
    def target(self) -> api.Target: ...

    @property
    def encryption(self) -> api.Encryption | None: ...


def secret_names(plan: PodPlan) -> list[str]:
    """The Secrets a backup pod reads, each once: the store's connection first, then the target's."""
    wanted = [names.connection_secret(plan.store), *configured.secret_names(plan.target)]
    if plan.encryption is not None:
        wanted.append(plan.encryption.key_secret_ref.name)
    return list(dict.fromkeys(wanted))


def mounts(plan: PodPlan, env_prefix: str, root: str) -> list[syncjobs.Mount]:
    """One read-only directory per Secret, named by ``<env_prefix>_<n>``."""
    return [
        syncjobs.Mount(volume=f"secret-{i}", secret=name, path=f"{root}/{i}", env=f"{env_prefix}_{i}")
        for i, name in enumerate(secret_names(plan))
    ]


def pod_spec_of(plan: PodPlan, env_prefix: str) -> dict[str, Any]:
    """The plan as the pod reads it, with the environment variable naming each Secret's directory."""
    assert isinstance(plan, pydantic.BaseModel)
    return {
        **plan.model_dump(mode="json", by_alias=True),
        "secretDirs": {name: f"{env_prefix}_{i}" for i, name in enumerate(secret_names(plan))},
    }


@dataclasses.dataclass(frozen=True)
class Opened(Generic[P]):
    """What a backup pod works with, read from its environment and its mounted Secrets."""

    plan: P
    conn: connection.ConnectionInfo
    target: Target
    key: EncryptionKey | None


def open_in_pod(plan_env: str, model: type[P], namespace: str, where: str) -> Opened[P]:
    """The plan in ``plan_env`` and everything it names; :class:`sync_command.Unusable` (or ProblemError, KeyError,
    ValueError) when something is missing. ``where`` says what runs this command, for the message."""
    raw = os.environ.get(plan_env)
    if not raw:
        raise sync_command.Unusable(f"{plan_env} is not set: this command runs {where}")
    spec = json.loads(raw)
    plan = model.model_validate(spec)
    where_to = cast(PodPlan, plan)
    dirs = {secret: Path(os.environ[env]) for secret, env in spec.get("secretDirs", {}).items()}
    read = mounted_reader(dirs)
    conn_env = spec["secretDirs"][names.connection_secret(where_to.store)]
    conn = sync_command.resolve_connection(conn_env, namespace, where_to.store)
    return Opened(plan, conn, target(where_to.target, read, namespace), key(where_to.encryption, read))
