"""Sealed objects: round trips, and every way a stored object can be altered is caught with the right error."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
import tracemalloc
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from mlinfra.backup import sealed
from mlinfra.backup.sealed import (
    ChecksumMismatch,
    DecryptionFailed,
    EncryptionKey,
    SealError,
    seal,
    unseal,
)
from mlinfra.backup.target import NotFound, ObjectInfo

KEY = EncryptionKey("backup-key/key", bytes(range(32)))
OTHER = EncryptionKey("backup-key/key", bytes(range(1, 33)))
SMALL = 64  # a small chunk size: many frames from a few hundred bytes


class MemoryTarget:
    """An in-memory target (a dict), enough for the sealed format's unit tests."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def describe(self) -> str:
        return "memory"

    def put(self, key: str, source: BinaryIO, size: int | None = None) -> None:
        buf = bytearray()
        while chunk := source.read(1 << 20):
            buf += chunk
        self.objects[key] = bytes(buf)

    def get(self, key: str, sink: BinaryIO) -> None:
        if key not in self.objects:
            raise NotFound(key)
        data = self.objects[key]
        for i in range(0, len(data), 7919):  # odd pieces: frames and header split across writes
            sink.write(data[i : i + 7919])

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def check(self) -> None:
        pass


def _frames(stored: bytes) -> tuple[bytes, list[bytes]]:
    """Split a stored object into its header and its raw frames (type, length, payload)."""
    kid_len = stored[sealed._FIXED.size - 1]
    hlen = sealed._FIXED.size + kid_len
    frames, pos = [], hlen
    while pos < len(stored):
        _kind, length = struct.unpack_from(">BI", stored, pos)
        frames.append(stored[pos : pos + 5 + length])
        pos += 5 + length
    return stored[:hlen], frames


def _read(target: MemoryTarget, key: EncryptionKey | None, expect: str | None = None) -> bytes:
    out = io.BytesIO()
    unseal(target, "o", out, key, expect)
    return out.getvalue()


@pytest.mark.parametrize("enc", [None, KEY], ids=["plain", "encrypted"])
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zlib"])
@pytest.mark.parametrize("size", [0, 1, SMALL - 1, SMALL, SMALL + 1, 10 * SMALL + 3])
def test_round_trip(enc: EncryptionKey | None, compress: bool, size: int) -> None:
    data = os.urandom(size // 2) + bytes(size - size // 2)
    t = MemoryTarget()
    obj = seal(t, "o", io.BytesIO(data), enc, compress=compress, chunk=SMALL)
    assert obj.size == size
    assert obj.sha256 == hashlib.sha256(data).hexdigest()
    assert obj.stored_size == len(t.objects["o"])
    assert obj.encrypted is (enc is not None)
    assert obj.key_id == (enc.key_id if enc else None)
    out = io.BytesIO()
    back = unseal(t, "o", out, enc, obj.sha256)
    assert out.getvalue() == data
    assert back == obj


def test_the_default_chunk_size() -> None:
    # Three default chunks and a bit: frames at the real size.
    data = os.urandom(3 * sealed.CHUNK + 5)
    t = MemoryTarget()
    obj = seal(t, "o", io.BytesIO(data), KEY)
    assert _read(t, KEY, obj.sha256) == data


def test_encrypted_bytes_do_not_hold_the_plaintext_and_differ_each_time() -> None:
    data = b"the secret feature row " * 100
    t = MemoryTarget()
    seal(t, "a", io.BytesIO(data), KEY, chunk=SMALL)
    seal(t, "b", io.BytesIO(data), KEY, chunk=SMALL)
    assert b"secret feature" not in t.objects["a"]
    assert t.objects["a"] != t.objects["b"]  # a fresh salt, so a fresh data key, per object
    # The key id is recorded in the header; the key is not.
    assert KEY.key_id.encode() in t.objects["a"]
    assert KEY.secret not in t.objects["a"]


def test_every_altered_byte_of_an_encrypted_object_fails() -> None:
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(os.urandom(3 * SMALL + 10)), KEY, chunk=SMALL)
    stored = t.objects["o"]
    header, _ = _frames(stored)
    for i in range(len(stored)):
        t.objects["o"] = stored[:i] + bytes([stored[i] ^ 0x01]) + stored[i + 1 :]
        # In the header a flipped byte can make it "not ours" (magic, version) or "plain" (the flag): a
        # SealError either way. In the frames only authentication can fail.
        with pytest.raises(DecryptionFailed if i >= len(header) else SealError):
            _read(t, KEY)


def test_every_altered_byte_of_a_plain_object_fails() -> None:
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(os.urandom(3 * SMALL + 10)), None, chunk=SMALL)
    stored = t.objects["o"]
    for i in range(len(stored)):
        t.objects["o"] = stored[:i] + bytes([stored[i] ^ 0x80]) + stored[i + 1 :]
        with pytest.raises(SealError):
            _read(t, None)
    # A changed data byte in particular is a checksum mismatch.
    header, _ = _frames(stored)
    pos = len(header) + 5 + 3
    t.objects["o"] = stored[:pos] + bytes([stored[pos] ^ 0x80]) + stored[pos + 1 :]
    with pytest.raises(ChecksumMismatch, match="not the one sealed"):
        _read(t, None)


@pytest.mark.parametrize("enc", [None, KEY], ids=["plain", "encrypted"])
def test_every_truncation_fails(enc: EncryptionKey | None) -> None:
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(os.urandom(3 * SMALL + 10)), enc, chunk=SMALL)
    stored = t.objects["o"]
    header, _ = _frames(stored)
    for n in range(len(stored)):
        t.objects["o"] = stored[:n]
        expected: type[SealError] = DecryptionFailed if enc and n >= len(header) else ChecksumMismatch
        with pytest.raises(expected):
            _read(t, enc)


def test_dropping_the_last_data_frames_with_the_end_fails_even_at_a_frame_boundary() -> None:
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(os.urandom(4 * SMALL)), KEY, chunk=SMALL)
    header, frames = _frames(t.objects["o"])
    t.objects["o"] = header + b"".join(frames[:2])
    with pytest.raises(DecryptionFailed, match="truncated"):
        _read(t, KEY)


@pytest.mark.parametrize("enc", [None, KEY], ids=["plain", "encrypted"])
def test_reordered_dropped_or_repeated_frames_fail(enc: EncryptionKey | None) -> None:
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(os.urandom(4 * SMALL)), enc, chunk=SMALL)
    header, f = _frames(t.objects["o"])
    expected: type[SealError] = DecryptionFailed if enc else ChecksumMismatch
    for frames in (
        [f[1], f[0], *f[2:]],  # swapped
        [f[0], *f[2:]],  # one dropped
        [f[0], f[0], *f[1:]],  # one repeated
        [*f, f[-1]],  # the end twice
    ):
        t.objects["o"] = header + b"".join(frames)
        with pytest.raises(expected):
            _read(t, enc)


def test_a_data_frame_cannot_be_passed_off_as_the_end() -> None:
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(os.urandom(2 * SMALL)), KEY, chunk=SMALL)
    header, f = _frames(t.objects["o"])
    forged = bytes([sealed.FRAME_END]) + f[0][1:]
    t.objects["o"] = header + forged
    with pytest.raises(DecryptionFailed):
        _read(t, KEY)


def test_frames_of_another_object_with_the_same_key_do_not_fit() -> None:
    t = MemoryTarget()
    seal(t, "a", io.BytesIO(os.urandom(2 * SMALL)), KEY, chunk=SMALL)
    seal(t, "b", io.BytesIO(os.urandom(2 * SMALL)), KEY, chunk=SMALL)
    ha, fa = _frames(t.objects["a"])
    _hb, fb = _frames(t.objects["b"])
    t.objects["o"] = ha + fb[0] + b"".join(fa[1:])
    with pytest.raises(DecryptionFailed):
        _read(t, KEY)


def test_garbage_after_the_end_fails() -> None:
    for enc in (None, KEY):
        t = MemoryTarget()
        seal(t, "o", io.BytesIO(b"abc"), enc, chunk=SMALL)
        for tail in (b"x", b"\x00" * 5, b"\x00\x00\x00\x00\x01z"):
            t.objects["o"] += tail
            with pytest.raises(DecryptionFailed if enc else ChecksumMismatch, match="after the end"):
                _read(t, enc)
            t.objects["o"] = t.objects["o"][: -len(tail)]


def test_the_wrong_key_fails_and_the_message_names_key_ids_only() -> None:
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(b"data" * 100), KEY, chunk=SMALL)
    with pytest.raises(DecryptionFailed, match="wrong key") as err:
        _read(t, OTHER)
    renamed = EncryptionKey("rotated/key", OTHER.secret)
    with pytest.raises(DecryptionFailed, match="'backup-key/key', the key given is 'rotated/key'") as err2:
        _read(t, renamed)
    for exc in (err.value, err2.value):
        text = str(exc)
        for secret in (KEY.secret, OTHER.secret):
            assert secret.hex() not in text
            assert base64.b64encode(secret).decode() not in text


def test_an_encrypted_object_without_a_key_says_which_key_it_needs() -> None:
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(b"data"), KEY, chunk=SMALL)
    with pytest.raises(DecryptionFailed, match="encrypted with key id 'backup-key/key': no key was given"):
        _read(t, None)


def test_a_plain_object_reads_with_a_key_configured() -> None:
    # Backups written before encryption was turned on stay restorable.
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(b"data"), None, chunk=SMALL)
    out = io.BytesIO()
    assert unseal(t, "o", out, KEY).encrypted is False
    assert out.getvalue() == b"data"


def test_an_unexpected_checksum_fails() -> None:
    t = MemoryTarget()
    obj = seal(t, "o", io.BytesIO(b"data"), KEY, chunk=SMALL)
    assert _read(t, KEY, obj.sha256.upper()) == b"data"
    with pytest.raises(ChecksumMismatch, match="the manifest expects"):
        _read(t, KEY, hashlib.sha256(b"other").hexdigest())


@pytest.mark.parametrize("stored", [b"", b"MLSE", b"not a sealed object at all", b"MLSEAL\x09" + bytes(40)])
def test_what_is_not_a_sealed_object_is_refused(stored: bytes) -> None:
    t = MemoryTarget()
    t.objects["o"] = stored
    with pytest.raises(ChecksumMismatch):
        _read(t, None)


def test_a_huge_frame_length_is_refused_before_reading_it() -> None:
    t = MemoryTarget()
    seal(t, "o", io.BytesIO(b"abc"), None, chunk=SMALL)
    header, _ = _frames(t.objects["o"])
    t.objects["o"] = header + struct.pack(">BI", 0, 1 << 31)
    with pytest.raises(ChecksumMismatch, match="corrupted frame"):
        _read(t, None)


def test_a_compressed_frame_does_not_inflate_without_bound() -> None:
    # 64 MiB of zeros compress into a few frames; reading them back must stream, not buffer.
    t = MemoryTarget()
    size = 64 << 20
    seal(t, "o", _Zeros(size), None, compress=True)
    assert len(t.objects["o"]) < 1 << 20
    counter = _Counting()
    tracemalloc.start()
    try:
        unseal(t, "o", counter, None)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counter.n == size
    assert peak < 16 << 20


def test_sealing_streams_in_constant_memory() -> None:
    size = 64 << 20
    t = _HashingTarget()
    tracemalloc.start()
    try:
        obj = seal(t, "o", _Zeros(size), KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert obj.size == size
    assert obj.sha256 == hashlib.sha256(bytes(size)).hexdigest()
    assert t.n == obj.stored_size > size
    assert peak < 16 << 20


def test_a_target_that_stops_reading_early_is_an_error() -> None:
    class Lazy(MemoryTarget):
        def put(self, key: str, source: BinaryIO, size: int | None = None) -> None:
            self.objects[key] = source.read(10)

    with pytest.raises(SealError, match="did not read the whole object"):
        seal(Lazy(), "o", io.BytesIO(b"x" * 1000), None, chunk=SMALL)


def test_keys_are_checked() -> None:
    with pytest.raises(ValueError):
        seal(MemoryTarget(), "../o", io.BytesIO(b""), None)


@pytest.mark.parametrize(
    "value",
    [
        bytes(range(32)),
        bytes(range(32)).hex().encode(),
        b"  " + bytes(range(32)).hex().upper().encode() + b"\n",
    ],
)
def test_keys_from_secret_values(value: bytes) -> None:
    assert EncryptionKey.from_secret_value("k", value).secret == bytes(range(32))


@pytest.mark.parametrize(
    "value",
    [b"", b"short", bytes(16).hex().encode(), bytes(31), b"z" * 64, base64.b64encode(bytes(range(32)))],
)
def test_bad_secret_values_are_refused_without_echoing_them(value: bytes) -> None:
    with pytest.raises(ValueError, match="expected 32 random bytes or their hex text") as err:
        EncryptionKey.from_secret_value("k", value)
    if value:
        assert value.decode(errors="replace") not in str(err.value)


def test_a_key_is_32_bytes_and_its_repr_hides_it() -> None:
    with pytest.raises(ValueError):
        EncryptionKey("k", bytes(16))
    with pytest.raises(ValueError):
        EncryptionKey("", bytes(32))
    assert "secret" not in repr(EncryptionKey("k", b"\xaa" * 32))
    assert "\\xaa" not in repr(EncryptionKey("k", b"\xaa" * 32))


class _Zeros(io.RawIOBase):
    """A large plaintext that is never in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: object) -> int:
        view = memoryview(b)  # type: ignore[arg-type]
        n = min(len(view), self.left)
        view[:n] = bytes(n)
        self.left -= n
        return n


class _Counting(io.RawIOBase):
    def __init__(self) -> None:
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        n = len(memoryview(b))  # type: ignore[arg-type]
        self.n += n
        return n


class _HashingTarget(MemoryTarget):
    """Consumes the sealed stream without keeping it."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def put(self, key: str, source: BinaryIO, size: int | None = None) -> None:
        while chunk := source.read(1 << 20):
            self.n += len(chunk)


def test_a_32_character_passphrase_is_not_taken_for_a_raw_key() -> None:
    with pytest.raises(ValueError, match="a passphrase is not a key"):
        EncryptionKey.from_secret_value("k", b"correct horse battery staple 123")
