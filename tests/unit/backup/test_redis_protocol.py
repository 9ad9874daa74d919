"""The replication handshake's reader: a primary that holds a waiting replica (diskless sync with
repl-diskless-sync-delay) sends bare newlines to keep it alive, also before the +FULLRESYNC reply (seen on the
real node; a local server answered at once). Those newlines are skipped, a real reply is read as one."""

from __future__ import annotations

import socket

import pytest

from mlinfra.backup import redis as redis_backup
from mlinfra.engines import connection

pytestmark = pytest.mark.unit


def _conn(data: bytes) -> redis_backup._Conn:
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.close()
    return redis_backup._Conn(ours, connection.Deadline(5.0, "the test"), "127.0.0.1:6379")


def test_keepalive_newlines_before_the_fullresync_reply_are_skipped() -> None:
    conn = _conn(b"\n\n\n\n\n+FULLRESYNC 5d2ff0e1 0\r\n$EOF:" + b"x" * 40 + b"\r\n")
    conn.skip_keepalives()
    assert conn.reply() == "FULLRESYNC 5d2ff0e1 0"
    assert conn.line().startswith(b"$EOF:")


def test_a_reply_without_keepalives_is_read_unchanged() -> None:
    conn = _conn(b"-NOPERM this user has no permissions to run the 'psync' command\r\n")
    conn.skip_keepalives()
    with pytest.raises(redis_backup.RedisBackupError, match="NOPERM"):
        conn.reply()
