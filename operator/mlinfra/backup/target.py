"""Where backups are kept: the one interface every target offers, and the volume target.

A target is a flat key space of immutable objects (S3 semantics): ``put`` writes a whole object or nothing,
``get`` reads one, ``list`` walks a prefix, ``delete`` removes one key. Everything above it (sealing, the
catalog of complete backups, retention) is written once against this interface, so the S3 target
(:mod:`mlinfra.backup.s3`) and the volume target behave the same.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1 << 20


class TargetError(Exception):
    """The target refused or failed an operation. The message names the target and the operation and never
    carries a credential."""


class NotFound(TargetError):
    """The key does not exist."""


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime.datetime


class Target(Protocol):
    """A place for backup objects. Keys are ``/``-separated relative paths without ``..`` components."""

    def describe(self) -> str:
        """Where this is, for messages and status (e.g. ``s3://bucket/prefix`` or a directory): no secret."""
        ...

    def put(self, key: str, source: BinaryIO, size: int | None = None) -> None:
        """Write the object from ``source`` (read to its end). Readers see the whole object or none of it."""
        ...

    def get(self, key: str, sink: BinaryIO) -> None:
        """Copy the object into ``sink``; :class:`NotFound` when it does not exist."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def check(self) -> None:
        """Raise :class:`TargetError` saying what is wrong if the target cannot be written (missing bucket,
        refused credentials, unreachable endpoint)."""
        ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}: a relative path without empty, '.' or '..' parts")
    return key


class VolumeTarget:
    """A directory (a mounted PersistentVolume in the cluster, a local directory in tests).

    A put writes a temporary file beside the object and renames it into place, so a killed writer leaves
    no partial object under the key (only a ``.tmp-`` file, which :meth:`list` does not show).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"volume:{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, source: BinaryIO, size: int | None = None) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            out = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".tmp-{path.name}.", delete=False)  # noqa: SIM115
        except OSError as exc:
            raise TargetError(f"cannot write {key} to {self.describe()}: {exc.strerror or exc}") from None
        tmp = Path(out.name)
        try:
            with out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
        except OSError as exc:
            raise TargetError(f"cannot write {key} to {self.describe()}: {exc.strerror or exc}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def get(self, key: str, sink: BinaryIO) -> None:
        path = self._path(key)
        try:
            with path.open("rb") as src:
                while chunk := src.read(CHUNK):
                    sink.write(chunk)
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.describe()}") from None
        except OSError as exc:
            raise TargetError(f"cannot read {key} from {self.describe()}: {exc.strerror or exc}") from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Only the directory the prefix is in is walked: a volume shared by many stores is not read whole.
        head = prefix.rpartition("/")[0]
        try:
            start = self.root / check_key(head) if head else self.root
        except ValueError:
            return  # no valid key starts with it
        if not start.is_dir():
            return
        found: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # deleted since the walk saw it (another pod pruning): not listed
                    continue
                found.append(ObjectInfo(key, st.st_size, datetime.datetime.fromtimestamp(st.st_mtime, tz=datetime.UTC)))
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise TargetError(f"cannot delete {key} from {self.describe()}: {exc.strerror or exc}") from None
        # Empty directories left by deletes would pile up over a retention's lifetime.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def remove_leftovers(self) -> int:
        """Delete the ``.tmp-`` files of puts cut short by a killed writer; how many. Only for the one process
        that writes here, before it starts (the volume server at its pod's start): a put in flight would lose
        its file."""
        removed = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    (Path(dirpath) / name).unlink(missing_ok=True)
                    removed += 1
        return removed

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".tmp-check."):
                pass
        except OSError as exc:
            raise TargetError(f"cannot write to {self.describe()}: {exc.strerror or exc}") from None
