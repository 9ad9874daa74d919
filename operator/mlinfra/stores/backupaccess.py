"""The secrets a backup's target needs, from wherever they are: the operator reads the Secrets through the API,
the backup Job reads the same Secrets mounted as files. Both end in :func:`target` and :func:`key`, so the two
open the target the same way. No value is ever put in a message: they name the Secret and the key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mlinfra.api import backup as api
from mlinfra.backup import configured
from mlinfra.backup.s3 import S3Target
from mlinfra.backup.sealed import EncryptionKey
from mlinfra.context import Context
from mlinfra.engines import connection
from mlinfra.k8s import objects
from mlinfra.problems import SECRET_NOT_FOUND, Problem, ProblemError
from mlinfra.stores import connsecret

INVALID_ENCRYPTION_KEY = "InvalidEncryptionKey"

# (secret name, key, what refers to it) -> the value
Reader = Callable[[str, str, str], bytes]


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


def target(spec: api.Target, read: Reader) -> S3Target:
    s3 = spec.s3
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


def key(encryption: api.Encryption | None, read: Reader) -> EncryptionKey | None:
    if encryption is None:
        return None
    ref = encryption.key_secret_ref
    value = read(ref.name, ref.key, "spec.backup.encryption.keySecretRef")
    try:
        return EncryptionKey.from_secret_value(f"{ref.name}/{ref.key}", value)
    except ValueError as exc:
        raise ProblemError(Problem(INVALID_ENCRYPTION_KEY, f"spec.backup.encryption: {exc}", stalled=True)) from None
