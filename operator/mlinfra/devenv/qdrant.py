"""Qdrant for tests: a real server at ``QDRANT_URL``, a persistent local-mode directory at ``QDRANT_PATH``,
else a fresh in-memory local mode per test.

No Qdrant server binary can be obtained on this platform's registries; the local mode implements the same
client API in process, so code written against ``QdrantClient`` runs unchanged against all three.

A server (and a ``QDRANT_PATH`` directory) is shared: by every test of a run, by earlier runs that were killed
before cleaning up, by other users. A test therefore never assumes an empty Qdrant: it takes a
:class:`QdrantSpace`, builds every collection and alias name with :meth:`QdrantSpace.name` (a prefix no other
test or run uses), and the space removes everything under its prefix when the test ends, failed or not. A
name a test created outside its prefix is reported as a leak: the next test or run could collide with it.
``QDRANT_PATH`` stands in for the server here: two runs against one directory behave as two runs against one
server, which is how the isolation itself is tested without one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

from qdrant_client import QdrantClient

log = logging.getLogger(__name__)

URL_ENV = "QDRANT_URL"
API_KEY_ENV = "QDRANT_API_KEY"
PATH_ENV = "QDRANT_PATH"
# Every test-made name starts with this, so a run can tell test names (its own or a concurrent run's) from
# names somebody else made on a shared server.
TEST_PREFIX = "mlt-"


def qdrant_client() -> QdrantClient:
    url = os.environ.get(URL_ENV)
    if url:
        return QdrantClient(url=url, api_key=os.environ.get(API_KEY_ENV) or None, timeout=30)
    path = os.environ.get(PATH_ENV)
    if path:
        return QdrantClient(path=path)
    return QdrantClient(location=":memory:")


def is_real_server() -> bool:
    return bool(os.environ.get(URL_ENV))


def mode() -> str:
    """How the tests reach Qdrant, as recorded per test: real-server, local-path or local-mode."""
    if is_real_server():
        return "real-server"
    return "local-path" if os.environ.get(PATH_ENV) else "local-mode"


def names(client: QdrantClient) -> tuple[set[str], set[str]]:
    """The collections and the aliases on the server."""
    collections = {c.name for c in client.get_collections().collections}
    aliases = {a.alias_name for a in client.get_aliases().aliases}
    return collections, aliases


def remove_prefixed(client: QdrantClient, prefix: str) -> list[str]:
    """Remove every alias and collection whose name starts with ``prefix``, the collections' snapshots first
    (a server keeps them on disk after the collection is gone). Returns what was removed, aliases first."""
    from qdrant_client.http import models

    if not prefix.startswith(TEST_PREFIX) or len(prefix) <= len(TEST_PREFIX):
        raise ValueError(f"refusing to remove {prefix!r}*: only a test's own prefix ({TEST_PREFIX}<id>) is removed")
    ours = {c.name for c in client.get_collections().collections if c.name.startswith(prefix)}
    # An alias of another name may point into our collections: it goes too, or deleting the collection would
    # leave it dangling.
    doomed = sorted(
        a.alias_name
        for a in client.get_aliases().aliases
        if a.alias_name.startswith(prefix) or a.collection_name in ours
    )
    if doomed:
        client.update_collection_aliases(
            change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)) for alias in doomed
            ]
        )
    removed: list[str] = list(doomed)
    for name in sorted(ours):
        for snapshot in client.list_snapshots(name):
            client.delete_snapshot(name, snapshot.name, wait=True)
        client.delete_collection(name)
        removed.append(name)
    return removed


@dataclass
class QdrantSpace:
    """One test's share of a Qdrant others share too (see the module docstring)."""

    client: QdrantClient
    prefix: str = field(default_factory=lambda: f"{TEST_PREFIX}{secrets.token_hex(4)}-")
    _before: tuple[set[str], set[str]] = field(default_factory=lambda: (set(), set()))

    def name(self, logical: str) -> str:
        """The name this test uses for ``logical``: the same logical name in another test (or run) differs."""
        return f"{self.prefix}{logical}"

    def open(self) -> QdrantSpace:
        self._before = names(self.client)
        return self

    def close(self) -> list[str]:
        """Remove what the test made under its prefix; return the names it made outside it (leaks)."""
        remove_prefixed(self.client, self.prefix)
        collections, aliases = names(self.client)
        before_collections, before_aliases = self._before
        # Names another test run made meanwhile carry the test prefix too: only foreign names are ours to blame.
        made = (collections - before_collections) | (aliases - before_aliases)
        return sorted(n for n in made if not n.startswith(TEST_PREFIX))


class LeakedNames(AssertionError):
    pass


@contextlib.contextmanager
def space(client: QdrantClient | None = None) -> Iterator[QdrantSpace]:
    """A :class:`QdrantSpace` on ``client`` (by default the one the environment selects); the client is closed
    after, which a local-mode directory needs before another client may open it."""
    qdrant = client if client is not None else qdrant_client()
    try:
        opened = QdrantSpace(qdrant).open()
        failed = False
        try:
            yield opened
        except BaseException:
            failed = True
            raise
        finally:
            leaked = opened.close()
            if leaked and not failed:  # a failing test's own error says more than the leak it caused
                raise LeakedNames(
                    f"the test made {leaked} outside its prefix {opened.prefix!r}: on a shared Qdrant the next "
                    "test or run collides with them; build names with QdrantSpace.name()"
                )
    finally:
        qdrant.close()
