"""``probe(conn)``: observe any DataStore through the engine module named by ``conn.engine``.

The single entry point the DataStore timer calls. Probes block (drivers are synchronous here); async
callers use :func:`probe_async`, which runs the probe in a worker thread so the event loop never waits on a
database.

Each engine's probe bounds its own waits by ``timeout`` (connect, statements, socket reads). One driver
cannot be told to: Neo4j's, once connected, reads without a timeout of its own. So a probe runs in a thread
of its own, and past ``timeout + GRACE`` its caller gets an unreachable observation naming the timeout while
that thread is left to end on the driver's own terms: a frozen server holds one thread, never the
operator's handler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable

from mlinfra.engines import connection, neo4j, observation, postgres, qdrant, redis

Probe = Callable[[connection.ConnectionInfo, float], observation.Observation]

PROBES: dict[connection.Engine, Probe] = {
    "redis": redis.probe,
    "postgres": postgres.probe,
    "neo4j": neo4j.probe,
    "qdrant": qdrant.probe,
}
# Seconds a probe may run past its timeout (a driver's own timeout firing a little late) before it is
# abandoned.
GRACE = 2.0


def probe(conn: connection.ConnectionInfo, timeout: float = 5.0) -> observation.Observation:
    """Observe the store at ``conn``; never raises on connection failure (returns reachable=False) and
    returns within ``timeout + GRACE`` seconds whatever the server does."""
    run = PROBES[conn.engine]
    answer: concurrent.futures.Future[observation.Observation] = concurrent.futures.Future()

    def work() -> None:
        try:
            answer.set_result(run(conn, timeout))
        except BaseException as exc:  # handed to the caller, which raises it
            answer.set_exception(exc)

    threading.Thread(target=work, name=f"probe {conn.engine} {conn.endpoint}", daemon=True).start()
    try:
        return answer.result(timeout=timeout + GRACE)
    except concurrent.futures.TimeoutError:
        return observation.Observation.unreachable(
            f"DeadlineExceeded: {conn.engine} at {conn.endpoint} did not answer within {timeout:g} s (probe timeout)"
        )


async def probe_async(
    conn: connection.ConnectionInfo,
    timeout: float = 5.0,  # noqa: ASYNC109  (the drivers' timeout, in the thread)
) -> observation.Observation:
    """:func:`probe` in a worker thread."""
    return await asyncio.to_thread(probe, conn, timeout)
