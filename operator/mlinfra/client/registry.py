"""Writing to a ModelRegistry from training code: models, versions, params, metrics, artifacts, lineage links.

:class:`Registry` connects with the registry's writer Secret (anything :func:`connections.resolve` takes) and
writes the tables of the ``registry`` schema that ``operator/mlinfra/registry/migrations`` defines. Every
public call is one transaction, so the triggers of the schema write the audit log and the outbox (the lineage
sync's input) together with the change, or not at all.

This module knows the table and column names of that schema but never creates or alters it (the operator
applies the migrations). The client layer may not import ``mlinfra.registry`` (tests/unit/build/test_layers.py), so
the SQL here is checked against the migrations by the integration tests.

Lineage queries on the graph are in :mod:`mlinfra.client.lineage`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, TypeAlias

import psycopg
from psycopg import errors

from mlinfra.client import connections

Stage: TypeAlias = Literal["none", "staging", "production", "archived"]
LinkKind: TypeAlias = Literal["TRAINED_ON", "EVALUATED_ON"]
STAGES: tuple[str, ...] = ("none", "staging", "production", "archived")
LINK_KINDS: tuple[str, ...] = ("TRAINED_ON", "EVALUATED_ON")
ALIAS_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")  # as the aliases table's CHECK
CHECKSUM_PATTERN = re.compile(r"[a-z0-9]+:[0-9a-f]+")  # as the artifacts table's CHECK, e.g. sha256:<hex>


# -- errors -----------------------------------------------------------------------------------------------


class RegistryError(Exception):
    """A registry call was refused; nothing of it was written."""


class NotFound(RegistryError, LookupError):
    """An unknown model, version, alias or dataset."""


class AlreadyExists(RegistryError):
    """A model, version, dataset or artifact name that is taken."""


class AliasInUse(AlreadyExists):
    """The alias names another version of the model (pass ``move=True`` to :meth:`Registry.set_alias`)."""


class Conflict(RegistryError):
    """The call contradicts what is recorded (e.g. a param logged again with another value)."""


# -- what calls return ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
    id: int
    name: str
    description: str
    created_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    id: int
    model: str
    version: int
    stage: str
    aliases: tuple[str, ...]
    created_at: datetime.datetime

    @property
    def ref(self) -> tuple[str, int]:
        return (self.model, self.version)


@dataclasses.dataclass(frozen=True)
class Dataset:
    id: int
    name: str
    version: str
    uri: str
    checksum: str | None


@dataclasses.dataclass(frozen=True)
class Artifact:
    id: int
    name: str
    uri: str
    checksum: str
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class Deployment:
    id: int
    model: str
    version: int
    environment: str
    deployed_at: datetime.datetime


# A version: a ModelVersion, or (model, number), or (model, alias).
VersionRef: TypeAlias = ModelVersion | tuple[str, int] | tuple[str, str]
# A dataset: a Dataset, its name (unversioned, i.e. version ''), or (name, version).
DatasetRef: TypeAlias = Dataset | str | tuple[str, str]


# -- pure parts -------------------------------------------------------------------------------------------


def version_key(ref: VersionRef) -> tuple[str, int | str]:
    """``(model, number)`` or ``(model, alias)`` of a version reference."""
    if isinstance(ref, ModelVersion):
        return ref.model, ref.version
    if not (isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[0], str)):
        raise TypeError(f"a version is a ModelVersion or (model, version or alias), got {ref!r}")
    model, which = ref
    if isinstance(which, bool) or not isinstance(which, int | str):
        raise TypeError(f"version of {model!r} must be a number or an alias, got {which!r}")
    return model, which


def dataset_key(ref: DatasetRef) -> tuple[str, str]:
    """``(name, version)`` of a dataset reference; a bare name is the unversioned dataset (version '')."""
    if isinstance(ref, Dataset):
        return ref.name, ref.version
    if isinstance(ref, str):
        return ref, ""
    if isinstance(ref, tuple) and len(ref) == 2 and all(isinstance(part, str) for part in ref):
        return ref[0], ref[1]
    raise TypeError(f"a dataset is a Dataset, a name or (name, version), got {ref!r}")


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    return stage


def check_alias(alias: str) -> str:
    if not ALIAS_PATTERN.fullmatch(alias):
        raise ValueError(f"invalid alias {alias!r}: a letter, then up to 62 letters, digits, '_', '.' or '-'")
    return alias


def check_kind(kind: str) -> str:
    if kind not in LINK_KINDS:
        raise ValueError(f"unknown dataset link {kind!r}: expected one of {', '.join(LINK_KINDS)}")
    return kind


def check_checksum(checksum: str) -> str:
    if not CHECKSUM_PATTERN.fullmatch(checksum):
        raise ValueError(f"invalid checksum {checksum!r}: expected '<algorithm>:<lowercase hex>', e.g. sha256:ab12…")
    return checksum


def artifact_name(uri: str) -> str:
    """The default name of an artifact: the last path segment of its URI."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if not name or name.endswith(":"):
        raise ValueError(f"cannot derive an artifact name from {uri!r}: pass name=")
    return name


def param_text(value: Any) -> str:
    """How a param value is stored (text): strings as they are, anything else as JSON (``0.1``, ``true``)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"param value {value!r} is not JSON-serialisable: {exc}") from None


def metric_value(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"metric {key!r} is NaN")
    return number


def metric_rows(
    values: Mapping[str, Any], step: int | None, timestamp: datetime.datetime | None
) -> list[tuple[str, float, int, datetime.datetime | None]]:
    """``(key, value, step, timestamp)`` per metric; step defaults to 0, timestamp to the server's now()."""
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if timestamp is not None and timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=datetime.UTC)  # naive datetimes are UTC, as elsewhere in the SDK
    return [(key, metric_value(key, value), step or 0, timestamp) for key, value in values.items()]


# -- SQL --------------------------------------------------------------------------------------------------

_VERSION_BY_NUMBER = """SELECT mv.id, m.name, mv.version, mv.stage,
    coalesce((SELECT array_agg(a.alias ORDER BY a.alias) FROM registry.model_version_aliases a
              WHERE a.model_version_id = mv.id), '{}'), mv.created_at
    FROM registry.model_versions mv JOIN registry.registered_models m ON m.id = mv.model_id
    WHERE m.id = %s AND mv.version = %s"""
_VERSION_BY_ALIAS = """SELECT mv.id, m.name, mv.version, mv.stage,
    coalesce((SELECT array_agg(a.alias ORDER BY a.alias) FROM registry.model_version_aliases a
              WHERE a.model_version_id = mv.id), '{}'), mv.created_at
    FROM registry.model_versions mv JOIN registry.registered_models m ON m.id = mv.model_id
    WHERE m.id = %s AND mv.id = (SELECT al.model_version_id FROM registry.model_version_aliases al
                                 WHERE al.model_id = m.id AND al.alias = %s)"""


def _version(row: tuple[Any, ...]) -> ModelVersion:
    return ModelVersion(id=row[0], model=row[1], version=row[2], stage=row[3], aliases=tuple(row[4]), created_at=row[5])


def _dataset(row: tuple[Any, ...]) -> Dataset:
    return Dataset(id=row[0], name=row[1], version=row[2], uri=row[3], checksum=row[4])


Cursor: TypeAlias = "psycopg.Cursor[tuple[Any, ...]]"


class Registry:
    """Writes to a ModelRegistry's PostgreSQL database with its writer connection.

    ``writer``: a :class:`~mlinfra.engines.connection.ConnectionInfo` or anything
    :func:`connections.resolve` takes (mounted writer Secret directory, dict of its keys, ``postgresql://``
    URL). One connection, opened on first use, closed by :meth:`close` (or ``with``). Not thread-safe: use one
    Registry per thread.
    """

    def __init__(self, writer: connections.ConnectionSource, *, connect_timeout: float = 10.0) -> None:
        self.info = connections.expect_engine(connections.resolve(writer), "postgres", "registry")
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    # -- models and versions

    def register_model(self, name: str, description: str | None = None, *, exist_ok: bool = False) -> Model:
        """A new registered model. ``exist_ok``: return the existing one instead of raising AlreadyExists."""
        with self._tx() as cur:
            row = cur.execute(
                "INSERT INTO registry.registered_models (name, description) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING RETURNING id, name, description, created_at",
                (name, description or ""),
            ).fetchone()
            if row is None:
                if not exist_ok:
                    raise AlreadyExists(f"model {name!r} is already registered")
                row = cur.execute(
                    "SELECT id, name, description, created_at FROM registry.registered_models WHERE name = %s", (name,)
                ).fetchone()
                assert row is not None
        return Model(*row)

    def create_version(
        self,
        model: str,
        version: int | None = None,
        *,
        stage: Stage | None = None,
        aliases: Iterable[str] = (),
        run_id: str | None = None,
        description: str | None = None,
    ) -> ModelVersion:
        """A new version of ``model``: number ``version``, else the next one (1 for the first).

        Raises NotFound for an unknown model, AlreadyExists for a taken number, AliasInUse when an alias names
        another version already (nothing is written then).
        """
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ValueError(f"version must be a positive integer, got {version!r}")
        names = [check_alias(alias) for alias in ([aliases] if isinstance(aliases, str) else aliases)]
        with self._tx() as cur:
            model_id = self._model_id(cur, model)
            if version is None:
                # Serialise numbering per model (no table lock, no UPDATE privilege needed).
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended('mlinfra.registry.version:' || %s, 0))", (model_id,)
                )
                number_row = cur.execute(
                    "SELECT coalesce(max(version), 0) + 1 FROM registry.model_versions WHERE model_id = %s", (model_id,)
                ).fetchone()
                assert number_row is not None
                version = int(number_row[0])
            try:
                with cur.connection.transaction():
                    cur.execute(
                        "INSERT INTO registry.model_versions (model_id, version, stage, run_id, description) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (model_id, version, check_stage(stage or "none"), run_id, description or ""),
                    )
            except errors.UniqueViolation:
                raise AlreadyExists(f"model {model!r} already has version {version}") from None
            for alias in names:
                self._set_alias(cur, model, model_id, version, alias, move=False)
            return self._version(cur, model, version)

    def get_version(self, ref: VersionRef) -> ModelVersion:
        """A version by number or alias (NotFound if the model, number or alias is unknown)."""
        model, which = version_key(ref)
        with self._tx() as cur:
            return self._version(cur, model, which)

    def set_alias(self, ref: VersionRef, alias: str, *, move: bool = False) -> ModelVersion:
        """Point ``alias`` (unique per model) at this version. If it names another version, AliasInUse —
        unless ``move``: then it is moved here."""
        model, which = version_key(ref)
        check_alias(alias)
        with self._tx() as cur:
            model_id = self._model_id(cur, model)
            target = self._version(cur, model, which)
            self._set_alias(cur, model, model_id, target.version, alias, move=move)
            return self._version(cur, model, target.version)

    def remove_alias(self, model: str, alias: str) -> None:
        """Remove ``alias`` of ``model`` (NotFound if it is not set)."""
        with self._tx() as cur:
            model_id = self._model_id(cur, model)
            cur.execute(
                "DELETE FROM registry.model_version_aliases WHERE model_id = %s AND alias = %s", (model_id, alias)
            )
            if cur.rowcount == 0:
                raise NotFound(f"model {model!r} has no alias {alias!r}")

    def set_stage(self, ref: VersionRef, stage: Stage) -> ModelVersion:
        """Move the version to ``stage`` (none, staging, production, archived)."""
        model, which = version_key(ref)
        check_stage(stage)
        with self._tx() as cur:
            target = self._version(cur, model, which)
            cur.execute(
                "UPDATE registry.model_versions SET stage = %s, updated_at = now() WHERE id = %s", (stage, target.id)
            )
            return self._version(cur, model, target.version)

    # -- what a version is made of

    def log_params(self, ref: VersionRef, params: Mapping[str, Any]) -> None:
        """Record params (values stored as text: strings as is, others as JSON). A param is immutable:
        logging it again with the same value is harmless, with another value raises Conflict."""
        values = {key: param_text(value) for key, value in params.items()}
        with self._tx() as cur:
            target = self._version_of(cur, ref)
            for key, value in values.items():
                inserted = cur.execute(
                    "INSERT INTO registry.params (model_version_id, key, value) VALUES (%s, %s, %s) "
                    "ON CONFLICT (model_version_id, key) DO NOTHING RETURNING key",
                    (target.id, key, value),
                ).fetchone()
                if inserted is None:
                    stored = cur.execute(
                        "SELECT value FROM registry.params WHERE model_version_id = %s AND key = %s", (target.id, key)
                    ).fetchone()
                    if stored is not None and stored[0] != value:
                        raise Conflict(
                            f"{target.model} v{target.version}: param {key!r} is already {stored[0]!r}, not {value!r}"
                        )

    def log_metrics(
        self,
        ref: VersionRef,
        metrics: Mapping[str, Any],
        step: int | None = None,
        timestamp: datetime.datetime | None = None,
    ) -> None:
        """Append metric values (a history: the same key may be logged at many steps)."""
        rows = metric_rows(metrics, step, timestamp)
        with self._tx() as cur:
            target = self._version_of(cur, ref)
            cur.executemany(
                'INSERT INTO registry.metrics (model_version_id, key, value, step, "timestamp") '
                "VALUES (%s, %s, %s, %s, coalesce(%s::timestamptz, now()))",
                [(target.id, *row) for row in rows],
            )

    def add_artifact(self, ref: VersionRef, uri: str, checksum: str, size: int, *, name: str | None = None) -> Artifact:
        """Record an artifact (``checksum`` like ``sha256:<hex>``, ``size`` in bytes); ``name`` (unique per
        version) defaults to the URI's last segment."""
        check_checksum(checksum)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative number of bytes, got {size!r}")
        name = name or artifact_name(uri)
        with self._tx() as cur:
            target = self._version_of(cur, ref)
            try:
                with cur.connection.transaction():
                    row = cur.execute(
                        "INSERT INTO registry.artifacts (model_version_id, name, uri, checksum, size_bytes) "
                        "VALUES (%s, %s, %s, %s, %s) RETURNING id, name, uri, checksum, size_bytes",
                        (target.id, name, uri, checksum, size),
                    ).fetchone()
            except errors.UniqueViolation:
                raise AlreadyExists(f"{target.model} v{target.version} already has an artifact {name!r}") from None
        assert row is not None
        return Artifact(*row)

    # -- lineage

    def register_dataset(
        self, name: str, uri: str, *, version: str = "", checksum: str | None = None, exist_ok: bool = False
    ) -> Dataset:
        """A dataset, identified by ``(name, version)``. ``exist_ok``: return the recorded one when it has the
        same URI and checksum (Conflict when they differ) instead of raising AlreadyExists."""
        with self._tx() as cur:
            row = cur.execute(
                "INSERT INTO registry.datasets (name, version, uri, checksum) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (name, version) DO NOTHING RETURNING id, name, version, uri, checksum",
                (name, version, uri, checksum),
            ).fetchone()
            if row is not None:
                return _dataset(row)
            found = self._dataset(cur, (name, version))
        label = f"{name}@{version}" if version else name
        if not exist_ok:
            raise AlreadyExists(f"dataset {label!r} is already registered")
        if (found.uri, found.checksum) != (uri, checksum):
            raise Conflict(f"dataset {label!r} is registered with uri {found.uri!r} and checksum {found.checksum!r}")
        return found

    def link_dataset(self, ref: VersionRef, dataset: DatasetRef, kind: LinkKind = "TRAINED_ON") -> None:
        """Record that the version was trained (TRAINED_ON) or evaluated (EVALUATED_ON) on ``dataset``.
        Linking twice is harmless."""
        check_kind(kind)
        with self._tx() as cur:
            target = self._version_of(cur, ref)
            found = self._dataset(cur, dataset_key(dataset))
            cur.execute(
                "INSERT INTO registry.model_version_datasets (model_version_id, dataset_id, relation) "
                "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (target.id, found.id, kind),
            )

    def link_feature_view(self, ref: VersionRef, namespace: str, name: str) -> None:
        """Record that the version uses the FeatureView ``namespace/name`` (USES_FEATURE). Linking twice is
        harmless. The FeatureView is named, not checked: it may live in another cluster or be gone."""
        if not namespace or not name:
            raise ValueError("a FeatureView is named by a namespace and a name, both non-empty")
        with self._tx() as cur:
            target = self._version_of(cur, ref)
            cur.execute(
                "INSERT INTO registry.model_version_features "
                "(model_version_id, feature_view_namespace, feature_view_name) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (target.id, namespace, name),
            )

    def record_deployment(self, ref: VersionRef, environment: str, *, description: str | None = None) -> Deployment:
        """Record that the version was deployed to ``environment`` (now)."""
        if not environment:
            raise ValueError("environment must not be empty")
        with self._tx() as cur:
            target = self._version_of(cur, ref)
            row = cur.execute(
                "INSERT INTO registry.deployments (model_version_id, environment, description) "
                "VALUES (%s, %s, %s) RETURNING id, deployed_at",
                (target.id, environment, description or ""),
            ).fetchone()
        assert row is not None
        return Deployment(
            id=row[0], model=target.model, version=target.version, environment=environment, deployed_at=row[1]
        )

    # -- reads

    def params(self, ref: VersionRef) -> dict[str, str]:
        """The params of a version, as stored (text)."""
        with self._tx() as cur:
            target = self._version_of(cur, ref)
            rows = cur.execute(
                "SELECT key, value FROM registry.params WHERE model_version_id = %s ORDER BY key", (target.id,)
            ).fetchall()
        return dict(rows)

    # -- plumbing

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Cursor]:
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except errors.CheckViolation as exc:
            raise ValueError(f"refused by the registry schema: {exc.diag.message_primary}") from None

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = connections.postgres_connect(self.info, self.connect_timeout)
        return self._conn

    @staticmethod
    def _model_id(cur: Cursor, model: str) -> int:
        row = cur.execute("SELECT id FROM registry.registered_models WHERE name = %s", (model,)).fetchone()
        if row is None:
            raise NotFound(f"no registered model {model!r}")
        return int(row[0])

    def _version(self, cur: Cursor, model: str, which: int | str) -> ModelVersion:
        model_id = self._model_id(cur, model)
        query = _VERSION_BY_ALIAS if isinstance(which, str) else _VERSION_BY_NUMBER
        row = cur.execute(query, (model_id, which)).fetchone()
        if row is None:
            what = f"alias {which!r}" if isinstance(which, str) else f"version {which}"
            raise NotFound(f"model {model!r} has no {what}")
        return _version(row)

    def _version_of(self, cur: Cursor, ref: VersionRef) -> ModelVersion:
        return self._version(cur, *version_key(ref))

    @staticmethod
    def _dataset(cur: Cursor, key: tuple[str, str]) -> Dataset:
        row = cur.execute(
            "SELECT id, name, version, uri, checksum FROM registry.datasets WHERE name = %s AND version = %s", key
        ).fetchone()
        if row is None:
            name, version = key
            raise NotFound(f"no dataset {name!r}" + (f" at version {version!r}" if version else " (unversioned)"))
        return _dataset(row)

    @staticmethod
    def _set_alias(cur: Cursor, model: str, model_id: int, version: int, alias: str, *, move: bool) -> None:
        row = cur.execute(
            "SELECT mv.version FROM registry.model_version_aliases a JOIN registry.model_versions mv "
            "ON mv.id = a.model_version_id WHERE a.model_id = %s AND a.alias = %s",
            (model_id, alias),
        ).fetchone()
        if row is not None and row[0] == version:
            return
        if row is not None and not move:
            raise AliasInUse(f"alias {alias!r} of model {model!r} names version {row[0]}; pass move=True to move it")
        version_id = cur.execute(
            "SELECT id FROM registry.model_versions WHERE model_id = %s AND version = %s", (model_id, version)
        ).fetchone()
        assert version_id is not None
        if row is None:
            try:
                with cur.connection.transaction():
                    cur.execute(
                        "INSERT INTO registry.model_version_aliases (model_id, alias, model_version_id) "
                        "VALUES (%s, %s, %s)",
                        (model_id, alias, version_id[0]),
                    )
            except errors.UniqueViolation:  # set concurrently
                raise AliasInUse(f"alias {alias!r} of model {model!r} was just set by someone else") from None
        else:
            cur.execute(
                "UPDATE registry.model_version_aliases SET model_version_id = %s WHERE model_id = %s AND alias = %s",
                (version_id[0], model_id, alias),
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
