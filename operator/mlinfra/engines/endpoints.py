"""Where to reach a managed store from an operator running outside the cluster (development only).

In a cluster the operator reaches a managed store through its Service DNS name. Run out of cluster (the
demo, the e2e tests), ``*.svc`` names do not resolve and Pods on fake nodes run nothing, so the local
platform serves each managed store with real local servers and writes an *endpoint map*: a JSON file named
by ``MLINFRA_ENDPOINT_MAP`` (off by default)::

    {"<namespace>/<datastore>": {"endpoint": "127.0.0.1:6379",
                                 "members": {"<pod name>": "127.0.0.1:6379", ...},
                                 "aliases": {"<member name the engine reports>": "<pod name>"},
                                 "unserved": "<why it cannot be served locally>",
                                 "localPath": "<Qdrant only: a qdrant-client local-mode directory>"}}

The file is re-read whenever it changes, so it can be written after the operator started.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra.engines.connection import ConnectionInfo, split_endpoint

ENV = "MLINFRA_ENDPOINT_MAP"


@dataclass(frozen=True)
class Override:
    host: str
    port: int
    members: dict[str, str] = field(default_factory=dict)  # pod name -> host:port
    aliases: dict[str, str] = field(default_factory=dict)  # name the engine reports -> pod name
    unserved: str | None = None
    local_path: str | None = None  # Qdrant only: served by qdrant-client local mode on this directory

    def apply(self, conn: ConnectionInfo) -> ConnectionInfo:
        """``conn`` redirected to this local endpoint (or local-mode directory)."""
        moved = conn.with_endpoint(self.host, self.port)
        return dataclasses.replace(moved, local_path=self.local_path) if self.local_path else moved


class EndpointMap:
    """The parsed map file, reloaded when its mtime changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mtime: float | None = None
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> EndpointMap:
        value = os.environ.get(ENV)
        return cls(Path(value) if value else None)

    def _load(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return {}
            if mtime != self._mtime:
                self._data = json.loads(self.path.read_text() or "{}")
                self._mtime = mtime
            return self._data

    def lookup(self, namespace: str, name: str, default_port: int) -> Override | None:
        entry = self._load().get(f"{namespace}/{name}")
        if not entry:
            return None
        host, port = split_endpoint(str(entry.get("endpoint", "127.0.0.1")), default_port)
        return Override(
            host=host,
            port=port,
            members=dict(entry.get("members", {})),
            aliases=dict(entry.get("aliases", {})),
            unserved=entry.get("unserved"),
            local_path=entry.get("localPath"),
        )

    def resolve(self, conn: ConnectionInfo, namespace: str, name: str) -> ConnectionInfo:
        """``conn`` of the managed store ``namespace/name``, redirected when the map has an entry for it."""
        override = self.lookup(namespace, name, conn.port)
        if override is None or override.unserved:
            return conn
        return override.apply(conn)
