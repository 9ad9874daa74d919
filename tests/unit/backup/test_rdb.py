"""RDB checks: Redis's CRC-64 (the fast lanes against the byte-at-a-time reference), the header's fields, and
what validate() refuses."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from mlinfra.backup import rdb


def test_crc64_is_redis_crc64_jones() -> None:
    # The check value from Redis's own crc64.c self-test.
    assert rdb.crc64_scalar(0, b"123456789") == 0xE9C6D914C4B8D9CA
    assert rdb.crc64(0, b"123456789") == 0xE9C6D914C4B8D9CA


@pytest.mark.parametrize("size", [0, 1, 262_143, 262_144, 262_145, 2 * 65_536 * 3 + 7, 1 << 20, (1 << 20) + 12_345])
def test_fast_crc64_equals_the_reference(size: int) -> None:
    data = random.Random(size).randbytes(size)
    assert rdb.crc64(0x1234, data) == rdb.crc64_scalar(0x1234, data)


def test_crc64_continues_across_chunks() -> None:
    data = random.Random(7).randbytes(700_001)
    whole = rdb.crc64(0, data)
    assert rdb.crc64(rdb.crc64(0, data[:300_000]), data[300_000:]) == whole


def _string(text: bytes) -> bytes:
    assert len(text) < 64
    return bytes([len(text)]) + text


def make_rdb(version: int = 10, body: bytes = b"\xfe\x00\xfb\x01\x00\x00\x01a\x01b", checksum: bool = True) -> bytes:
    aux = (
        b"\xfa"
        + _string(b"redis-ver")
        + _string(b"7.0.15")
        + b"\xfa"
        + _string(b"repl-offset")
        + b"\xc2"  # an int32 encoding
        + struct.pack("<i", 123_456)
        + b"\xfa"
        + _string(b"aof-base")
        + b"\xc0\x00"
    )
    content = b"REDIS%04d" % version + aux + body + b"\xff"
    if version < rdb.FIRST_CHECKSUM_VERSION:
        return content
    crc = rdb.crc64(0, content) if checksum else 0
    return content + struct.pack("<Q", crc)


def test_validate_reads_the_header_and_checks_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "dump.rdb"
    data = make_rdb()
    path.write_bytes(data)
    info = rdb.validate(path)
    assert (info.version, info.size, info.redis_version, info.repl_offset) == (10, len(data), "7.0.15", 123_456)
    assert info.aux["aof-base"] == "0"
    assert info.checksum == struct.unpack("<Q", data[-8:])[0]


def test_a_flipped_bit_is_a_checksum_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "dump.rdb"
    data = bytearray(make_rdb())
    data[-12] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(rdb.RdbError, match="checksum mismatch"):
        rdb.validate(path)


def test_a_cut_off_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dump.rdb"
    path.write_bytes(make_rdb()[:-5])
    with pytest.raises(rdb.RdbError, match="cut off"):
        rdb.validate(path)


def test_no_checksum_is_reported_not_invented(tmp_path: Path) -> None:
    path = tmp_path / "dump.rdb"
    path.write_bytes(make_rdb(checksum=False))  # rdbchecksum no
    assert rdb.validate(path).checksum is None
    path.write_bytes(make_rdb(version=4))  # before checksums
    assert rdb.validate(path).checksum is None


@pytest.mark.parametrize("head", [b"", b"REDIS", b"REDIX0010", b"REDIS00a0", b"\x00" * 20])
def test_not_an_rdb_file(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "dump.rdb"
    path.write_bytes(head)
    with pytest.raises(rdb.RdbError, match="not an RDB file"):
        rdb.validate(path)


def test_header_fields_cut_off_by_the_read_are_left_out() -> None:
    data = make_rdb()
    version, aux = rdb.read_header(data[:20])
    assert version == 10 and aux == {}
