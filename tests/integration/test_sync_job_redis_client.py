"""The Redis clients (the sync Jobs' ``connection.redis_client``, the SDK's sync and asyncio ones) wait
once per call: a timeout is final, a dropped connection is tried again a few times. redis-py's own default
tries every call 10 more times, timeouts included: against a frozen Redis one 30 s timeout became more
than five minutes per call.

The server here is a loopback socket that counts the connections made to it: it never answers (a frozen
server: the kernel completes the connection, nobody reads), or closes each connection at once."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
import redis

from mlinfra.client import connections as sdk
from mlinfra.engines import connection


class Server:
    def __init__(self, close_at_once: bool) -> None:
        self.close_at_once = close_at_once
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            if self.close_at_once:
                conn.close()
            else:
                self.held.append(conn)  # read by nobody, answered never

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[Server]:
    server = Server(close_at_once=False)
    yield server
    server.stop()


@pytest.fixture
def closing() -> Iterator[Server]:
    server = Server(close_at_once=True)
    yield server
    server.stop()


def client(port: int) -> redis.Redis:
    return connection.redis_client(connection.ConnectionInfo.for_engine("redis", "127.0.0.1", "pw", port=port), 0.3)


def test_a_server_that_never_answers_is_waited_for_once(silent: Server) -> None:
    with pytest.raises(redis.TimeoutError):
        client(silent.port).get("key")
    assert silent.accepted == 1


def test_a_connection_dropped_by_the_server_is_tried_again_a_few_times(closing: Server) -> None:
    with pytest.raises(redis.ConnectionError):
        client(closing.port).get("key")
    assert closing.accepted == 4


def test_the_sdk_clients_wait_once_too(silent: Server) -> None:
    # An app reading features from a frozen Redis: one timeout per call, not eleven.
    info = connection.ConnectionInfo.for_engine("redis", "127.0.0.1", "pw", port=silent.port)
    with pytest.raises(redis.TimeoutError):
        sdk.redis_client(info, 0.3).get("key")
    assert silent.accepted == 1

    async def read() -> None:
        client = sdk.redis_async_client(info, 0.3)
        try:
            await client.get("key")
        finally:
            await client.aclose()

    with pytest.raises(redis.TimeoutError):
        asyncio.run(read())
    assert silent.accepted == 2
