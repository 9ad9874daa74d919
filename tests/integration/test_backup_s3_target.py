"""Backup targets against real storage: the S3 target against a real MinIO (plain and TLS), the volume target
against a real directory, and the same directory through the volume server. What the interface promises is
checked on all three (round trips, multipart streams of unknown size, prefixes, whole-or-nothing puts); what
only S3 has (buckets, credentials, policies, server-side encryption, TLS) on the S3 target, each failure by the
reason its message gives."""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import socket
import traceback
from pathlib import Path

import pytest
import urllib3

from mlinfra.backup.http_target import HttpTarget
from mlinfra.backup.s3 import S3Target
from mlinfra.backup.target import NotFound, Target, TargetError, VolumeTarget
from mlinfra.backup.volume_server import VolumeServer
from mlinfra.devenv import pki, procs, secretscan
from mlinfra.devenv.minio import MinioServer

pytestmark = pytest.mark.integration

MiB = 1 << 20
PART = 5 * MiB  # S3's smallest part: a 12 MiB stream becomes three parts


class Stream(io.RawIOBase):
    """A non-seekable source of ``size`` pseudo-random bytes that does not say how long it is (like a dump
    piped from a database); ``fail_after`` makes it raise, like a dump that dies halfway."""

    def __init__(self, size: int, seed: bytes, fail_after: int | None = None) -> None:
        self.left, self.seed, self.fail_after, self.sent = size, seed, fail_after, 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise OSError(5, "the dump died")
        n = self.left if n is None or n < 0 else min(n, self.left, MiB)
        block = hashlib.shake_256(self.seed + self.sent.to_bytes(8, "big")).digest(n) if n else b""
        self.left -= n
        self.sent += n
        self.digest.update(block)
        return block


def _read(target: Target, key: str) -> bytes:
    sink = io.BytesIO()
    target.get(key, sink)
    return sink.getvalue()


def _put(target: Target, key: str, data: bytes) -> None:
    target.put(key, io.BytesIO(data), len(data))


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.fixture(params=["volume", "s3", "served"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "volume":
        return VolumeTarget(tmp_path / "volume")
    if request.param == "served":  # the volume through its server, as pods on other nodes use it
        token = secrets.token_urlsafe(24)
        served = VolumeServer(tmp_path / "volume", token, host="127.0.0.1", port=0).start()
        request.addfinalizer(served.stop)
        return HttpTarget(host="127.0.0.1", port=served.port, token=token, where=f"served {tmp_path / 'volume'}")
    server: MinioServer = request.getfixturevalue("s3_server")
    return server.target(server.new_bucket(), prefix="backups/ns1", part_size=PART)


# --- the interface, on both targets ---


def test_put_get_list_delete_round_trip(target: Target) -> None:
    target.check()
    _put(target, "b1/manifest.json", b'{"ok": true}')
    _put(target, "b1/data.bin", b"\x00\x01" * 1000)

    assert _read(target, "b1/manifest.json") == b'{"ok": true}'
    listed = list(target.list("b1/"))
    assert [(o.key, o.size) for o in listed] == [("b1/data.bin", 2000), ("b1/manifest.json", 12)]
    assert all(o.modified.tzinfo is not None for o in listed)

    _put(target, "b1/manifest.json", b"{}")  # a put replaces the object whole
    assert _read(target, "b1/manifest.json") == b"{}"

    target.delete("b1/manifest.json")
    target.delete("b1/manifest.json")  # a missing key is not an error
    with pytest.raises(NotFound, match=r"manifest\.json"):
        _read(target, "b1/manifest.json")
    assert [o.key for o in target.list("")] == ["b1/data.bin"]


def test_a_large_stream_of_unknown_size_round_trips(target: Target, tmp_path: Path) -> None:
    source = Stream(12 * MiB + 12345, secrets.token_bytes(8))
    target.put("big/dump", source)  # no size: S3 uploads it in parts
    sink = io.BytesIO()
    target.get("big/dump", sink)
    assert hashlib.sha256(sink.getvalue()).hexdigest() == source.digest.hexdigest()
    assert [(o.key, o.size) for o in target.list("big/")] == [("big/dump", 12 * MiB + 12345)]
    if isinstance(target, S3Target):
        stat = target._client.stat_object(target.bucket, "backups/ns1/big/dump")
        assert (stat.etag or "").endswith("-3"), f"not a three-part multipart upload: etag {stat.etag}"


def test_a_put_that_fails_midway_leaves_no_object(target: Target) -> None:
    _put(target, "keep/me", b"old")
    source = Stream(12 * MiB, b"seed", fail_after=7 * MiB)
    with pytest.raises(TargetError, match="the dump died"):
        target.put("half/dump", source)
    with pytest.raises(TargetError, match="the dump died"):
        target.put("keep/me", Stream(12 * MiB, b"seed", fail_after=7 * MiB))
    assert [o.key for o in target.list("")] == ["keep/me"]
    assert _read(target, "keep/me") == b"old"
    with pytest.raises(NotFound):
        _read(target, "half/dump")


def test_list_filters_by_prefix_in_key_order(target: Target) -> None:
    for key in ("b/1", "a/2", "ab", "a/1", "a/sub/x"):
        _put(target, key, key.encode())
    assert [o.key for o in target.list("a/")] == ["a/1", "a/2", "a/sub/x"]
    assert [o.key for o in target.list("a")] == ["a/1", "a/2", "a/sub/x", "ab"]
    assert [o.key for o in target.list("")] == ["a/1", "a/2", "a/sub/x", "ab", "b/1"]
    assert list(target.list("zzz")) == []


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/./b", "a/.."])
def test_keys_that_could_escape_are_refused(target: Target, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        _put(target, key, b"x")
    with pytest.raises(ValueError, match="invalid object key"):
        _read(target, key)


# --- S3 only ---


def test_prefixes_in_one_bucket_do_not_see_each_other(s3_server: MinioServer) -> None:
    bucket = s3_server.new_bucket()
    mine = s3_server.target(bucket, prefix="team/a")
    theirs = s3_server.target(bucket, prefix="team/ab")  # a string prefix of mine: must still be separate
    _put(mine, "k", b"mine")
    _put(theirs, "k", b"theirs")
    _put(theirs, "other", b"theirs")

    assert [o.key for o in mine.list("")] == ["k"]
    mine.delete("k")
    mine.delete("other")
    assert _read(theirs, "k") == b"theirs"
    assert [o.key for o in theirs.list("")] == ["k", "other"]
    names = sorted(o.object_name or "" for o in s3_server.client().list_objects(bucket, recursive=True))
    assert names == ["team/ab/k", "team/ab/other"]


def test_a_missing_bucket_is_named_with_its_code(s3_server: MinioServer) -> None:
    target = s3_server.target(f"absent-{secrets.token_hex(4)}", prefix="p")
    for call in (
        target.check,
        lambda: _put(target, "k", b"x"),
        lambda: _read(target, "k"),
        lambda: list(target.list("")),
    ):
        with pytest.raises(TargetError) as caught:
            call()
        assert not isinstance(caught.value, NotFound)
        assert "NoSuchBucket" in str(caught.value)
        assert target.bucket in str(caught.value) and s3_server.endpoint in str(caught.value)


def test_a_wrong_secret_is_named_and_never_shown(s3_server: MinioServer) -> None:
    wrong = secrets.token_urlsafe(24)
    secretscan.track(wrong)  # nor may it reach a log
    target = S3Target(
        endpoint=s3_server.endpoint,
        bucket=s3_server.new_bucket(),
        access_key=s3_server.root.access_key,
        secret_key=wrong,
        secure=False,
    )
    with pytest.raises(TargetError, match="SignatureDoesNotMatch") as caught:
        target.check()
    assert wrong not in _trace(caught.value) and wrong not in repr(caught.value.args)
    assert wrong not in repr(target) and wrong not in target.describe()


def test_an_unknown_access_key_is_named(s3_server: MinioServer) -> None:
    target = S3Target(
        endpoint=s3_server.endpoint,
        bucket=s3_server.new_bucket(),
        access_key="nobody-" + secrets.token_hex(4),
        secret_key=secrets.token_urlsafe(24),
        secure=False,
    )
    with pytest.raises(TargetError, match="InvalidAccessKeyId"):
        target.check()


def test_a_key_limited_to_another_bucket_is_denied(s3_server: MinioServer) -> None:
    own, other = s3_server.new_bucket(), s3_server.new_bucket()
    user = s3_server.add_user(own)
    s3_server.target(own, prefix="p", user=user).check()  # the same key works where the policy allows
    _put(s3_server.target(other, prefix="p"), "k", b"root's")
    denied = s3_server.target(other, prefix="p", user=user)
    for call in (denied.check, lambda: _read(denied, "k"), lambda: list(denied.list(""))):
        with pytest.raises(TargetError, match="AccessDenied") as caught:
            call()
        assert other in str(caught.value)
        assert user.secret_key not in _trace(caught.value)


def _on_disk(server: MinioServer, needle: bytes) -> bool:
    return any(p.is_file() and needle in p.read_bytes() for p in (server.workdir / "data").rglob("*"))


def test_sse_s3_objects_are_stored_encrypted(s3_server: MinioServer) -> None:
    bucket = s3_server.new_bucket()
    needle = b"plaintext-marker-" + secrets.token_hex(8).encode()
    payload = needle * 4000  # ~140 KB: more than MinIO keeps inline in its metadata
    sealed = s3_server.target(bucket, prefix="enc", sse="s3")
    _put(sealed, "obj", payload)
    sealed.put("streamed", io.BytesIO(payload))

    for key in ("obj", "streamed"):
        stat = s3_server.client().stat_object(bucket, f"enc/{key}")
        assert stat.metadata.get("x-amz-server-side-encryption") == "AES256"
        assert _read(sealed, key) == payload
    assert not _on_disk(s3_server, needle)

    # The control: the same bytes unencrypted are found, so the search above could have found them.
    _put(s3_server.target(bucket, prefix="plain"), "obj", payload)
    assert "x-amz-server-side-encryption" not in s3_server.client().stat_object(bucket, "plain/obj").metadata
    assert _on_disk(s3_server, needle)


def test_an_unreachable_endpoint_fails_fast_with_the_reason(s3_server: MinioServer) -> None:
    port = procs.free_port()  # nothing listens there
    target = S3Target(endpoint=f"127.0.0.1:{port}", bucket="b-x", access_key="a", secret_key="s", secure=False)
    with pytest.raises(TargetError, match="Connection refused") as caught:
        target.check()
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_a_server_that_never_answers_hits_the_deadline() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes connections; nobody ever reads or answers
        port = silent.getsockname()[1]
        target = S3Target(
            endpoint=f"127.0.0.1:{port}",
            bucket="b-x",
            access_key="a",
            secret_key="s",
            secure=False,
            connect_timeout=1,
            read_timeout=1,
        )
        with pytest.raises(TargetError, match="timed out"):
            _read(target, "k")


# --- TLS ---


def test_tls_with_the_ca_round_trips(s3_server_tls: MinioServer) -> None:
    target = s3_server_tls.target(s3_server_tls.new_bucket(), prefix="p")
    assert target.describe().endswith(f"https://{s3_server_tls.endpoint}")
    target.check()
    _put(target, "k", b"over tls")
    assert _read(target, "k") == b"over tls"


def test_tls_without_the_ca_fails_verification(s3_server_tls: MinioServer, tmp_path: Path) -> None:
    bucket = s3_server_tls.new_bucket()
    with pytest.raises(TargetError, match="TLS verification failed"):
        s3_server_tls.target(bucket, ca=None).check()
    # Nor does another CA vouch for it.
    other_ca = S3Target(
        endpoint=s3_server_tls.endpoint,
        bucket=bucket,
        access_key=s3_server_tls.root.access_key,
        secret_key=s3_server_tls.root.secret_key,
        ca=pki.create_pki(tmp_path / "other-ca", clients={}).ca.cert.read_bytes(),
    )
    with pytest.raises(TargetError, match="TLS verification failed"):
        other_ca.check()
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
        s3_server_tls.target(bucket, ca=None, insecure=True).check()  # explicitly unverified: works


def test_sse_c_needs_the_key_to_read(s3_server_tls: MinioServer) -> None:
    bucket = s3_server_tls.new_bucket()
    key = os.urandom(32)
    sealed = s3_server_tls.target(bucket, prefix="c", sse="c", sse_key=key)
    sealed.put("obj", Stream(6 * MiB, b"c"))  # multipart: every part carries the key
    _put(sealed, "small", b"secret data")
    assert _read(sealed, "small") == b"secret data"
    assert len(_read(sealed, "obj")) == 6 * MiB

    for reader in (
        s3_server_tls.target(bucket, prefix="c"),
        s3_server_tls.target(bucket, prefix="c", sse="c", sse_key=os.urandom(32)),
    ):
        with pytest.raises(TargetError) as caught:
            _read(reader, "small")
        assert not isinstance(caught.value, NotFound)
        assert key.hex() not in _trace(caught.value)


def test_sse_c_is_refused_without_tls(s3_server: MinioServer) -> None:
    with pytest.raises(TargetError, match="needs TLS"):
        s3_server.target(s3_server.new_bucket(), sse="c", sse_key=os.urandom(32))
