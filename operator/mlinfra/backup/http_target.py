"""The client of the volume server (:mod:`mlinfra.backup.volume_server`): a target on a PersistentVolumeClaim that
one pod mounts, used from every other pod and from the operator, through the stdlib's ``http.client``.

It behaves like the other targets: ``put`` is whole-or-nothing (an object of unknown size is streamed in
:data:`~mlinfra.backup.target.CHUNK` pieces with chunked encoding, and a source that fails midway breaks the
connection before the last chunk, so the server writes nothing), ``get`` raises
:class:`~mlinfra.backup.target.NotFound` for a missing key, ``list`` reads the server's NDJSON listing lazily.

Every call has a deadline: ``connect_timeout`` to connect, ``timeout`` on each read and write of the socket after
that. Connection failures (refused, reset, a name that does not resolve yet) are retried :data:`RETRIES` times for
the idempotent calls, and for ``put`` only when its source can be rewound; a timeout is not retried, so the
deadline holds. Errors are :class:`~mlinfra.backup.target.TargetError` naming ``where``, the operation, the key
and the reason (connection refused, timed out, token refused, volume full, the server's own message); never the
token.
"""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import BinaryIO

from mlinfra.backup.target import CHUNK, NotFound, ObjectInfo, TargetError, check_key

RETRIES = 2
BACKOFF = 0.2  # seconds before the first retry, doubled for each next one
_ERROR_BODY_MAX = 64 << 10
_LIST_READ = 64 << 10
# Failures where the request surely did not run to completion and trying again may succeed.
_TRANSIENT = (ConnectionError, socket.gaierror)


class _Retryable(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(cause)
        self.cause = cause


class HttpTarget:
    """The objects a volume server at ``host:port`` serves to holders of ``token``; ``where`` is what messages
    and :meth:`describe` call it (e.g. ``volume claim backups in namespace ml``)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        token: str,
        where: str,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.where = where
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._token = token

    def __repr__(self) -> str:
        return f"HttpTarget(host={self.host!r}, port={self.port}, where={self.where!r})"

    def describe(self) -> str:
        return self.where

    # --- plumbing ---

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(self.timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _mask(self, text: str) -> str:
        # The server never sends the token back; this guards against a proxy or a future change that would.
        return text.replace(self._token, "***") if len(self._token) >= 8 else text

    def _error(self, what: str, exc: BaseException) -> TargetError:
        return TargetError(self._mask(f"{what}: {self._reason(exc)}"))

    def _reason(self, exc: BaseException) -> str:
        at = f"{self.host}:{self.port}"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {self.host}: {exc.strerror or exc}"
        if isinstance(exc, TimeoutError):
            return f"timed out (no answer from {at} within the deadline)"
        if isinstance(exc, http.client.RemoteDisconnected):
            return f"{at} closed the connection without answering"
        if isinstance(exc, ConnectionRefusedError):
            return f"cannot connect to {at}: connection refused (is the volume server running?)"
        if isinstance(exc, http.client.IncompleteRead):
            return f"the connection to {at} broke off mid-response"
        if isinstance(exc, http.client.HTTPException):
            return f"{at} did not answer like a volume server ({type(exc).__name__})"
        if isinstance(exc, OSError):
            return f"connection to {at} failed: {exc.strerror or exc}"
        return str(exc)

    def _refused(self, what: str, response: http.client.HTTPResponse) -> TargetError:
        """The TargetError (NotFound for a missing object) for a response other than the expected one."""
        try:
            raw = response.read(_ERROR_BODY_MAX)
        except (OSError, http.client.HTTPException):
            raw = b""
        try:
            body = json.loads(raw)
            text, code = str(body["error"]), str(body.get("code", ""))
        except (ValueError, KeyError, TypeError):
            text, code = raw.decode("utf-8", "replace").strip()[:200] or response.reason, ""
        status = response.status
        if status == 401:
            reason = "token refused by the volume server (HTTP 401)"
        elif status == 507:
            reason = f"volume full (HTTP 507): {text}"
        else:
            reason = f"{text} (HTTP {status})"
        message = self._mask(f"{what}: {reason}")
        # Only the server's own "no such object": a 404 from something else (a wrong port) is not an answer.
        return NotFound(message) if status == 404 and code == "not_found" else TargetError(message)

    def _request(self, method: str, url: str, what: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request without a body and read the response's head, retrying connection failures."""
        for attempt in range(RETRIES + 1):
            conn: http.client.HTTPConnection | None = None
            try:
                conn = self._connect()
                conn.request(method, url, headers=self._auth())
                return conn, conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                if conn is not None:
                    conn.close()
                if isinstance(exc, _TRANSIENT) and attempt < RETRIES:
                    time.sleep(BACKOFF * 2**attempt)
                    continue
                raise self._error(what, exc) from None
        raise AssertionError("unreachable")

    # --- the Target interface ---

    def put(self, key: str, source: BinaryIO, size: int | None = None) -> None:
        url = _url(key)
        what = f"cannot write {key} to {self.where}"
        start = source.tell() if source.seekable() else None
        for attempt in range(RETRIES + 1):
            try:
                self._put_once(url, source, size, what)
                return
            except _Retryable as failed:
                if start is None or attempt == RETRIES:
                    raise self._error(what, failed.cause) from None
                source.seek(start)
                time.sleep(BACKOFF * 2**attempt)

    def _put_once(self, url: str, source: BinaryIO, size: int | None, what: str) -> None:
        try:
            conn = self._connect()
        except _TRANSIENT as exc:
            raise _Retryable(exc) from None
        except OSError as exc:
            raise self._error(what, exc) from None
        try:
            try:
                conn.putrequest("PUT", url, skip_accept_encoding=True)
                for name, value in self._auth().items():
                    conn.putheader(name, value)
                conn.putheader("Content-Type", "application/octet-stream")
                if size is None:
                    conn.putheader("Transfer-Encoding", "chunked")
                else:
                    conn.putheader("Content-Length", str(size))
                conn.endheaders()
                if size is None:
                    self._send_chunked(conn, source, what)
                else:
                    self._send_sized(conn, source, size, what)
            except OSError as sending:
                # The server may have refused the request early (a wrong token, a full volume) and closed:
                # its answer says more than the broken pipe.
                response = None if isinstance(sending, TimeoutError) else self._early_response(conn)
                if response is not None and response.status != 201:
                    raise self._refused(what, response) from None
                if isinstance(sending, ConnectionError):
                    raise _Retryable(sending) from None
                raise self._error(what, sending) from None
            try:
                response = conn.getresponse()
            except _TRANSIENT as exc:
                raise _Retryable(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                raise self._error(what, exc) from None
            if response.status != 201:
                raise self._refused(what, response)
        finally:
            conn.close()

    def _early_response(self, conn: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
        try:
            return conn.getresponse()
        except (OSError, http.client.HTTPException):
            return None

    def _read(self, source: BinaryIO, what: str) -> bytes:
        try:
            return source.read(CHUNK) or b""
        except OSError as exc:
            # The connection is closed without the end of the body, so the server writes no object.
            raise TargetError(self._mask(f"{what}: {exc.strerror or exc}")) from None

    def _send_chunked(self, conn: http.client.HTTPConnection, source: BinaryIO, what: str) -> None:
        while chunk := self._read(source, what):
            conn.send(b"%X\r\n" % len(chunk) + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")

    def _send_sized(self, conn: http.client.HTTPConnection, source: BinaryIO, size: int, what: str) -> None:
        # The server stores the object on its last announced byte, so each piece goes out only once the next
        # one is read: a source longer than ``size`` must fail before that byte is sent, not after.
        sent, piece = 0, self._read(source, what)
        while piece:
            after = self._read(source, what)
            total = sent + len(piece)
            if total > size or (after and total >= size):
                raise TargetError(f"{what}: the source holds more than the {size} bytes announced")
            conn.send(piece)
            sent, piece = total, after
        if sent != size:
            raise TargetError(f"{what}: the source ended after {sent} of the {size} bytes announced")

    def get(self, key: str, sink: BinaryIO) -> None:
        url = _url(key)
        what = f"cannot read {key} from {self.where}"
        conn, response = self._request("GET", url, what)
        try:
            if response.status != 200:
                error = self._refused(what, response)
                if isinstance(error, NotFound):
                    raise NotFound(f"{key} not found in {self.where}")
                raise error
            length = response.getheader("Content-Length")
            got = 0
            while chunk := response.read(CHUNK):
                sink.write(chunk)
                got += len(chunk)
            # http.client returns a short body without complaint; the announced length tells.
            if length is not None and got != int(length):
                raise TargetError(f"{what}: the connection broke off after {got} of {length} bytes")
        except (OSError, http.client.HTTPException) as exc:
            raise self._error(what, exc) from None
        finally:
            conn.close()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        what = f"cannot list {prefix}* in {self.where}"
        conn, response = self._request("GET", "/v1/list?" + urllib.parse.urlencode({"prefix": prefix}), what)
        try:
            if response.status != 200:
                raise self._refused(what, response)
            pending = b""
            # read1 raises IncompleteRead when the listing stops before its last chunk; readline would not.
            while data := response.read1(_LIST_READ):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield self._info(line, what)
            if pending.strip():
                raise TargetError(f"{what}: the listing ends in the middle of a line")
        except (OSError, http.client.HTTPException) as exc:
            raise self._error(what, exc) from None
        finally:
            conn.close()

    def _info(self, line: bytes, what: str) -> ObjectInfo:
        try:
            entry = json.loads(line)
            modified = datetime.datetime.fromisoformat(entry["modified"])
            if modified.tzinfo is None:
                modified = modified.replace(tzinfo=datetime.UTC)
            return ObjectInfo(str(entry["key"]), int(entry["size"]), modified)
        except (ValueError, KeyError, TypeError):
            raise TargetError(f"{what}: a malformed listing line from the server") from None

    def delete(self, key: str) -> None:
        what = f"cannot delete {key} from {self.where}"
        conn, response = self._request("DELETE", _url(key), what)
        try:
            if response.status != 204:
                raise self._refused(what, response)
        finally:
            conn.close()

    def check(self) -> None:
        """The server can write to its volume (it writes and removes a probe file) and takes the token."""
        what = f"cannot write to {self.where}"
        conn, response = self._request("GET", "/v1/check", what)
        try:
            if response.status != 204:
                raise self._refused(what, response)
        finally:
            conn.close()


def _url(key: str) -> str:
    return "/v1/objects/" + urllib.parse.quote(check_key(key), safe="/")
