"""The volume server: one small pod serves a PersistentVolumeClaim to every node as a tiny HTTP object API.

Backup Jobs, WAL archivers, restore init containers and the operator itself run anywhere in the cluster, while a
ReadWriteOnce claim can be mounted on one node only; so one pod mounts it and the others use
:class:`~mlinfra.backup.http_target.HttpTarget`. Every object semantic (whole-or-nothing puts through a ``.tmp-``
file and a rename, listings that hide those files, key checks) is :class:`~mlinfra.backup.target.VolumeTarget`'s;
this module only carries it over HTTP.

API (``/v1``, each request with ``Authorization: Bearer <token>``; one request per connection)::

    PUT    /v1/objects/<key>     body: Content-Length or chunked        201
    GET    /v1/objects/<key>     200 + Content-Length + body; 404 when missing
    DELETE /v1/objects/<key>     204, a missing key too
    GET    /v1/list?prefix=<p>   200, chunked NDJSON {"key", "size", "modified"} in key order
    GET    /v1/check             204 when the volume takes writes, 503 with the reason otherwise
    GET    /healthz              200 without a token (the readiness probe)

Errors are JSON ``{"error": ..., "code": ...}``: 400 for an invalid key or body, 401 for a missing or wrong
token, 507 when the volume is full. A body that ends early (a client killed mid-upload, an idle connection
reaching the deadline) fails the put, so no object is written under the key.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import io
import json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast

from mlinfra.backup.target import CHUNK, ObjectInfo, TargetError, VolumeTarget, check_key

log = logging.getLogger(__name__)

OBJECTS = "/v1/objects/"
IDLE_TIMEOUT = 120.0
_MAX_LINE = 1024  # chunk-size and trailer lines: a peer sending endless lines must not grow memory
_LIST_BATCH = 64 << 10
# After refusing a request whose body is still coming, read a little of it before closing: closing with unread
# data makes the kernel reset the connection, and the client could lose the error response in the reset.
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 1.0


class _BodyError(Exception):
    """The request body was malformed or ended early; the put must fail (``VolumeTarget.put`` then removes its
    temporary file). Not an OSError, so ``VolumeTarget.put`` lets it through instead of wrapping it."""


class _LengthBody:
    """Exactly ``length`` bytes of the request; EOF before them is an error, never a short object."""

    def __init__(self, rfile: io.BufferedIOBase, length: int) -> None:
        self.rfile, self.left, self.received = rfile, length, 0

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        if n == 0:
            return b""
        try:
            data = self.rfile.read(n)
        except OSError as exc:
            raise _BodyError(f"the client stopped sending: {exc.strerror or exc}") from None
        if len(data) < n:
            raise _BodyError(f"the body ended after {self.received + len(data)} of the bytes announced")
        self.left -= len(data)
        self.received += len(data)
        return data


class _ChunkedBody:
    """A ``Transfer-Encoding: chunked`` body, decoded: EOF before the last (empty) chunk is an error."""

    def __init__(self, rfile: io.BufferedIOBase) -> None:
        self.rfile, self.left, self.done, self.received = rfile, 0, False, 0

    def _line(self) -> bytes:
        try:
            line: bytes = self.rfile.readline(_MAX_LINE + 1)
        except OSError as exc:
            raise _BodyError(f"the client stopped sending: {exc.strerror or exc}") from None
        if not line.endswith(b"\n"):
            raise _BodyError("the chunked body ended early" if len(line) <= _MAX_LINE else "chunk line too long")
        return line

    def _exact(self, n: int) -> bytes:
        try:
            data: bytes = self.rfile.read(n)
        except OSError as exc:
            raise _BodyError(f"the client stopped sending: {exc.strerror or exc}") from None
        if len(data) < n:
            raise _BodyError(f"the chunked body ended early, after {self.received + len(data)} bytes")
        return data

    def read(self, n: int = -1) -> bytes:
        if self.done:
            return b""
        if self.left == 0:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BodyError("malformed chunk size in the chunked body") from None
            if size < 0:
                raise _BodyError("malformed chunk size in the chunked body")
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):  # trailers, unused
                    pass
                self.done = True
                return b""
            self.left = size
        data = self._exact(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        self.received += len(data)
        if self.left == 0 and self._exact(2) != b"\r\n":
            raise _BodyError("a chunk of the chunked body does not end with CRLF")
        return data


def volume_full(error: TargetError) -> bool:
    """Whether ``error`` (from :class:`VolumeTarget`, which raises it ``from None``) came from a full volume or
    an exhausted quota: its suppressed context is still the OSError."""
    context = error.__context__
    return isinstance(context, OSError) and context.errno in (errno.ENOSPC, errno.EDQUOT)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], volume: VolumeTarget, token: str, idle_timeout: float) -> None:
        self.volume = volume
        self.bearer = f"Bearer {token}".encode()
        self.idle_timeout = idle_timeout
        self.in_flight = 0
        self.idle = threading.Condition()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can stall startup in a pod.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.idle:
            self.in_flight += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.idle:
                self.in_flight -= 1
                self.idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: self.in_flight == 0, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # a client that went away mid-response: routine, no traceback
            log.info("connection from %s broken: %s", client_address[0], exc.strerror or exc)
        else:
            log.exception("request from %s failed", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mlinfra-volume/1"
    sys_version = ""
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        # The socket's timeout bounds every read and write, so a stuck client cannot hold a thread for ever.
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)
        self.status = 0
        self.moved = 0
        self.body_pending = False

    # --- logging: one access line per request at INFO, never a header ---

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.status = code if isinstance(code, int) else 0

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s: %s", self.client_address[0], format % args)

    def log_error(self, format: str, *args: Any) -> None:
        log.warning("%s: %s", self.client_address[0], format % args)

    def _access(self) -> None:
        # Probes come every few seconds: their lines would drown the requests that matter.
        level = logging.DEBUG if self.path == "/healthz" else logging.INFO
        log.log(level, "%s %s %s %d %d", self.client_address[0], self.command, self.path, self.status, self.moved)

    # --- responses ---

    def _reply(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="mlinfra-volume"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, json.dumps({"error": message, "code": code}).encode() + b"\n")
        if self.body_pending:
            self._drain()

    def _drain(self) -> None:
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(_DRAIN_SECONDS)
            deadline, read = time.monotonic() + _DRAIN_SECONDS, 0
            while read < _DRAIN_BYTES and time.monotonic() < deadline:
                data = self.connection.recv(CHUNK)
                if not data:
                    break
                read += len(data)
        except OSError:
            pass

    # --- routing ---

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self.server.bearer)

    def _route(self) -> tuple[str, str] | None:
        """(what, argument) of a /v1 request after the token check, or None once it was answered."""
        path, _, query = self.path.partition("?")
        if not self._authorized():
            self._error(HTTPStatus.UNAUTHORIZED, "unauthorized", "missing or wrong bearer token")
            return None
        if path.startswith(OBJECTS):
            try:
                key = check_key(urllib.parse.unquote(path[len(OBJECTS) :], errors="strict"))
            except (ValueError, UnicodeDecodeError) as exc:
                self._error(HTTPStatus.BAD_REQUEST, "invalid_key", str(exc))
                return None
            return "object", key
        if path == "/v1/list":
            prefix = urllib.parse.parse_qs(query, keep_blank_values=True).get("prefix", [""])[0]
            return "list", prefix
        if path == "/v1/check":
            return "check", ""
        self._error(HTTPStatus.NOT_FOUND, "no_route", f"no such endpoint: {self.command} {path}")
        return None

    def do_GET(self) -> None:
        try:
            if self.path == "/healthz":
                self._reply(HTTPStatus.OK, b"ok\n", "text/plain")
                return
            route = self._route()
            if route is None:
                return
            what, arg = route
            if what == "object":
                self._get(arg)
            elif what == "list":
                self._list(arg)
            else:
                self._check()
        finally:
            self._access()

    def do_PUT(self) -> None:
        self.body_pending = True
        try:
            route = self._route()
            if route is None:
                return
            if route[0] != "object":
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"PUT is for {OBJECTS}<key>")
                return
            self._put(route[1])
        finally:
            self._access()

    def do_DELETE(self) -> None:
        try:
            route = self._route()
            if route is None:
                return
            if route[0] != "object":
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"DELETE is for {OBJECTS}<key>")
                return
            try:
                self.server.volume.delete(route[1])
            except TargetError as exc:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "io_error", str(exc))
                return
            self._reply(HTTPStatus.NO_CONTENT)
        finally:
            self._access()

    # --- the operations, each VolumeTarget's ---

    def _body(self) -> _LengthBody | _ChunkedBody | None:
        encoding = self.headers.get("Transfer-Encoding", "").strip().lower()
        if encoding == "chunked":
            return _ChunkedBody(self.rfile)
        if encoding:
            self._error(HTTPStatus.NOT_IMPLEMENTED, "bad_body", f"unsupported Transfer-Encoding {encoding!r}")
            return None
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(HTTPStatus.LENGTH_REQUIRED, "bad_body", "a body needs Content-Length or chunked encoding")
            return None
        if not length.strip().isdigit():
            self._error(HTTPStatus.BAD_REQUEST, "bad_body", f"invalid Content-Length {length!r}")
            return None
        return _LengthBody(self.rfile, int(length))

    def _put(self, key: str) -> None:
        body = self._body()
        if body is None:
            return
        try:
            self.server.volume.put(key, cast(BinaryIO, body))  # VolumeTarget.put only calls read()
        except _BodyError as exc:
            self.moved = body.received
            log.warning("put %s abandoned, no object written: %s", key, exc)
            with contextlib.suppress(OSError):  # the client is usually gone already
                self._error(HTTPStatus.BAD_REQUEST, "incomplete_body", f"{exc}; no object written")
            return
        except TargetError as exc:
            self.moved = body.received
            if volume_full(exc):
                log.error("volume full: put %s failed (%s)", key, exc)
                self._error(HTTPStatus.INSUFFICIENT_STORAGE, "volume_full", f"volume full, {key} not written: {exc}")
            else:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "io_error", str(exc))
            return
        except ValueError as exc:  # a key the filesystem refuses (an embedded NUL)
            self._error(HTTPStatus.BAD_REQUEST, "invalid_key", str(exc))
            return
        self.body_pending = False
        self.moved = body.received
        self._reply(HTTPStatus.CREATED)

    def _get(self, key: str) -> None:
        # Opened here rather than through VolumeTarget.get, which streams without telling the size first.
        path = self.server.volume.root / key
        try:
            src = path.open("rb")
        except FileNotFoundError:
            self._error(HTTPStatus.NOT_FOUND, "not_found", f"{key} not found")
            return
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "io_error", f"cannot read {key}: {reason}")
            return
        with src:
            size = os.fstat(src.fileno()).st_size  # of the file opened: a concurrent replace does not change it
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            while self.moved < size and (chunk := src.read(min(CHUNK, size - self.moved))):
                self.wfile.write(chunk)
                self.moved += len(chunk)

    def _list(self, prefix: str) -> None:
        objects = self.server.volume.list(prefix)
        try:
            first = next(objects, None)
        except OSError as exc:  # a file deleted between the walk and its stat, an unreadable directory
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "io_error", f"cannot list {prefix}*: {exc.strerror or exc}")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        # An error past this point breaks the connection before the last chunk: the client sees a cut listing.
        batch = bytearray()
        for obj in _chain(first, objects):
            batch += _ndjson(obj)
            if len(batch) >= _LIST_BATCH:
                self._chunk(bytes(batch))
                batch.clear()
        if batch:
            self._chunk(bytes(batch))
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.moved += len(data)

    def _check(self) -> None:
        try:
            self.server.volume.check()
        except TargetError as exc:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "unwritable", str(exc))
            return
        self._reply(HTTPStatus.NO_CONTENT)


def _chain(first: ObjectInfo | None, rest: Iterator[ObjectInfo]) -> Iterator[ObjectInfo]:
    if first is not None:
        yield first
        yield from rest


def _ndjson(obj: ObjectInfo) -> bytes:
    line = {"key": obj.key, "size": obj.size, "modified": obj.modified.isoformat()}
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


class VolumeServer:
    """Serves the directory ``root`` (the mounted claim) on ``host:port`` to holders of ``token``.

    :meth:`start` binds (port 0 picks a free port, then in :attr:`port`) and serves from daemon threads;
    :meth:`serve_forever` blocks until :meth:`stop` (from a SIGTERM handler) or Ctrl-C.
    """

    def __init__(
        self,
        root: Path,
        token: str,
        host: str = "0.0.0.0",  # noqa: S104 (in its pod, the Service must reach it)
        port: int = 8080,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        if not token:
            raise ValueError("a volume server needs a token: without one, anyone could read the backups")
        self.root = root
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self._token = token
        self._server: _Server | None = None
        self._stopped = threading.Event()

    def __repr__(self) -> str:
        return f"VolumeServer(root={str(self.root)!r}, host={self.host!r}, port={self.port})"

    def start(self) -> VolumeServer:
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), VolumeTarget(self.root), self._token, self.idle_timeout)
        self.port = int(server.server_address[1])
        self._server = server
        self._stopped.clear()
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"volume-server-{self.port}", daemon=True
        ).start()
        log.info("serving %s on %s:%d", self.root, self.host, self.port)
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, then give requests in flight up to ``grace`` seconds to finish (an upload cut
        after that leaves no object, only its hidden temporary file)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if not server.wait_idle(grace):
            log.warning("stopped with requests still in flight after %.0f s", grace)
        self._stopped.set()

    def serve_forever(self) -> None:
        self.start()
        try:
            self._stopped.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> VolumeServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
