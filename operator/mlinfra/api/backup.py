"""Backups: where a store's backups go and when (``DataStore.spec.backup``), one backup (the ``Backup``
kind), and a new store made from one (``DataStore.spec.managed.bootstrap``).

Why a policy on the DataStore and not a BackupSchedule kind: a store has exactly one place its backups go and
one rule for keeping them, and for PostgreSQL the WAL archive is a continuous property of the store, not of
a schedule; one object then says everything about the store, in one Argo CD diff. Backups themselves are
objects of their own (on demand, or made by the schedule) so that each has its status, and so that they
outlive the store they came from: a restore names a Backup, never the store, which may be gone.
"""

from __future__ import annotations

import datetime
from typing import Annotated, ClassVar, Literal

import pydantic

from mlinfra.api import base, common

# host:port of an S3 endpoint (the same shape as DataStore endpoints).
S3_ENDPOINT_RE = (
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?)"
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?$"
)
S3_ENDPOINT_MESSAGE = "spec.backup.target.s3.endpoint must be host or host:port, e.g. s3.amazonaws.com or minio:9000"
# S3's bucket naming rules (lower case, digits, dots and hyphens, 3-63 characters).
BUCKET_RE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
BUCKET_MESSAGE = "spec.backup.target.s3.bucket must be an S3 bucket name: 3-63 lower-case letters, digits, '.' or '-'"
# A key prefix: path segments of safe characters, no empty, '.' or '..' segment.
PREFIX_RE = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*/?$"
PREFIX_MESSAGE = "a prefix must be path segments of letters, digits, '.', '_' and '-' separated by '/', e.g. prod/ml"


class S3Credentials(base.SpecModel):
    """The Secret with the access key; in the store's namespace."""

    name: common.ObjectName = pydantic.Field(description="Name of the Secret.")
    access_key_id_key: common.SecretKey = pydantic.Field(
        default="accessKeyId", description="Key of the access key id in the Secret."
    )
    secret_access_key_key: common.SecretKey = pydantic.Field(
        default="secretAccessKey", description="Key of the secret access key in the Secret."
    )


class S3TLS(base.SpecModel):
    """TLS to the S3 endpoint; on by default, verified against the system roots or caSecretRef."""

    enabled: bool = pydantic.Field(default=True, description="Use HTTPS.")
    ca_secret_ref: common.SecretKeyRef | None = pydantic.Field(
        default=None, description="CA certificate (PEM) to verify the endpoint; system roots when omitted."
    )
    insecure_skip_verify: bool = pydantic.Field(default=False, description="Do not verify (testing only).")


class S3Target(base.SpecModel):
    """An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, GCS interop, ...)."""

    bucket: Annotated[
        str, base.regex_check(BUCKET_RE, BUCKET_MESSAGE), base.Cel(base.matches(BUCKET_RE), BUCKET_MESSAGE)
    ] = pydantic.Field(min_length=3, max_length=63, description="Bucket name; it must exist.")
    prefix: (
        Annotated[str, base.regex_check(PREFIX_RE, PREFIX_MESSAGE), base.Cel(base.matches(PREFIX_RE), PREFIX_MESSAGE)]
        | None
    ) = pydantic.Field(
        default=None,
        max_length=512,
        description="Key prefix in the bucket; the operator writes under <prefix>/<namespace>/<datastore>/ only.",
    )
    endpoint: Annotated[
        str,
        base.regex_check(S3_ENDPOINT_RE, S3_ENDPOINT_MESSAGE),
        base.Cel(base.matches(S3_ENDPOINT_RE), S3_ENDPOINT_MESSAGE),
    ] = pydantic.Field(default="s3.amazonaws.com", max_length=261, description="host or host:port of the S3 API.")
    region: str | None = pydantic.Field(
        default=None, max_length=64, pattern=r"^[a-z0-9-]+$", description="Region, e.g. us-east-1."
    )
    credentials_secret_ref: S3Credentials = pydantic.Field(description="Secret with the access key.")
    tls: S3TLS = pydantic.Field(default_factory=S3TLS, description="TLS to the endpoint.")
    server_side_encryption: Literal["None", "AES256"] = pydantic.Field(
        default="None",
        description="AES256: ask the server to encrypt the objects it stores (SSE-S3). Independent of "
        "spec.backup.encryption, which encrypts before upload.",
    )


class VolumeClaimTarget(base.SpecModel):
    """A PersistentVolumeClaim of the store's namespace, for small setups without object storage. The operator
    runs one small server Pod per claim (``backup-volume-<claim>``, the operator's image) that mounts it, and
    the backup Jobs, the WAL archiver, the restore container and the operator itself read and write through
    that server with a generated token: the claim is mounted once, so a ReadWriteOnce claim works from any node."""

    claim_name: common.ObjectName = pydantic.Field(
        description="Name of the PersistentVolumeClaim (the user's: the operator never creates or deletes it)."
    )


EXACTLY_ONE_TARGET = base.Cel(
    "has(self.s3) != has(self.volume)",
    "spec.backup.target needs exactly one of s3 (a bucket) or volume (a PersistentVolumeClaim)",
)


class Target(base.SpecModel):
    """Where backups go: an S3-compatible bucket, or a volume for small setups."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (EXACTLY_ONE_TARGET,)

    s3: S3Target | None = pydantic.Field(default=None, description="An S3-compatible bucket.")
    volume: VolumeClaimTarget | None = pydantic.Field(
        default=None, description="A PersistentVolumeClaim served by a small Pod the operator runs."
    )

    @pydantic.model_validator(mode="after")
    def _check(self) -> Target:
        if (self.s3 is None) == (self.volume is None):
            raise ValueError(EXACTLY_ONE_TARGET.message)
        return self


class Encryption(base.SpecModel):
    """Client-side encryption: every object is sealed with AES-256-GCM before it leaves the Job."""

    key_secret_ref: common.SecretKeyRef = pydantic.Field(
        description="Secret key holding the 32-byte key as 64 hex digits (e.g. `openssl rand -hex 32`). "
        "Keep a copy outside the cluster: without it no backup can be restored."
    )


ONE_RETENTION = base.Cel(
    "has(self.keepLast) || has(self.maxAge)",
    "spec.backup.retention needs keepLast, maxAge or both (omit retention to keep every backup)",
)


class Retention(base.SpecModel):
    """Which scheduled backups to keep. A backup is deleted only when every rule set lets it go; the newest
    complete backup is always kept."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (ONE_RETENTION,)

    keep_last: int | None = pydantic.Field(default=None, ge=1, le=1000, description="Newest backups to keep.")
    max_age: common.PositiveDuration | None = pydantic.Field(
        default=None, description="Keep backups younger than this, e.g. 720h (30 days)."
    )

    @pydantic.model_validator(mode="after")
    def _check(self) -> Retention:
        if self.keep_last is None and self.max_age is None:
            raise ValueError(ONE_RETENTION.message)
        return self


class BackupPolicy(base.SpecModel):
    """``DataStore.spec.backup``: the target, the schedule and how long backups are kept."""

    target: Target = pydantic.Field(description="Where the backups go.")
    schedule: common.CronSchedule | None = pydantic.Field(
        default=None, description="Cron schedule (UTC) of automatic backups; on-demand Backups only when omitted."
    )
    retention: Retention | None = pydantic.Field(
        default=None, description="Which scheduled backups to keep; all of them when omitted."
    )
    encryption: Encryption | None = pydantic.Field(
        default=None, description="Client-side encryption of every object; none (or the server's) when omitted."
    )
    suspend: bool = pydantic.Field(
        default=False, description="Pause the schedule and retention (backups already taken are kept)."
    )


# --- the Backup kind ------------------------------------------------------------------------------------


class BackupSpec(base.SpecModel):
    """One backup of one DataStore, taken once. Immutable: to back up again, create another Backup."""

    cel_rules: ClassVar[tuple[base.Cel, ...]] = (
        base.Cel("self == oldSelf", "a Backup's spec is immutable: create a new Backup"),
    )

    data_store_ref: common.ObjectRef = pydantic.Field(
        description="The DataStore to back up (same namespace); its spec.backup says where the backup goes."
    )


class WalRange(base.StatusModel):
    """PostgreSQL: the WAL a base backup needs, and the positions it spans."""

    timeline: int | None = pydantic.Field(default=None, ge=1, description="Timeline of the backup.")
    start_lsn: str | None = pydantic.Field(default=None, max_length=32, description="Start LSN.")
    stop_lsn: str | None = pydantic.Field(default=None, max_length=32, description="Stop LSN.")
    start_wal: str | None = pydantic.Field(default=None, max_length=24, description="First WAL segment needed.")
    stop_wal: str | None = pydantic.Field(default=None, max_length=24, description="Last WAL segment needed.")


class BackupStatus(base.StatusModel):
    """What was backed up, where, and whether it is complete."""

    observed_generation: common.ObservedGeneration = None
    conditions: common.Conditions = pydantic.Field(
        default=None, description=common.conditions_description("Ready (complete), Reconciling, Stalled")
    )
    engine: str | None = pydantic.Field(default=None, max_length=16, description="Engine of the store.")
    backup_id: str | None = pydantic.Field(default=None, max_length=64, description="Id of the backup in its target.")
    location: str | None = pydantic.Field(
        default=None, max_length=1024, description="Where it is, e.g. s3://bucket/prefix/ns/store/backups/<id>/."
    )
    started_at: str | None = pydantic.Field(default=None, max_length=64, description="When the backup began.")
    completed_at: str | None = pydantic.Field(default=None, max_length=64, description="When it was complete.")
    size_bytes: int | None = pydantic.Field(default=None, ge=0, description="Bytes stored (after encryption).")
    encrypted: bool | None = pydantic.Field(default=None, description="Sealed with the store's encryption key.")
    wal: WalRange | None = pydantic.Field(default=None, description="postgres: the WAL the backup spans.")
    items: int | None = pydantic.Field(
        default=None, ge=0, description="Keys (redis), nodes + relationships (neo4j) or points (qdrant) backed up."
    )
    attempts: int | None = pydantic.Field(default=None, ge=0, description="Runs of the backup Job so far.")
    store_uid: str | None = pydantic.Field(
        default=None, max_length=64, description="uid of the DataStore backed up (its objects are under it)."
    )
    target: Target | None = pydantic.Field(
        default=None,
        description="The target the backup went to, as the store's spec.backup said when it started: the "
        "backup is found (and restored) from here even after the store or its policy changed or was deleted.",
    )
    encryption: Encryption | None = pydantic.Field(
        default=None, description="The client-side key the backup was sealed with, when any."
    )


class Backup(base.Resource):
    """One backup of a DataStore, on demand or made by its schedule."""

    name_rules: ClassVar[tuple[base.NameRule, ...]] = (base.label_value_name_rule("Backup"),)

    crd_info: ClassVar[base.CRDInfo] = base.CRDInfo(
        kind="Backup",
        plural="backups",
        singular="backup",
        short_names=("mlbackup",),
        description="Backup is one backup of a DataStore, taken by a Job in the operator's image into the "
        "store's spec.backup.target and verified there; a new DataStore can bootstrap from it.",
        printer_columns=(
            base.PrinterColumn("Store", "string", ".spec.dataStoreRef.name", "The DataStore backed up."),
            base.READY_COLUMN,
            base.REASON_COLUMN,
            base.PrinterColumn("Size", "integer", ".status.sizeBytes", "Bytes stored."),
            base.PrinterColumn("Completed", "string", ".status.completedAt", "When it was complete."),
            base.PrinterColumn("Location", "string", ".status.location", "Where it is.", priority=1),
            base.AGE_COLUMN,
        ),
    )

    kind: Literal["Backup"] = pydantic.Field(default="Backup", description="Backup.")
    spec: BackupSpec = pydantic.Field(description="Desired state.")
    status: BackupStatus | None = pydantic.Field(default=None, description="Observed state.")


# --- a new store made from a Backup (DataStore.spec.managed.bootstrap) -------------------------------------

# RFC 3339 with a zone (Z or +hh:mm): a time without one means a different instant in every time zone.
# Python-compatible (datetime.fromisoformat reads it; at most microseconds).
TARGET_TIME_RE = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
TARGET_TIME_MESSAGE = (
    "spec.managed.bootstrap.targetTime must be an RFC 3339 time with a zone, e.g. 2026-11-30T03:15:00Z or "
    "2026-11-30T04:15:00+01:00"
)


def _check_target_time(value: str) -> str:
    # What the regex lets through but no calendar has (February 30).
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{TARGET_TIME_MESSAGE} ({exc})") from None
    return value


class Bootstrap(base.SpecModel):
    """``DataStore.spec.managed.bootstrap``: the new store starts from a Backup's data instead of an empty
    database. Set when the store is created, never changed; a restore never overwrites a store in place."""

    backup: common.ObjectRef = pydantic.Field(
        description="The Backup to start from: in this namespace, complete (Ready), of a store of the same engine."
    )
    target_time: (
        Annotated[
            str,
            base.regex_check(TARGET_TIME_RE, TARGET_TIME_MESSAGE),
            pydantic.AfterValidator(_check_target_time),
            base.Cel(base.matches(TARGET_TIME_RE), TARGET_TIME_MESSAGE),
        ]
        | None
    ) = pydantic.Field(
        default=None,
        max_length=64,
        description="postgres: recover through the source store's WAL archive to just before this time (RFC "
        "3339 with a zone, e.g. 2026-11-30T03:15:00Z): the transactions committed before it, none after. It must "
        "lie between the Backup's end and the archive's last recoverability point. The end of the Backup when "
        "omitted.",
    )

    @property
    def target_datetime(self) -> datetime.datetime | None:
        return datetime.datetime.fromisoformat(self.target_time) if self.target_time is not None else None


class RestoredFrom(base.StatusModel):
    """Where a bootstrapped store's data came from, fixed once before its pods were first created: the pods'
    restore is built from this, so the source Backup may be deleted afterwards without anything changing."""

    backup: str | None = pydantic.Field(default=None, max_length=253, description="Name of the Backup.")
    backup_id: str | None = pydantic.Field(default=None, max_length=64, description="Id of the backup in its target.")
    engine: str | None = pydantic.Field(default=None, max_length=16, description="Engine of the backup.")
    source_store: str | None = pydantic.Field(
        default=None, max_length=253, description="The DataStore the backup was taken of (it may be gone)."
    )
    source_uid: str | None = pydantic.Field(
        default=None, max_length=64, description="uid of that DataStore (its backups are under it on the target)."
    )
    target: Target | None = pydantic.Field(default=None, description="The target the backup is read from.")
    encryption: Encryption | None = pydantic.Field(
        default=None, description="The client-side key the backup was sealed with, when any."
    )
    target_time: str | None = pydantic.Field(
        default=None, max_length=64, description="postgres: the time recovered to (spec.managed.bootstrap.targetTime)."
    )
    location: str | None = pydantic.Field(
        default=None,
        max_length=1024,
        description="Where the backup is, e.g. s3://bucket/prefix/ns/store/uid/backups/<id>/.",
    )
    restored_at: str | None = pydantic.Field(
        default=None, max_length=64, description="When the operator checked the backup and fixed this."
    )
