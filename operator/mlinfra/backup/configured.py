"""A DataStore's ``spec.backup.target`` made into a :class:`~mlinfra.backup.target.Target`, and where a store's
backups live in it.

Every store writes under its own prefix ``<namespace>/<name>/<uid>/`` (below the bucket's ``prefix``): two
stores never share a catalog or a WAL archive, and a store deleted and created again under the same name
starts a new one instead of mixing two clusters' WAL. The credentials come in as values (read from the
Secrets by the operator, or from the files a Job mounts), never from the spec.
"""

from __future__ import annotations

import dataclasses

from mlinfra.api import backup as api
from mlinfra.backup import catalog
from mlinfra.backup.s3 import S3Target


@dataclasses.dataclass(frozen=True)
class S3Access:
    """What the target's Secrets hold: the access key, and the CA of the endpoint when one is configured."""

    access_key: str
    secret_key: str = dataclasses.field(repr=False)
    ca: bytes | None = None


def store_prefix(namespace: str, name: str, uid: str) -> str:
    return f"{namespace}/{name}/{uid}"


def s3_target(spec: api.Target, access: S3Access, *, read_timeout: float = 60.0) -> S3Target:
    s3 = spec.s3
    return S3Target(
        endpoint=s3.endpoint,
        bucket=s3.bucket,
        access_key=access.access_key,
        secret_key=access.secret_key,
        prefix=s3.prefix or "",
        region=s3.region,
        secure=s3.tls.enabled,
        ca=access.ca,
        insecure=s3.tls.insecure_skip_verify,
        sse="s3" if s3.server_side_encryption == "AES256" else "none",
        read_timeout=read_timeout,
    )


def location(spec: api.Target, prefix: str, backup_id: str) -> str:
    """``s3://bucket/<bucket prefix>/<store prefix>/backups/<id>/``: where a person finds the backup."""
    s3 = spec.s3
    parts = [p.strip("/") for p in (s3.prefix or "", catalog.backup_dir(prefix, backup_id)) if p.strip("/")]
    return f"s3://{s3.bucket}/{'/'.join(parts)}/"
