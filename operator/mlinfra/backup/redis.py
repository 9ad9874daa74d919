"""Redis backups: an RDB snapshot fetched over the replication protocol, restored by seeding a new server.

**Take.** :func:`take` connects like a replica (``PSYNC ? -1``) and keeps only the full-sync payload, the
RDB, which the server produces from a fork of its memory. With ``repl-diskless-sync yes`` (Redis 7's default
and what the operator renders) the server streams the fork's output straight to the socket (the ``$EOF:``
framing): nothing is written to its disk, and the server may be the primary or a replica. A server with
``repl-diskless-sync no`` writes the snapshot to its own disk first (a ``BGSAVE``) and then sends it; the
metadata says which happened (``transfer``: ``diskless`` or ``disk``). ``REPLCONF rdb-only 1`` (Redis 7+)
tells the server that no replication stream follows, so it drops the connection once the RDB is sent.

Why not ``redis-cli --rdb``: it was checked against Debian's redis-cli 7.0.15 and redis-server 7.0.15 — it
handles the diskless framing, but over TLS it checks only the certificate chain, not the host name (it
connects to ``127.0.0.1`` with a certificate that names ``localhost`` only, and accepts a wrong ``--sni``),
and it has no timeout. The protocol client here is short, uses the project's one TLS setup
(:func:`mlinfra.engines.connection.ssl_context`: chain and host name or ``serverName`` checked), has a deadline
on every read, and needs no redis-cli in the operator image. The password goes over the socket only.

An ACL user other than ``default`` needs the commands PSYNC, REPLCONF and INFO (``+psync +replconf +info``).
The key counts in the metadata are ``INFO keyspace`` just before the fork: writes in between are in
the snapshot but not in the counts. The replication id and offset (from ``+FULLRESYNC``) say where in the
primary's history the snapshot is.

**Restore.** :func:`restore` places the file where a new redis-server loads it at its first start. Redis 7 with
``appendonly yes`` does *not* load ``dump.rdb`` when it finds no AOF: it starts empty and writes an empty AOF
(checked with redis-server 7.0.15), so for such a server the snapshot becomes the base file of a multi-part AOF
(``appendonlydir/appendonly.aof.1.base.rdb`` + an empty incr file + the manifest), which Redis 7 loads as its
AOF. Only the form the server will read is written: a stale second copy would be loaded later when the
setting changes. A data directory that already holds data is refused: a restore never overwrites.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mlinfra.backup import rdb
from mlinfra.engines import connection

FILE = "dump.rdb"
AOF_DIR = "appendonlydir"
AOF_FILE = "appendonly.aof"
_RECV = 1 << 20
_COPY = 16 << 20
_EOF_MARK_LEN = 40


class RedisBackupError(Exception):
    """The server refused or broke off the snapshot; the message is the server's own (never a credential)."""


class _Conn:
    """A RESP connection with a deadline on every read and write."""

    def __init__(self, sock: socket.socket, deadline: connection.Deadline, endpoint: str) -> None:
        self.sock = sock
        self.deadline = deadline
        self.endpoint = endpoint
        self.buffer = bytearray()

    def send(self, *args: str | bytes) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode() if isinstance(arg, str) else arg
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        self.sock.settimeout(self.deadline.left())
        self._io(lambda: self.sock.sendall(b"".join(parts)))

    def _io(self, call: Any) -> Any:
        try:
            return call()
        except TimeoutError:
            self.deadline.left()  # past the deadline: says so
            raise connection.DeadlineExceeded(
                f"redis at {self.endpoint}: no answer within {self.deadline.timeout:.0f} s"
            ) from None

    def _fill(self) -> None:
        self.sock.settimeout(self.deadline.left())
        chunk = self._io(lambda: self.sock.recv(_RECV))
        if not chunk:
            raise RedisBackupError(f"redis at {self.endpoint} closed the connection")
        self.buffer += chunk

    def line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            self._fill()

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def reply(self) -> Any:
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisBackupError(f"redis at {self.endpoint}: {rest.decode(errors='replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.exactly(size + 2)[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise RedisBackupError(f"redis at {self.endpoint}: unexpected reply {line[:40]!r}")

    def call(self, *args: str | bytes) -> Any:
        self.send(*args)
        return self.reply()

    def skip_keepalives(self) -> None:
        """Drop the newlines a primary sends a waiting replica before the snapshot starts: with diskless sync
        (repl-diskless-sync-delay) they come before the ``+FULLRESYNC`` reply too, not only after it."""
        while True:
            while not self.buffer:
                self._fill()
            if self.buffer[:1] != b"\n":
                return
            del self.buffer[:1]

    def payload_into(self, sink: BinaryIO) -> tuple[int, str]:
        """Copy the full-sync payload after ``+FULLRESYNC`` into ``sink``: (bytes written, transfer kind)."""
        while True:
            while not self.buffer:
                self._fill()
            if self.buffer[:1] == b"\n":  # the server's keep-alive while it forks or saves
                del self.buffer[:1]
                continue
            break
        header = self.line()
        if header.startswith(b"$EOF:"):
            mark = header[5:]
            if len(mark) != _EOF_MARK_LEN:
                raise RedisBackupError(f"redis at {self.endpoint}: malformed diskless header")
            return self._until_mark(sink, mark), "diskless"
        if not header.startswith(b"$"):
            raise RedisBackupError(f"redis at {self.endpoint}: unexpected sync header {header[:40]!r}")
        remaining = int(header[1:])
        written = 0
        while remaining:
            if not self.buffer:
                self._fill()
            piece = self.buffer[:remaining]
            sink.write(piece)
            del self.buffer[: len(piece)]
            remaining -= len(piece)
            written += len(piece)
        return written, "disk"

    def _until_mark(self, sink: BinaryIO, mark: bytes) -> int:
        # The payload ends with the 40-byte mark; after it may come the replication stream (servers without
        # rdb-only), so the mark is searched for, not just compared with the end of each read.
        written = 0
        while True:
            found = self.buffer.find(mark)
            if found >= 0:
                sink.write(self.buffer[:found])
                written += found
                del self.buffer[: found + len(mark)]
                return written
            keep = _EOF_MARK_LEN - 1  # a mark may straddle two reads
            if len(self.buffer) > keep:
                flush = len(self.buffer) - keep
                sink.write(self.buffer[:flush])
                written += flush
                del self.buffer[:flush]
            self._fill()


@contextlib.contextmanager
def _connect(conn: connection.ConnectionInfo, deadline: connection.Deadline) -> Iterator[_Conn]:
    sock = socket.create_connection((conn.host, conn.port), timeout=deadline.left())
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if conn.tls:
            # The one TLS setup (CA or system roots; host name or serverName checked; or nothing checked with
            # insecureSkipVerify). The handshake runs under the socket's timeout.
            sock = connection.ssl_context(conn).wrap_socket(sock, server_hostname=conn.host)
        resp = _Conn(sock, deadline, conn.endpoint)
        if conn.password:
            if conn.username and conn.username != "default":
                resp.call("AUTH", conn.username, conn.password)
            else:
                resp.call("AUTH", conn.password)
        yield resp
    except ssl.SSLError as exc:
        raise RedisBackupError(f"redis at {conn.endpoint}: TLS failed: {exc.reason or exc}") from None
    finally:
        sock.close()


def _info(resp: _Conn, section: str) -> dict[str, str]:
    raw = resp.call("INFO", section)
    fields: dict[str, str] = {}
    for line in (raw or b"").decode(errors="replace").splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key] = value
    return fields


def keyspace(fields: dict[str, str]) -> dict[str, dict[str, int]]:
    """``INFO keyspace`` (``db0:keys=3,expires=1,avg_ttl=0``) as ``{"0": {"keys": 3, "expires": 1}}``."""
    out: dict[str, dict[str, int]] = {}
    for name, value in fields.items():
        if not name.startswith("db") or not name[2:].isdigit():
            continue
        parts = dict(item.split("=", 1) for item in value.split(",") if "=" in item)
        out[name[2:]] = {"keys": int(parts.get("keys", 0)), "expires": int(parts.get("expires", 0))}
    return out


def take(conn: connection.ConnectionInfo, staging: Path, timeout: float) -> dict[str, Any]:
    """Write an RDB snapshot of the server at ``conn`` (a primary or a replica) to ``staging/dump.rdb`` within
    ``timeout`` seconds, check it (:func:`mlinfra.backup.rdb.validate`) and return its metadata.

    Raises :class:`RedisBackupError` (refused, broken off), :class:`mlinfra.engines.connection.DeadlineExceeded`
    (too slow), :class:`mlinfra.backup.rdb.RdbError` (the file is not intact) or ``OSError`` (unreachable).
    Nothing is left in ``staging`` on failure."""
    staging.mkdir(parents=True, exist_ok=True)
    deadline = connection.Deadline(timeout, f"the Redis snapshot from {conn.endpoint}")
    target = staging / FILE
    partial = staging / f".{FILE}.partial"
    started = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()
    try:
        with _connect(conn, deadline) as resp:
            server = _info(resp, "server")
            replication = _info(resp, "replication")
            keys = keyspace(_info(resp, "keyspace"))
            resp.call("REPLCONF", "capa", "eof", "capa", "psync2")
            try:
                resp.call("REPLCONF", "rdb-only", "1")
                rdb_only = True
            except RedisBackupError:
                rdb_only = False  # before Redis 7: the stream that follows the RDB is simply not read
            resp.send("PSYNC", "?", "-1")
            resp.skip_keepalives()
            answer = resp.reply()
            words = str(answer).split()
            if not words or words[0] != "FULLRESYNC":
                raise RedisBackupError(f"redis at {conn.endpoint}: expected FULLRESYNC, got {str(answer)[:60]!r}")
            with open(partial, "wb") as sink:
                size, transfer = resp.payload_into(sink)
                sink.flush()
                os.fsync(sink.fileno())
        info = rdb.validate(partial)
        partial.rename(target)
        rdb.fsync_dir(staging)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    offset = int(words[2]) if len(words) > 2 and words[2].lstrip("-").isdigit() else info.repl_offset
    return {
        "engine": "redis",
        "format": "rdb",
        "file": FILE,
        "size": size,
        "rdbVersion": info.version,
        "checksum": f"crc64:{info.checksum:016x}" if info.checksum is not None else None,
        "redisVersion": server.get("redis_version") or info.redis_version,
        "source": conn.endpoint,
        "role": replication.get("role"),
        "transfer": transfer,
        "rdbOnly": rdb_only,
        "keyspace": keys,
        "keys": sum(db["keys"] for db in keys.values()),
        "replication": {"replid": words[1] if len(words) > 1 else None, "offset": offset},
        "startedAt": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - clock, 3),
    }


def restore(
    staging: Path,
    data_dir: Path,
    *,
    appendonly: bool = False,
    dbfilename: str = FILE,
    appenddirname: str = AOF_DIR,
    appendfilename: str = AOF_FILE,
) -> None:
    """Seed the data directory of a NEW redis-server with the snapshot in ``staging``: ``dbfilename`` for a
    server that starts with ``appendonly no``; with ``appendonly yes`` the base of a multi-part AOF in
    ``appenddirname`` (see the module docstring). The file is checked before it is placed; a directory that
    already holds an RDB or an AOF is refused (:class:`FileExistsError`)."""
    source = staging / FILE
    rdb.validate(source)
    data_dir.mkdir(parents=True, exist_ok=True)
    for existing in (data_dir / dbfilename, data_dir / appenddirname):
        if existing.exists():
            raise FileExistsError(f"{existing} exists: a restore seeds an empty data directory, it never overwrites")
    if not appendonly:
        _place(source, data_dir / dbfilename)
        return
    aof_dir = data_dir / appenddirname
    building = data_dir / f".{appenddirname}.partial"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    base = f"{appendfilename}.1.base.rdb"
    incr = f"{appendfilename}.1.incr.aof"
    _place(source, building / base)
    (building / incr).touch()
    manifest = building / f"{appendfilename}.manifest"
    manifest.write_text(f"file {base} seq 1 type b\nfile {incr} seq 1 type i\n")
    for path in (building / incr, manifest):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    rdb.fsync_dir(building)
    building.rename(aof_dir)  # the server sees the whole AOF or none
    rdb.fsync_dir(data_dir)


def _place(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.partial")
    with open(source, "rb") as reader, open(partial, "wb") as writer:
        shutil.copyfileobj(reader, writer, _COPY)
        writer.flush()
        os.fsync(writer.fileno())
    partial.rename(target)
    rdb.fsync_dir(target.parent)
