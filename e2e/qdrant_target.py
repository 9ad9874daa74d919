"""Where the VectorIndex e2e tests keep their vectors: the one place that decides.

``QDRANT_URL`` set: the DataStore ``vectors`` is an *external* qdrant store pointing at that server, so the
operator path (reconcile, observation, drift repair, the sync Job's command) runs against a real server; its
API key comes from ``QDRANT_API_KEY``. The tests reach the server directly with a client on the same URL.
Unset: the managed DataStore the local platform's Backer serves with qdrant-client local mode, reached
through the Backer's endpoint map (no Qdrant server binary exists on this platform).

A real server is shared (by earlier runs, by other users), so a test never assumes it empty: every collection
and alias it makes starts with its own prefix ``mlt-<random hex>-`` (the prefix the library-level suite and its
leak check use too, see ``mlinfra.devenv.qdrant``), and :meth:`Space.cleanup` removes them when the test ends.
The prefix is random, not derived from the namespace: the e2e namespaces are a hash of the test id, the same
in every run, and a run that was killed before its cleanup would leave names the next run collides with.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib import parse

import pytest
from qdrant_client import QdrantClient

from e2e_support import get_json
from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.devenv.backer import Backer
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.engines import connection, endpoints
from mlinfra.engines import qdrant as qdrant_engine

STORE = "vectors"
URL_ENV = devenv_qdrant.URL_ENV
API_KEY_ENV = devenv_qdrant.API_KEY_ENV
DEFAULT_PORT = connection.default_port("qdrant")
# How long the early reachability check waits: a server that does not answer this fast would time out the
# operator's probes as well.
CHECK_TIMEOUT = 10.0


class TargetError(ValueError):
    """QDRANT_URL cannot be used: the message says why (never the API key)."""


@dataclass(frozen=True)
class Server:
    """A real Qdrant server, from ``QDRANT_URL`` and ``QDRANT_API_KEY``."""

    host: str
    port: int
    tls: bool
    api_key: str | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """``host:port`` as a DataStore's ``spec.external.endpoint`` takes it (IPv6 in brackets)."""
        return connection.ConnectionInfo.for_engine("qdrant", self.host, "", port=self.port).endpoint

    @property
    def url(self) -> str:
        """The REST API's URL, without credentials: safe to print."""
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def client(self, timeout: float = 30.0) -> QdrantClient:
        return QdrantClient(
            url=self.url, api_key=self.api_key, timeout=max(1, round(timeout)), check_compatibility=False
        )


def server_from_env(environ: Mapping[str, str]) -> Server | None:
    """The server ``QDRANT_URL`` names (None when unset). Only ``http(s)://host[:port]``: a DataStore endpoint
    is host:port, so a path prefix could not be reached through it. Errors never echo the URL's parts that
    could carry a secret (user info, query)."""
    url = environ.get(URL_ENV, "").strip()
    if not url:
        return None
    parts = parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetError(
            f"{URL_ENV} must be the http:// or https:// URL of a Qdrant server's REST API, e.g. "
            f"http://127.0.0.1:6333 (scheme {parts.scheme!r} given)"
        )
    if "@" in parts.netloc:
        raise TargetError(f"{URL_ENV} must not carry credentials: put the API key in {API_KEY_ENV}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise TargetError(
            f"{URL_ENV} must be scheme://host[:port] only (no path, query or fragment): the DataStore's "
            "endpoint is host:port"
        )
    if not parts.hostname:
        raise TargetError(f"{URL_ENV} names no host, e.g. http://127.0.0.1:6333")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise TargetError(f"{URL_ENV} has a port that is not a number from 1 to 65535")
    return Server(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORT,
        tls=parts.scheme == "https",
        api_key=environ.get(API_KEY_ENV) or None,
    )


def check_reachable(server: Server) -> str:
    """The server's version; TargetError at once (not after minutes of waiting for Ready) when it does not
    answer as a Qdrant server."""
    client = server.client(CHECK_TIMEOUT)
    try:
        return str(client.info().version)
    except qdrant_engine.CLIENT_ERRORS as exc:
        # The client's errors name the URL and the HTTP status, never the api-key header.
        raise TargetError(
            f"{URL_ENV}: no Qdrant server answers at {server.url} ({type(exc).__name__}: {exc}); "
            f"unset {URL_ENV} to run against the local platform's managed store"
        ) from None
    finally:
        client.close()


def store_objects(namespace: str, server: Server | None, name: str = STORE) -> list[dict[str, Any]]:
    """The qdrant DataStore ``name`` (and its credentials Secret when external) for this target."""
    if server is None:
        return [
            {
                "apiVersion": "mlinfra.io/v1alpha1",
                "kind": "DataStore",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"engine": "qdrant", "managed": {"replicas": 1, "storage": {"size": "1Gi"}}},
            }
        ]
    secret = f"{name}-api-key"
    external: dict[str, Any] = {"endpoint": server.endpoint, "credentialsSecretRef": {"name": secret}}
    if server.tls:
        external["tls"] = {"enabled": True}  # verified against the system roots
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": secret, "namespace": namespace},
            # The DataStore API requires a credentials Secret with both keys. Qdrant has no user names and
            # the password is the API key: empty values mean no credentials (the operator then sends none).
            "stringData": {"username": "", "password": server.api_key or ""},
        },
        {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "DataStore",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"engine": "qdrant", "external": external},
        },
    ]


@dataclass
class Space:
    """One test's Qdrant: the store it declares, the names it uses, its own client, its cleanup."""

    cp: ControlPlane
    namespace: str
    backer: Backer
    server: Server | None
    prefix: str = field(default_factory=lambda: f"{devenv_qdrant.TEST_PREFIX}{secrets.token_hex(4)}-")

    @property
    def real(self) -> bool:
        return self.server is not None

    def name(self, logical: str) -> str:
        """A collection (alias) name no other test or run uses."""
        return f"{self.prefix}{logical}"

    def store_objects(self) -> list[dict[str, Any]]:
        return store_objects(self.namespace, self.server)

    def published(self) -> bool:
        """Whether the operator published the store's connection Secret (local mode is reached through it)."""
        args = ("get", "secret", f"{STORE}-conn", "-n", self.namespace)
        return self.cp.kubectl(*args, check=False).returncode == 0

    @contextlib.contextmanager
    def client(self) -> Iterator[QdrantClient]:
        """The test's own access to the store, closed on exit. Local mode holds the store's directory
        exclusively (the operator waits meanwhile): keep blocks short."""
        if self.server is not None:
            client = self.server.client()
            try:
                yield client
            finally:
                client.close()
            return
        data = get_json(self.cp, "secret", f"{STORE}-conn", "-n", self.namespace)["data"]
        info = connection.ConnectionInfo.from_secret_base64(data)
        resolved = endpoints.EndpointMap(self.backer.map_path).resolve(info, self.namespace, STORE)
        with qdrant_engine.open_client(resolved) as client:
            yield client

    def cleanup(self) -> tuple[list[str], list[str]]:
        """Delete the namespace's VectorIndexes (waiting for the operator to finish: an observation running
        meanwhile could recreate a collection just removed), then every alias and collection under the
        prefix with their snapshots. Returns (removed, still there)."""
        try:
            self.cp.kubectl(
                "delete", "vectorindexes", "--all", "-n", self.namespace, "--wait=true", "--timeout=90s", timeout=120
            )
        finally:
            # Also when the deletion did not finish: what the test made must not stay on a shared server.
            # Locally nothing exists before the store's Secret does (the store is reached through it).
            if self.real or self.published():
                with self.client() as client:
                    removed = devenv_qdrant.remove_prefixed(client, self.prefix)
                    collections, aliases = devenv_qdrant.names(client)
            else:
                removed, collections, aliases = [], set(), set()
        return removed, sorted(n for n in collections | aliases if n.startswith(self.prefix))


def server_or_fail() -> Server | None:
    """The real server at QDRANT_URL (None: local mode). A URL that cannot be used fails the test at once,
    with the message alone (outside the except: no chained traceback)."""
    try:
        server = server_from_env(os.environ)
        if server is not None:
            check_reachable(server)
    except TargetError as exc:
        problem = str(exc)
    else:
        return server
    pytest.fail(problem, pytrace=False)
