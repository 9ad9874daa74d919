"""Redis RDB files: the checks a backup makes before it counts a file as a snapshot.

:func:`validate` reads the header (``REDIS`` and a four-digit format version), the auxiliary fields at its
start (``redis-ver``, ``repl-id``, ``repl-offset``, ``ctime``...), the ``EOF`` opcode and the CRC-64 trailer
that Redis writes since RDB version 5 (zero when the server runs with ``rdbchecksum no``: then there is
nothing to check, and :class:`RdbInfo` says so).

The checksum is Redis's CRC-64 (Jones polynomial, reflected, no final xor). A byte-at-a-time loop in Python
checks a few MB/s, too slow for a snapshot of gigabytes, so :func:`crc64` runs many lanes of the same table
lookup side by side in numpy and combines the lanes' CRCs with the CRC's linearity (the state after ``n``
zero bytes is a 64x64 bit matrix applied to the state before).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"REDIS"
HEADER_SIZE = 9  # REDIS + four digits
EOF_OPCODE = 0xFF
AUX_OPCODE = 0xFA
FIRST_CHECKSUM_VERSION = 5
_POLY = 0x95AC9329AC4BC9B5  # the Jones polynomial 0xad93d23594c935a9, bit-reflected
_MASK = (1 << 64) - 1
_CHUNK = 16 << 20
_LANES = 65536  # CRCs computed side by side; a power of two (the lanes are combined pairwise)
_SCALAR_BELOW = 256 << 10  # shorter inputs are not worth the numpy setup


class RdbError(ValueError):
    """The file is not a complete, intact RDB snapshot: the message says what is wrong."""


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLY if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _table()
_NP_TABLE = np.array(_TABLE, dtype=np.uint64)


def _table16() -> np.ndarray:
    # Two bytes per lookup (65536 entries, 512 KiB): the state after feeding two zero bytes to a state whose
    # low 16 bits are x. Linearity: the higher bits just shift right by 16.
    state = np.arange(65536, dtype=np.uint64)
    for _ in range(2):
        state = _NP_TABLE[state & np.uint64(0xFF)] ^ (state >> np.uint64(8))
    return state


_NP_TABLE16 = _table16()


def crc64_scalar(crc: int, data: bytes | memoryview) -> int:
    """The reference implementation, one byte at a time (short inputs, and the tests' oracle)."""
    table = _TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


# A linear map on 64-bit CRC states, as the images of the 64 unit vectors (column i = map(1 << i)).
Matrix = tuple[int, ...]


def _apply(matrix: Matrix, value: int) -> int:
    out = 0
    bit = 0
    while value:
        if value & 1:
            out ^= matrix[bit]
        value >>= 1
        bit += 1
    return out


def _compose(outer: Matrix, inner: Matrix) -> Matrix:
    return tuple(_apply(outer, column) for column in inner)


@functools.lru_cache(maxsize=80)
def _zeros_pow2(exponent: int) -> Matrix:
    """The map "feed 2**exponent zero bytes" (squaring the one below: each is built once)."""
    if exponent == 0:
        return tuple(_TABLE[(1 << i) & 0xFF] ^ ((1 << i) >> 8) for i in range(64))
    half = _zeros_pow2(exponent - 1)
    return _compose(half, half)


@functools.lru_cache(maxsize=64)
def _zeros(count: int) -> Matrix:
    """The map "feed ``count`` zero bytes"."""
    result: Matrix = tuple(1 << i for i in range(64))
    exponent = 0
    while count:
        if count & 1:
            result = _compose(_zeros_pow2(exponent), result)
        count >>= 1
        exponent += 1
    return result


def _apply_many(matrix: Matrix, values: np.ndarray) -> np.ndarray:
    out = np.zeros_like(values)
    one = np.uint64(1)
    for bit, column in enumerate(matrix):
        mask = (values >> np.uint64(bit)) & one
        out ^= mask * np.uint64(column)
    return out


def _lanes(data: np.ndarray, lanes: int) -> int:
    """The CRC (from state 0) of ``data`` (16-bit little-endian words), whose length is a multiple of
    ``lanes`` (a power of two): lane i is the i-th slice of the data, two bytes per table lookup."""
    width = len(data) // lanes
    columns = data.reshape(lanes, width).T  # row j: word j of every lane (a strided view: no copy)
    state = np.zeros(lanes, dtype=np.uint64)
    sixteen = np.uint64(16)
    low = np.uint64(0xFFFF)
    for row in columns:
        state = _NP_TABLE16[(state ^ row) & low] ^ (state >> sixteen)
    # Pairwise: crc(a || b) = zeros(len(b))(crc(a)) ^ crc(b).
    size = 2 * width
    while len(state) > 1:
        state = _apply_many(_zeros(size), state[0::2]) ^ state[1::2]
        size *= 2
    return int(state[0])


def crc64(crc: int, data: bytes | memoryview) -> int:
    """Continue Redis's CRC-64 ``crc`` over ``data``."""
    size = len(data)
    if size < _SCALAR_BELOW:
        return crc64_scalar(crc, data)
    lanes = _LANES
    body = size - size % (2 * lanes)
    array = np.frombuffer(data, dtype="<u2", count=body // 2)
    crc = _apply(_zeros(body), crc) ^ _lanes(array, lanes)
    return crc64_scalar(crc, memoryview(data)[body:])


@dataclasses.dataclass(frozen=True)
class RdbInfo:
    version: int  # the RDB format version (10 for Redis 7.0, 11 for 7.2, 12 for 7.4)
    size: int
    aux: dict[str, str]  # the header's auxiliary fields (redis-ver, repl-id, repl-offset, ctime, ...)
    checksum: int | None  # the CRC-64 the file carries and that matched; None when it carries none

    @property
    def redis_version(self) -> str | None:
        return self.aux.get("redis-ver")

    @property
    def repl_offset(self) -> int | None:
        value = self.aux.get("repl-offset")
        return int(value) if value is not None and value.lstrip("-").isdigit() else None


def read_header(head: bytes) -> tuple[int, dict[str, str]]:
    """The format version and the auxiliary fields at the start of an RDB file (``head``: its first bytes;
    fields cut off by the end of ``head`` are left out)."""
    if len(head) < HEADER_SIZE or not head.startswith(MAGIC) or not head[5:9].isdigit():
        raise RdbError("not an RDB file: it does not start with REDIS and a four-digit version")
    version = int(head[5:9])
    aux: dict[str, str] = {}
    pos = HEADER_SIZE
    while pos < len(head) and head[pos] == AUX_OPCODE:
        try:
            key, pos = _string(head, pos + 1)
            value, pos = _string(head, pos)
        except IndexError:
            break  # the fields go on past ``head``
        if key is not None and value is not None:
            aux[key] = value
    return version, aux


def _string(data: bytes, pos: int) -> tuple[str | None, int]:
    """An RDB string at ``pos`` (a length-prefixed string or an integer encoding) and where the next begins.
    An LZF-compressed string is skipped (None): the header's fields are short and never compressed."""
    first = data[pos]
    kind = first >> 6
    if kind == 0:
        length, pos = first & 0x3F, pos + 1
    elif kind == 1:
        length, pos = ((first & 0x3F) << 8) | data[pos + 1], pos + 2
    elif first == 0x80:
        length, pos = struct.unpack(">I", data[pos + 1 : pos + 5])[0], pos + 5
    elif first == 0x81:
        length, pos = struct.unpack(">Q", data[pos + 1 : pos + 9])[0], pos + 9
    elif kind == 3:
        encoding = first & 0x3F
        if encoding in (0, 1, 2):
            size = 1 << encoding
            raw = data[pos + 1 : pos + 1 + size]
            if len(raw) < size:
                raise IndexError("cut off")
            return str(int.from_bytes(raw, "little", signed=True)), pos + 1 + size
        if encoding == 3:  # LZF: compressed length, plain length, data
            compressed, pos = _length(data, pos + 1)
            _, pos = _length(data, pos)
            return None, pos + compressed
        raise RdbError(f"RDB header: unknown string encoding {encoding}")
    else:
        raise RdbError(f"RDB header: unknown length encoding 0x{first:02x}")
    raw = data[pos : pos + length]
    if len(raw) < length:
        raise IndexError("cut off")
    return raw.decode("utf-8", errors="replace"), pos + length


def _length(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    kind = first >> 6
    if kind == 0:
        return first & 0x3F, pos + 1
    if kind == 1:
        return ((first & 0x3F) << 8) | data[pos + 1], pos + 2
    if first == 0x80:
        return struct.unpack(">I", data[pos + 1 : pos + 5])[0], pos + 5
    if first == 0x81:
        return struct.unpack(">Q", data[pos + 1 : pos + 9])[0], pos + 9
    raise RdbError(f"RDB header: unknown length encoding 0x{first:02x}")


def validate(path: Path) -> RdbInfo:
    """Check that ``path`` is a whole RDB snapshot: the magic and version, the EOF opcode before the trailer,
    and the CRC-64 of everything before the trailer (when the file carries one). Raises :class:`RdbError`."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4096)
        version, aux = read_header(head)
        has_trailer = version >= FIRST_CHECKSUM_VERSION
        trailer_size = 8 if has_trailer else 0
        if size < HEADER_SIZE + 1 + trailer_size:
            raise RdbError(f"RDB file of {size} bytes is too short to be complete")
        handle.seek(size - trailer_size - 1)
        tail = handle.read(trailer_size + 1)
        if tail[0] != EOF_OPCODE:
            raise RdbError("RDB file is cut off: it does not end with the EOF opcode and its checksum")
        if not has_trailer:
            return RdbInfo(version, size, aux, None)
        stored = struct.unpack("<Q", tail[1:])[0]
        if stored == 0:  # written with rdbchecksum no
            return RdbInfo(version, size, aux, None)
        handle.seek(0)
        remaining = size - trailer_size
        crc = 0
        while remaining:
            chunk = handle.read(min(_CHUNK, remaining))
            if not chunk:
                raise RdbError("RDB file shrank while it was checked")
            crc = crc64(crc, chunk)
            remaining -= len(chunk)
    if crc != stored:
        raise RdbError(f"RDB checksum mismatch: the file says {stored:016x}, its content is {crc:016x}")
    return RdbInfo(version, size, aux, stored)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
