"""The served volume target over real loopback HTTP: a VolumeServer on a temporary directory and the HttpTarget
client. What the client promises (round trips, streams of unknown size, NotFound, the reasons of its errors, its
deadlines) and what the server enforces by itself, against raw requests that bypass the client (the token,
key checks, bodies cut short)."""

from __future__ import annotations

import errno
import functools
import hashlib
import http.client
import http.server
import io
import json
import logging
import random
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlinfra.backup.http_target import HttpTarget
from mlinfra.backup.target import NotFound, TargetError
from mlinfra.backup.volume_server import VolumeServer, volume_full

pytestmark = pytest.mark.unit

MiB = 1 << 20
WHERE = "volume claim backups in namespace ml"


class Stream(io.RawIOBase):
    """A non-seekable source of ``size`` pseudo-random bytes that does not say how long it is (like a dump piped
    from a database)."""

    def __init__(self, size: int, seed: int) -> None:
        self.left, self.random = size, random.Random(seed)
        self.digest = hashlib.sha256()
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.largest_read = max(self.largest_read, n)
        block = self.random.randbytes(n)
        self.left -= n
        self.digest.update(block)
        return block


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def server(tmp_path: Path, token: str) -> Iterator[VolumeServer]:
    with VolumeServer(tmp_path / "volume", token, host="127.0.0.1", port=0) as served:
        yield served


def _client(server: VolumeServer, token: str, **options: float) -> HttpTarget:
    return HttpTarget(host="127.0.0.1", port=server.port, token=token, where=WHERE, **options)


@pytest.fixture
def target(server: VolumeServer, token: str) -> HttpTarget:
    return _client(server, token)


def _read(target: HttpTarget, key: str) -> bytes:
    sink = io.BytesIO()
    target.get(key, sink)
    return sink.getvalue()


def _raw(server: VolumeServer, method: str, path: str, token: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _no_temporaries(root: Path) -> bool:
    """Waits (with a deadline) until the server has cleaned up after an abandoned upload."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not any(p.name.startswith(".tmp-") for p in root.rglob("*")):
            return True
        time.sleep(0.02)
    return False


def test_round_trip(target: HttpTarget) -> None:
    target.check()
    target.put("b1/manifest.json", io.BytesIO(b'{"ok": true}'), 12)
    target.put("b1/data.bin", io.BytesIO(b"\x00\x01" * 1000), 2000)
    target.put("b2/a key with spaces & %", io.BytesIO(b"odd"), 3)

    assert _read(target, "b1/manifest.json") == b'{"ok": true}'
    assert _read(target, "b2/a key with spaces & %") == b"odd"
    listed = list(target.list("b1/"))
    assert [(o.key, o.size) for o in listed] == [("b1/data.bin", 2000), ("b1/manifest.json", 12)]
    assert all(o.modified.tzinfo is not None for o in listed)
    assert [o.key for o in target.list("")] == ["b1/data.bin", "b1/manifest.json", "b2/a key with spaces & %"]

    target.put("b1/manifest.json", io.BytesIO(b"{}"), 2)  # a put replaces the object whole
    assert _read(target, "b1/manifest.json") == b"{}"

    target.delete("b1/manifest.json")
    target.delete("b1/manifest.json")  # a missing key is not an error
    assert [o.key for o in target.list("b1")] == ["b1/data.bin"]
    assert target.describe() == WHERE


def test_a_stream_of_unknown_size_goes_up_in_bounded_chunks(target: HttpTarget) -> None:
    source = Stream(20 * MiB + 777, seed=7)
    target.put("big/dump", source)
    assert source.largest_read <= MiB  # read piece by piece, never whole
    sink = io.BytesIO()
    target.get("big/dump", sink)
    assert hashlib.sha256(sink.getvalue()).hexdigest() == source.digest.hexdigest()
    assert [(o.key, o.size) for o in target.list("big/")] == [("big/dump", 20 * MiB + 777)]


@pytest.mark.parametrize("data", [b"short", b"far too long for it"], ids=["shorter", "longer"])
def test_a_source_unlike_its_announced_size_writes_nothing(
    target: HttpTarget, server: VolumeServer, data: bytes
) -> None:
    target.put("k", io.BytesIO(b"old"), 3)
    with pytest.raises(TargetError, match=r"cannot write k to volume claim .*: the source .* 10 bytes announced"):
        target.put("k", io.BytesIO(data), 10)
    assert _read(target, "k") == b"old"
    assert _no_temporaries(server.root)


def test_a_missing_key_is_not_found(target: HttpTarget) -> None:
    with pytest.raises(NotFound, match=f"nothing/here not found in {WHERE}"):
        _read(target, "nothing/here")


def test_a_wrong_token_is_refused_and_never_shown(
    server: VolumeServer, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mlinfra.backup.volume_server")
    wrong = secrets.token_urlsafe(24)
    intruder = _client(server, wrong)
    failures = []
    for attempt in (
        intruder.check,
        lambda: _read(intruder, "k"),
        lambda: list(intruder.list("")),
        lambda: intruder.delete("k"),
        lambda: intruder.put("k", io.BytesIO(b"x"), 1),
        lambda: intruder.put("big", Stream(8 * MiB, seed=1)),  # refused while its body is still coming
    ):
        with pytest.raises(TargetError, match=f"{WHERE}: token refused") as caught:
            attempt()
        failures.append(caught.value)
    assert not isinstance(failures[1], NotFound)
    assert list(server.root.rglob("*")) == []
    shown = "".join(_trace(e) for e in failures) + repr(intruder) + repr(server) + caplog.text
    assert wrong not in shown and token not in shown
    assert "401" in caplog.text  # the access log has the refusals, without the header


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize(
    "path", ["/v1/objects/a/../../escape", "/v1/objects/%2e%2e/escape", "/v1/objects//abs", "/v1/objects/"]
)
def test_the_server_refuses_keys_that_could_escape(server: VolumeServer, token: str, tmp_path: Path, path: str) -> None:
    for method in ("PUT", "GET", "DELETE"):
        status, body = _raw(server, method, path, token)
        assert status == 400, (method, status, body)
        assert json.loads(body)["code"] == "invalid_key"
        assert "invalid object key" in json.loads(body)["error"]
    assert not (tmp_path / "escape").exists()


def test_the_client_refuses_keys_that_could_escape(target: HttpTarget) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        target.put("../up", io.BytesIO(b"x"), 1)
    with pytest.raises(ValueError, match="invalid object key"):
        _read(target, "a/./b")


@pytest.mark.parametrize(
    ("framing", "partial"),
    [("Content-Length: 1000", b"0123456789"), ("Transfer-Encoding: chunked", b"3e8\r\n0123456789")],
    ids=["content-length", "chunked"],
)
def test_a_client_killed_mid_put_leaves_no_object(
    server: VolumeServer, target: HttpTarget, token: str, framing: str, partial: bytes
) -> None:
    target.put("cut/obj", io.BytesIO(b"old"), 3)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        head = f"PUT /v1/objects/cut/obj HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{framing}\r\n\r\n"
        raw.sendall(head.encode() + partial)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as other:
            other.sendall(f"PUT /v1/objects/cut/new HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n".encode())
            other.sendall(f"{framing}\r\n\r\n".encode() + partial)
    assert _no_temporaries(server.root)
    assert _read(target, "cut/obj") == b"old"
    with pytest.raises(NotFound):
        _read(target, "cut/new")
    assert [(o.key, o.size) for o in target.list("")] == [("cut/obj", 3)]


def test_a_malformed_chunked_body_is_refused(server: VolumeServer, target: HttpTarget, token: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        head = "PUT /v1/objects/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token
        raw.sendall(f"{head}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".encode())
        answer = b""
        while data := raw.recv(4096):  # the server closes after its answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"malformed chunk size" in answer
    with pytest.raises(NotFound):
        _read(target, "k")


def test_an_unreachable_server_fails_fast_with_the_reason(token: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    target = HttpTarget(host="127.0.0.1", port=port, token=token, where=WHERE)
    with pytest.raises(TargetError, match="connection refused") as caught:
        target.check()
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert WHERE in str(caught.value)
    with pytest.raises(TargetError, match=r"cannot write k to .*refused"):
        target.put("k", Stream(10, seed=2))


def test_a_server_that_never_answers_hits_the_deadline(token: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes connections; nobody ever reads or answers
        port = silent.getsockname()[1]
        target = HttpTarget(host="127.0.0.1", port=port, token=token, where=WHERE, timeout=0.5, connect_timeout=0.5)
        with pytest.raises(TargetError, match=f"cannot read k from {WHERE}: timed out"):
            _read(target, "k")
        with pytest.raises(TargetError, match="timed out"):
            list(target.list(""))


def test_healthz_needs_no_token_and_the_api_does(server: VolumeServer, token: str) -> None:
    assert _raw(server, "GET", "/healthz", None) == (200, b"ok\n")
    for path in ("/v1/check", "/v1/list?prefix=", "/v1/objects/k"):
        status, body = _raw(server, "GET", path, None)
        assert status == 401
        assert json.loads(body)["code"] == "unauthorized"
    assert _raw(server, "GET", "/v1/check", token)[0] == 204
    assert _raw(server, "GET", "/v1/nothing", token)[0] == 404


def test_a_404_from_something_else_is_no_not_found(tmp_path: Path, token: str) -> None:
    # Another web server at the address (a wrong port) answers 404 too: that must not read as "the backup is gone".
    empty = tmp_path / "www"
    empty.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(empty))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as other:
        threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            target = HttpTarget(host="127.0.0.1", port=other.server_address[1], token=token, where=WHERE)
            with pytest.raises(TargetError, match=r"\(HTTP 404\)") as caught:
                _read(target, "k")
            assert not isinstance(caught.value, NotFound)
        finally:
            other.shutdown()


def test_an_unwritable_volume_fails_the_check(tmp_path: Path, token: str) -> None:
    root = tmp_path / "not-a-directory"
    root.write_bytes(b"")  # mkdir fails whoever runs the test, root included
    with VolumeServer(root, token, host="127.0.0.1", port=0) as server:
        target = _client(server, token)
        with pytest.raises(TargetError, match=rf"cannot write to {WHERE}: .*(HTTP 503)") as caught:
            target.check()
        assert "File exists" in str(caught.value) or "Not a directory" in str(caught.value)
        with pytest.raises(TargetError, match=r"cannot write k/x to .*\(HTTP 500\)"):
            target.put("k/x", io.BytesIO(b"x"), 1)


def test_a_full_volume_is_told_apart() -> None:
    # VolumeTarget raises its TargetError "from None": the OSError is still its context.
    def failing(code: int) -> TargetError:
        try:
            try:
                raise OSError(code, "disk trouble")
            except OSError:
                raise TargetError("cannot write k to volume:/v: disk trouble") from None
        except TargetError as exc:
            return exc

    assert volume_full(failing(errno.ENOSPC))
    assert volume_full(failing(errno.EDQUOT))
    assert not volume_full(failing(errno.EIO))
    assert not volume_full(TargetError("no context"))
