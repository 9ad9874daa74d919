"""Qdrant for tests: a real server when ``QDRANT_URL`` is set, else qdrant-client's local mode.

No Qdrant server binary can be obtained on this platform's registries; the local mode implements the same
client API in process, so code written against ``QdrantClient`` runs unchanged against both.
"""

from __future__ import annotations

import os

from qdrant_client import QdrantClient


def qdrant_client() -> QdrantClient:
    url = os.environ.get("QDRANT_URL")
    if url:
        return QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY") or None, timeout=30)
    return QdrantClient(location=":memory:")


def is_real_server() -> bool:
    return bool(os.environ.get("QDRANT_URL"))
