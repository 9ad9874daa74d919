"""The asyncio twin of :class:`mlinfra.client.features.FeatureStore`: ``redis.asyncio`` and psycopg's
``AsyncConnection``, for serving code that must not block its event loop.

Same arguments, same answers: both classes are thin shells around the pure functions of
:mod:`mlinfra.client.features` (keys, fields, decoding, the as-of SQL), which use the layout the
materializer writes with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
import redis.asyncio as redis_async

from mlinfra.client import connections
from mlinfra.client import features as fx
from mlinfra.client.features import EntityKey, FeatureViewLike, OnlineRow, View, Views


class AsyncFeatureStore:
    """Asyncio reads of FeatureViews; see :class:`mlinfra.client.features.FeatureStore` for the arguments."""

    def __init__(
        self,
        views: FeatureViewLike | Iterable[FeatureViewLike] = (),
        *,
        online: connections.ConnectionSource | None = None,
        offline: connections.ConnectionSource | None = None,
        namespace: str | None = None,
        batch_size: int = fx.ONLINE_BATCH,
        replica_reads: bool = False,
    ) -> None:
        self.views = Views(online, offline, namespace, replica_reads)
        self.batch_size = batch_size
        for fv in fx.as_list(views):
            self.views.add(fv)
        self._redis: dict[connections.ConnectionInfo, redis_async.Redis] = {}
        self._postgres: dict[connections.ConnectionInfo, psycopg.AsyncConnection[tuple[Any, ...]]] = {}
        self._lock = asyncio.Lock()  # one connect per store, however many readers start at once

    @classmethod
    async def from_kubernetes(cls, namespace: str, views: Sequence[str], **kwargs: Any) -> AsyncFeatureStore:
        """The named FeatureViews of ``namespace`` with their stores' connection Secrets (API calls in a thread)."""
        sync = await asyncio.to_thread(fx.FeatureStore.from_kubernetes, namespace, views)
        store = cls(namespace=namespace, **kwargs)
        store.views.bound.update(sync.views.bound)
        return store

    def add_view(
        self,
        fv: FeatureViewLike,
        *,
        online: connections.ConnectionSource | None = None,
        offline: connections.ConnectionSource | None = None,
    ) -> View:
        """Know one more view (with its own connections, else the store's)."""
        return self.views.add(fv, fx.resolved(online), fx.resolved(offline))

    async def get_online_features(
        self, view: str | FeatureViewLike, entity_keys: Sequence[EntityKey], features: Sequence[str] | None = None
    ) -> list[OnlineRow]:
        """The latest materialized values per entity key, in input order; ``None`` for an entity not online."""
        binding = self.views.get(view)
        selected = binding.view.select(features)
        keys = [binding.view.online_key(key) for key in entity_keys]
        fields = fx.hmget_fields(selected)
        client = await self._redis_for(Views.online_of(binding))
        out: list[OnlineRow] = []
        for batch in fx.batches(keys, self.batch_size):
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.hmget(key, fields)
            out.extend(fx.decode_hmget(selected, reply) for reply in await pipe.execute())
        return out

    async def get_historical_features(
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
        fx.check_entity_rows(selected, entity_rows)
        if not entity_rows:
            return []
        query = fx.historical_query(binding.view, selected, apply_ttl)
        conn = await self._postgres_for(Views.offline_of(binding))
        out: list[dict[str, Any]] = []
        for batch in fx.batches(entity_rows, fx.HISTORICAL_BATCH):
            params = fx.historical_params(binding.view, batch, apply_ttl)
            async with conn.cursor() as cur:
                await cur.execute(query, params)
                fetched = await cur.fetchall()
            out.extend(fx.historical_rows(selected, batch, fetched))
        return out

    async def _redis_for(self, info: connections.ConnectionInfo) -> redis_async.Redis:
        if info not in self._redis:
            self._redis[info] = connections.redis_async_client(info)
        return self._redis[info]

    async def _postgres_for(self, info: connections.ConnectionInfo) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        async with self._lock:
            conn = self._postgres.get(info)
            if conn is None or conn.closed:
                conn = self._postgres[info] = await connections.postgres_connect_async(info)
            return conn

    async def aclose(self) -> None:
        """Close every client this store opened."""
        for client in self._redis.values():
            await client.aclose()
        for conn in self._postgres.values():
            await conn.close()
        self._redis.clear()
        self._postgres.clear()

    async def __aenter__(self) -> AsyncFeatureStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
