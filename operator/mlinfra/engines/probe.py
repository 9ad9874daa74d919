"""``probe(conn)``: observe any DataStore through the engine module named by ``conn.engine``.

The single entry point the DataStore timer calls. Probes block (drivers are synchronous here); async
callers use :func:`probe_async`, which runs the probe in a worker thread so the event loop never waits on a
database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mlinfra.engines import connection, neo4j, observation, postgres, qdrant, redis

Probe = Callable[[connection.ConnectionInfo, float], observation.Observation]

PROBES: dict[connection.Engine, Probe] = {
    "redis": redis.probe,
    "postgres": postgres.probe,
    "neo4j": neo4j.probe,
    "qdrant": qdrant.probe,
}


def probe(conn: connection.ConnectionInfo, timeout: float = 5.0) -> observation.Observation:
    """Observe the store at ``conn``; never raises on connection failure (returns reachable=False)."""
    return PROBES[conn.engine](conn, timeout)


async def probe_async(
    conn: connection.ConnectionInfo,
    timeout: float = 5.0,  # noqa: ASYNC109  (the drivers' timeout, in the thread)
) -> observation.Observation:
    """:func:`probe` in a worker thread."""
    return await asyncio.to_thread(probe, conn, timeout)
