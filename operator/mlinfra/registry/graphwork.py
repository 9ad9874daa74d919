"""The operator's Neo4j work for a ModelRegistry runs in a thread of its own; the handler waits a bounded time.

The Neo4j driver bounds connecting (``connection_timeout``) but not the wait for an answer on a connection it
holds: only the server's ``connection.recv_timeout_seconds`` hint does (120 s with Neo4j 5's defaults, no
bound at all when the server's Bolt keep-alive is off). A server frozen in the middle of a lineage pass held
the handler that long, and with it the registry's lock: the status said nothing of the stuck store meanwhile.

So a lineage pass or a graph read runs in a thread that owns its connections (PostgreSQL's and Neo4j's): the
handler waits at most ``wait`` seconds and carries on with what it knows, while the thread ends on the
drivers' terms (the server answers, or the driver gives up). One piece of work per registry at a time: a
stuck one is not joined by another at every observation.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_started: dict[str, float] = {}  # key -> monotonic start of the work running for it


class StillRunning(TimeoutError):
    """The work for ``key`` did not end within the wait, or the previous one has not ended yet."""

    def __init__(self, key: str, age: float, wait: float) -> None:
        super().__init__(f"{key}: Neo4j work started {age:.0f} s ago has not finished (timeout {wait:g} s)")
        self.key, self.age, self.wait = key, age, wait


def run(key: str, work: Callable[[], T], wait: float) -> T:
    """``work()`` in a thread of its own, the only one for ``key``: its result (or its exception) when it
    ends within ``wait`` seconds; :class:`StillRunning` when it does not, and at once, without starting it,
    when the previous work for ``key`` is still running."""
    answer: concurrent.futures.Future[T] = concurrent.futures.Future()
    with _lock:
        started = _started.get(key)
        if started is not None:
            raise StillRunning(key, time.monotonic() - started, wait)
        _started[key] = time.monotonic()

    def target() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the caller, which raises it
            _done(key)
            answer.set_exception(exc)
        else:
            _done(key)  # before the answer: the caller's next call must find the key free
            answer.set_result(result)

    threading.Thread(target=target, name=f"neo4j {key}", daemon=True).start()
    try:
        return answer.result(timeout=wait)
    except concurrent.futures.TimeoutError:
        raise StillRunning(key, wait, wait) from None


def _done(key: str) -> None:
    with _lock:
        _started.pop(key, None)
