"""Reading features the operator built: online (Redis hashes) and point-in-time historical (PostgreSQL).

:class:`FeatureStore` is the synchronous client; :mod:`mlinfra.client.features_async` has the asyncio one.
Both use the pure functions of this module, and the key encoding, field codec and table names of
:mod:`mlinfra.features.layout` — the module the materializer writes with — so serving and training read
exactly what was written, the same way.

Online: one ``HMGET`` per entity, pipelined per batch of keys. A result is ``None`` when the entity has no
hash (never materialized, or expired after ``spec.online.ttl``); inside a result, a feature is ``None`` when
its field is absent (a NULL value offline, or a feature added after the entity was last materialized).

Historical: an as-of join in PostgreSQL. For each entity row ``{entities..., event_timestamp}`` it takes the
latest feature row of that entity with ``event_timestamp <=`` the row's (no future leakage; a feature row at
the very same instant counts), ties on event time broken by the latest ``created_at``. When the view has an
online TTL, feature rows older than the TTL at the row's time (``event_timestamp < row time - ttl``) are not
used: historical reads then see what serving would have seen. Naive datetimes are taken as UTC (as the
layout does). Values go through the online codec, so both sides return identical Python values.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import psycopg
import redis as redis_lib
from psycopg import sql

from mlinfra.api import base, common, featureview
from mlinfra.client import connections
from mlinfra.features import layout

EntityValue: TypeAlias = str | int
# One entity: a scalar for single-entity views, a tuple in ``spec.entities`` order otherwise.
EntityKey: TypeAlias = EntityValue | tuple[EntityValue, ...]
OnlineRow: TypeAlias = dict[str, Any] | None
FeatureViewLike: TypeAlias = "featureview.FeatureView | Mapping[str, Any] | View"

TIMESTAMP_KEY = layout.EVENT_TIMESTAMP  # the key of an entity row's point in time
ONLINE_BATCH = 1000  # keys per pipeline round trip
HISTORICAL_BATCH = 10000  # entity rows per SQL query


@dataclasses.dataclass(frozen=True)
class View:
    """What a client needs of a FeatureView: its name, namespace, entities, features, table and TTL."""

    name: str
    namespace: str
    entities: tuple[tuple[str, str], ...]  # (name, type) in key order
    features: tuple[tuple[str, str], ...]  # (name, type)
    schema: str
    table: str
    ttl: datetime.timedelta | None = None

    @classmethod
    def from_featureview(cls, fv: featureview.FeatureView | Mapping[str, Any], namespace: str | None = None) -> View:
        """From the API model or a FeatureView body (as ``kubectl get -o json`` prints it)."""
        if not isinstance(fv, featureview.FeatureView):
            fv = featureview.FeatureView.model_validate(fv)
        ns = namespace or fv.metadata.namespace
        if not ns:
            raise ValueError(f"FeatureView {fv.metadata.name}: no namespace in its metadata; pass namespace=")
        spec = fv.spec
        schema, table = layout.offline_table(fv.metadata.name, spec.offline.schema_name, spec.offline.table)
        return cls(
            name=fv.metadata.name,
            namespace=ns,
            entities=tuple((e.name, e.type) for e in spec.entities),
            features=tuple((f.name, f.type) for f in spec.features),
            schema=schema,
            table=table,
            ttl=common.parse_duration(spec.online.ttl) if spec.online.ttl else None,
        )

    @property
    def entity_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entities)

    def select(self, features: Iterable[str] | None) -> tuple[tuple[str, str], ...]:
        """``(name, type)`` of the requested features (all when ``None``), in the order asked."""
        if features is None:
            return self.features
        if isinstance(features, str):
            raise TypeError("features is a list of names, not one string")
        types = dict(self.features)
        names = list(features)
        unknown = [name for name in names if name not in types]
        if unknown:
            raise ValueError(
                f"FeatureView {self.namespace}/{self.name} has no feature {', '.join(map(repr, unknown))}"
                f"; its features are {', '.join(types)}"
            )
        return tuple((name, types[name]) for name in names)

    def key_values(self, key: EntityKey) -> tuple[EntityValue, ...]:
        """One entity key as a tuple checked against the entity types (a scalar for a single entity)."""
        values = key if isinstance(key, tuple) else (key,)
        if len(values) != len(self.entities):
            raise ValueError(
                f"entity key {key!r}: FeatureView {self.name} has {len(self.entities)} entities "
                f"({', '.join(self.entity_names)}), got {len(values)} values"
            )
        for value, (name, type_) in zip(values, self.entities, strict=True):
            expected = str if type_ == "string" else int
            if isinstance(value, bool) or not isinstance(value, expected):
                raise TypeError(
                    f"entity {name} is {type_}: expected {expected.__name__}, got {type(value).__name__} {value!r}"
                )
        return values

    def online_key(self, key: EntityKey) -> str:
        return layout.online_key(self.namespace, self.name, self.key_values(key))


# -- online, pure parts -----------------------------------------------------------------------------------


def hmget_fields(selected: Sequence[tuple[str, str]]) -> list[str]:
    """The fields one HMGET asks for: the features, then ``_event_ts`` (present in every written hash)."""
    return [name for name, _ in selected] + [layout.EVENT_TS_FIELD]


def decode_hmget(selected: Sequence[tuple[str, str]], reply: Sequence[bytes | str | None]) -> OnlineRow:
    """The typed row of one HMGET reply to :func:`hmget_fields`; ``None`` when the hash does not exist."""
    if reply[-1] is None:  # no _event_ts: no hash (missing or expired)
        return None
    return layout.decode_features(selected, dict(zip((name for name, _ in selected), reply, strict=False)))


def batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    if size < 1:
        raise ValueError("batch size must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- historical, pure parts -------------------------------------------------------------------------------


def historical_query(view: View, selected: Sequence[tuple[str, str]], apply_ttl: bool = True) -> sql.Composed:
    """The as-of join: entity rows as ``unnest`` arrays, a LATERAL latest-row lookup each, in input order.

    Parameters: one array per entity (in key order), then the timestamps array, then the TTL when applied.
    Identifiers are quoted by psycopg; types come from the layout's fixed mapping.
    """
    ts = sql.Identifier(layout.EVENT_TIMESTAMP)
    keys = [sql.Identifier(f"k{i}") for i in range(len(view.entities))]
    arrays = sql.SQL(", ").join(
        sql.SQL("%s::{}[]").format(sql.SQL(layout.sql_type(type_))) for _, type_ in view.entities
    )
    match = sql.SQL(" AND ").join(
        sql.SQL("t.{} = q.{}").format(sql.Identifier(name), key)
        for (name, _), key in zip(view.entities, keys, strict=True)
    )
    ttl = sql.SQL(" AND t.{} >= q.ts - %s::interval").format(ts) if apply_ttl and view.ttl else sql.SQL("")
    columns = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(name)) for name, _ in selected)
    outer = sql.SQL(", ").join(sql.SQL("f.{}").format(sql.Identifier(name)) for name, _ in selected)
    return sql.SQL(
        "SELECT q.ord, {outer} FROM unnest({arrays}, %s::timestamptz[]) WITH ORDINALITY AS q({keys}, ts, ord) "
        "LEFT JOIN LATERAL (SELECT {columns} FROM {table} AS t WHERE {match} AND t.{ts} <= q.ts{ttl} "
        "ORDER BY t.{ts} DESC, t.{created} DESC LIMIT 1) AS f ON true ORDER BY q.ord"
    ).format(
        outer=outer,
        arrays=arrays,
        keys=sql.SQL(", ").join(keys),
        columns=columns,
        table=sql.Identifier(view.schema, view.table),
        match=match,
        ts=ts,
        ttl=ttl,
        created=sql.Identifier(layout.CREATED_AT),
    )


def row_time(row: Mapping[str, Any]) -> datetime.datetime:
    try:
        value = row[TIMESTAMP_KEY]
    except KeyError:
        raise ValueError(f"entity row {dict(row)!r} has no {TIMESTAMP_KEY!r}") from None
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"entity row {TIMESTAMP_KEY} must be a datetime, got {type(value).__name__}")
    return layout.to_utc(value)


def historical_params(view: View, rows: Sequence[Mapping[str, Any]], apply_ttl: bool = True) -> list[Any]:
    """The parameters of :func:`historical_query` for these entity rows (checked against the entity types)."""
    columns: list[list[EntityValue]] = [[] for _ in view.entities]
    times = []
    for row in rows:
        missing = [name for name in view.entity_names if name not in row]
        if missing:
            raise ValueError(f"entity row {dict(row)!r} lacks the entity column(s) {', '.join(missing)}")
        values = view.key_values(tuple(row[name] for name in view.entity_names))
        for column, value in zip(columns, values, strict=True):
            column.append(value)
        times.append(row_time(row))
    params: list[Any] = [*columns, times]
    if apply_ttl and view.ttl:
        params.append(view.ttl)
    return params


def historical_rows(
    selected: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]], fetched: Sequence[Sequence[Any]]
) -> list[dict[str, Any]]:
    """Each input row extended with its typed feature values (``None`` where no feature row qualified).

    Values round-trip through the online codec of the layout: training reads what serving would.
    """
    out = []
    for row, result in zip(rows, fetched, strict=True):
        extended = dict(row)
        for (name, type_), value in zip(selected, result[1:], strict=True):
            extended[name] = None if value is None else layout.decode_value(type_, layout.encode_value(type_, value))
        out.append(extended)
    return out


def check_entity_rows(selected: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]) -> None:
    names = {name for name, _ in selected}
    for row in rows:
        clash = sorted(names & set(row))
        if clash:
            raise ValueError(f"entity row {dict(row)!r} has key(s) {', '.join(clash)}, which are requested features")


# -- the synchronous client -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Binding:
    """A view with the connections of its stores (either may be unknown: that read is then refused)."""

    view: View
    online: connections.ConnectionInfo | None
    offline: connections.ConnectionInfo | None


class Views:
    """The views a store knows by name, with their connections; shared by the sync and async clients.
    ``replica_reads``: every view reads from its stores' replicas where they have them (the read-only endpoint
    of a replicated managed store, ``ConnectionInfo.read_only``)."""

    def __init__(
        self,
        online: connections.ConnectionSource | None,
        offline: connections.ConnectionSource | None,
        namespace: str | None,
        replica_reads: bool = False,
    ) -> None:
        self.online = connections.resolve(online) if online is not None else None
        self.offline = connections.resolve(offline) if offline is not None else None
        self.namespace = namespace
        self.replica_reads = replica_reads
        self.bound: dict[str, Binding] = {}

    def bind(
        self,
        fv: FeatureViewLike,
        online: connections.ConnectionInfo | None = None,
        offline: connections.ConnectionInfo | None = None,
    ) -> Binding:
        view = fv if isinstance(fv, View) else View.from_featureview(fv, self.namespace)
        online, offline = online or self.online, offline or self.offline
        if self.replica_reads:
            online = online.read_only() if online is not None else None
            offline = offline.read_only() if offline is not None else None
        return Binding(view, online, offline)

    def add(
        self,
        fv: FeatureViewLike,
        online: connections.ConnectionInfo | None = None,
        offline: connections.ConnectionInfo | None = None,
    ) -> View:
        binding = self.bind(fv, online, offline)
        self.bound[binding.view.name] = binding
        return binding.view

    def get(self, view: str | FeatureViewLike) -> Binding:
        if isinstance(view, str):
            try:
                return self.bound[view]
            except KeyError:
                raise ValueError(
                    f"unknown FeatureView {view!r}: this store knows {', '.join(sorted(self.bound)) or 'none'}"
                ) from None
        return self.bind(view)

    @staticmethod
    def online_of(binding: Binding) -> connections.ConnectionInfo:
        if binding.online is None:
            raise ValueError(f"no online (redis) connection for FeatureView {binding.view.name}: pass online=")
        return binding.online

    @staticmethod
    def offline_of(binding: Binding) -> connections.ConnectionInfo:
        if binding.offline is None:
            raise ValueError(f"no offline (postgres) connection for FeatureView {binding.view.name}: pass offline=")
        return binding.offline


def fetch_featureview(namespace: str, name: str) -> featureview.FeatureView:
    """The FeatureView ``namespace/name`` from the Kubernetes API (in-cluster credentials, else kubeconfig)."""
    from kubernetes import client  # optional: only the Kubernetes constructors need it

    connections.load_kube_config()
    crd = featureview.FeatureView.crd_info
    with client.ApiClient() as api:
        body = client.CustomObjectsApi(api).get_namespaced_custom_object(
            base.GROUP, base.VERSION, namespace, crd.plural, name
        )
    return featureview.FeatureView.model_validate(body)


class FeatureStore:
    """Synchronous reads of FeatureViews: ``get_online_features`` and ``get_historical_features``.

    ``views``: FeatureView models or bodies (or :class:`View`), looked up by name afterwards. ``online`` /
    ``offline``: the Redis and PostgreSQL connections (anything :func:`connections.resolve` takes); views
    added by :meth:`from_kubernetes` carry their own stores' connections. ``replica_reads``: read from the
    stores' replicas where they have them (``readOnlyHost`` of the connection Secret: reads that may lag the
    primary by its replication lag and leave it to the writes). Clients are opened on first use, one per
    connection, and closed by :meth:`close` (or ``with``).
    """

    def __init__(
        self,
        views: FeatureViewLike | Iterable[FeatureViewLike] = (),
        *,
        online: connections.ConnectionSource | None = None,
        offline: connections.ConnectionSource | None = None,
        namespace: str | None = None,
        batch_size: int = ONLINE_BATCH,
        replica_reads: bool = False,
    ) -> None:
        self.views = Views(online, offline, namespace, replica_reads)
        self.batch_size = batch_size
        for fv in as_list(views):
            self.views.add(fv)
        self._redis: dict[connections.ConnectionInfo, redis_lib.Redis] = {}
        self._postgres: dict[connections.ConnectionInfo, psycopg.Connection[tuple[Any, ...]]] = {}

    @classmethod
    def from_kubernetes(cls, namespace: str, views: Sequence[str], **kwargs: Any) -> FeatureStore:
        """The named FeatureViews of ``namespace``, with their stores' published connection Secrets."""
        store = cls(namespace=namespace, **kwargs)
        for name in views:
            fv = fetch_featureview(namespace, name)
            store.views.add(
                fv,
                connections.from_kubernetes(namespace, fv.spec.online.store_ref.name),
                connections.from_kubernetes(namespace, fv.spec.offline.store_ref.name),
            )
        return store

    def add_view(
        self,
        fv: FeatureViewLike,
        *,
        online: connections.ConnectionSource | None = None,
        offline: connections.ConnectionSource | None = None,
    ) -> View:
        """Know one more view (with its own connections, else the store's)."""
        return self.views.add(fv, resolved(online), resolved(offline))

    def get_online_features(
        self, view: str | FeatureViewLike, entity_keys: Sequence[EntityKey], features: Sequence[str] | None = None
    ) -> list[OnlineRow]:
        """The latest materialized values per entity key, in input order; ``None`` for an entity not online."""
        binding = self.views.get(view)
        selected = binding.view.select(features)
        keys = [binding.view.online_key(key) for key in entity_keys]
        fields = hmget_fields(selected)
        client = self._redis_for(Views.online_of(binding))
        out: list[OnlineRow] = []
        for batch in batches(keys, self.batch_size):
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, fields)
            out.extend(decode_hmget(selected, reply) for reply in pipe.execute())
        return out

    def get_historical_features(
        self,
        view: str | FeatureViewLike,
        entity_rows: Sequence[Mapping[str, Any]],
        features: Sequence[str] | None = None,
        *,
        apply_ttl: bool = True,
    ) -> list[dict[str, Any]]:
        """Each entity row with the feature values as of its ``event_timestamp`` (point-in-time correct)."""
        binding = self.views.get(view)
        selected = binding.view.select(features)
        check_entity_rows(selected, entity_rows)
        if not entity_rows:
            return []
        query = historical_query(binding.view, selected, apply_ttl)
        conn = self._postgres_for(Views.offline_of(binding))
        out: list[dict[str, Any]] = []
        for batch in batches(entity_rows, HISTORICAL_BATCH):
            params = historical_params(binding.view, batch, apply_ttl)
            with conn.cursor() as cur:
                fetched = cur.execute(query, params).fetchall()
            out.extend(historical_rows(selected, batch, fetched))
        return out

    def _redis_for(self, info: connections.ConnectionInfo) -> redis_lib.Redis:
        if info not in self._redis:
            self._redis[info] = connections.redis_client(info)
        return self._redis[info]

    def _postgres_for(self, info: connections.ConnectionInfo) -> psycopg.Connection[tuple[Any, ...]]:
        conn = self._postgres.get(info)
        if conn is None or conn.closed:
            conn = self._postgres[info] = connections.postgres_connect(info)
        return conn

    def close(self) -> None:
        """Close every client this store opened."""
        for client in self._redis.values():
            client.close()
        for conn in self._postgres.values():
            conn.close()
        self._redis.clear()
        self._postgres.clear()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_list(views: FeatureViewLike | Iterable[FeatureViewLike]) -> list[FeatureViewLike]:
    if isinstance(views, featureview.FeatureView | View | Mapping):
        return [views]
    return list(views)


def resolved(source: connections.ConnectionSource | None) -> connections.ConnectionInfo | None:
    return connections.resolve(source) if source is not None else None
