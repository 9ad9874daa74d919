"""Observe a Qdrant server (or qdrant-client's local mode): version, cluster peers, shard replica states.

Against a real server the probe reads the version (``GET /``) and the cluster status: with the cluster
enabled every Raft peer is a ``peer`` member, not ready while consensus messages to it keep failing; without
it the server is one ``standalone`` member and replication is not applicable. Qdrant replicates per
collection shard and reports replica *states*, not lag: :func:`collection_replicas` gives
``(shard, peer, state)`` for a collection (DataStore members carry no lag figures for Qdrant).

In local mode (``QdrantClient(location=":memory:")`` or ``path=...``) there is no server: the probe says so
honestly: one standalone member, no version (the local mode would report the client library's version),
replication not applicable, capability and note ``local-mode``.

Interpretation is pure (``members_from_cluster_status``, ``replicas_from_cluster_info``, :func:`refusal`);
the probes only call the client.

A failed call is either a *refusal* — Qdrant answered and said no (a 4xx: an invalid request, a missing
collection, a conflict, a wrong API key), so the same request gets the same answer until the request or the
server's state changes — or something that may pass by itself (no answer, a 5xx, 408, 429). :func:`refusal`
is the one place that tells them apart; callers turn a refusal into a status that says so instead of
retrying it as a temporary error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator
from urllib import parse

import httpx
from qdrant_client import QdrantClient
from qdrant_client.http import exceptions as qdrant_errors
from qdrant_client.http import models

from mlinfra.engines import connection, observation

LOCAL_MODE = "local-mode"
LOCAL_LOCK_FILE = ".mlinfra.lock"
LOCAL_NOTE = (
    "qdrant-client local mode: no server, no cluster and no server version; "
    "the store is observed through the client library only"
)
STANDALONE_NOTE = "Qdrant cluster mode is disabled: a single server, no shard replication"
LAG_NOTE = "Qdrant reports shard replica states, not lag: see the collections' replicas"

ShardReplica = tuple[int, int, str]  # (shard id, peer id, replica state)

_ERRORS = (qdrant_errors.ApiException, httpx.HTTPError, OSError, ValueError)
# What a client call can raise when the store is unreachable or refuses (RuntimeError: a local-mode directory
# opened by a process that does not use open_client's lock).
CLIENT_ERRORS: tuple[type[Exception], ...] = (*_ERRORS, RuntimeError)

_TRANSIENT_4XX = frozenset({408, 429})  # about timing, not the request: retried like a 5xx
_INVALID_REQUEST = frozenset({400, 422})  # the request's content is wrong (a payload key Qdrant cannot parse)
MAX_REFUSAL_MESSAGE = 400  # characters of Qdrant's message kept, so that it fits a condition message


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Qdrant answered and refused the request: asking again the same way gets the same answer."""

    status: int
    reason: str  # the HTTP reason phrase, e.g. Bad Request
    message: str  # Qdrant's own words: ``status.error`` of its JSON answer, else the body as text

    @property
    def invalid_request(self) -> bool:
        """The request itself is invalid (400, 422): what was asked for must change, not the server's state
        (a missing collection, a conflict, a rejected API key)."""
        return self.status in _INVALID_REQUEST

    def __str__(self) -> str:
        status = f"{self.status} {self.reason}".strip()
        return f"qdrant refused ({status}): {self.message}"


def refusal(exc: BaseException) -> Refusal | None:
    """The refusal ``exc`` carries, or None for a failure that may pass by itself (no answer, a 5xx, 408
    Request Timeout, 429 Too Many Requests, a local-mode or client-side error).

    Only the HTTP API is classified: the operator and its jobs never use gRPC. qdrant-client's local mode
    raises ValueError both for what a server would refuse and for races with a concurrent change (a collection
    deleted meanwhile); it is a development stand-in, so its errors stay retried."""
    if not isinstance(exc, qdrant_errors.UnexpectedResponse) or exc.status_code is None:
        return None
    if not 400 <= exc.status_code < 500 or exc.status_code in _TRANSIENT_4XX:
        return None
    return Refusal(exc.status_code, exc.reason_phrase, server_message(exc.content))


def server_message(content: bytes) -> str:
    """What Qdrant said in an error answer: ``status.error`` of its JSON body (``{"status": {"error": ...}}``),
    else the body as text; one line, bounded."""
    text = content.decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("status"), dict) and body["status"].get("error"):
        text = str(body["status"]["error"])
    text = " ".join(text.split()) or "no message"
    return text if len(text) <= MAX_REFUSAL_MESSAGE else text[: MAX_REFUSAL_MESSAGE - 1] + "…"


def describe(exc: BaseException, conn: connection.ConnectionInfo | None) -> str:
    """One scrubbed line for a failed call: Qdrant's own words for a refusal, else the error's type and
    message (never ``conn``'s API key)."""
    refused = refusal(exc)
    if refused is None:
        return observation.error_message(exc, conn)
    return observation.scrub(str(refused), conn.password if conn is not None else "")


class LocalBusy(Exception):
    """Another process kept the local-mode directory locked for longer than we wait."""


@contextlib.contextmanager
def _local_lock(path: str, wait: float) -> Iterator[None]:
    # qdrant-client loads a local directory *before* taking its own lock, so a process could read files
    # another one is writing. Every mlinfra process (operator, sync job, demo) takes this lock first.
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, LOCAL_LOCK_FILE), "a+") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LocalBusy(f"qdrant local-mode directory {path} stayed locked for {wait:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def open_client(conn: connection.ConnectionInfo, timeout: float = 30.0) -> Iterator[QdrantClient]:
    """A client for ``conn``, closed on exit: the server's HTTP API (the password is the API key), or, on the
    local development platform (``conn.local_path``), qdrant-client local mode on that directory — held
    exclusively for the duration of the block, so keep blocks short."""
    if conn.local_path:
        with _local_lock(conn.local_path, wait=max(timeout, 30.0)):
            client = QdrantClient(path=conn.local_path)
            try:
                yield client
            finally:
                client.close()
        return
    # TLS verified like every engine (CA, system roots, server name, or insecureSkipVerify): connection.py.
    client = QdrantClient(**connection.qdrant_kwargs(conn, timeout))
    try:
        yield client
    finally:
        client.close()


def _held_by_another(path: str) -> bool:
    """Whether an :func:`open_client` block (of this process or another) holds the local-mode directory now."""
    lock_file = os.path.join(path, LOCAL_LOCK_FILE)
    if not os.path.exists(lock_file):
        return False
    with open(lock_file, "a+") as handle:  # a lock of its own: flock conflicts between open files, not processes
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def probe(conn: connection.ConnectionInfo, timeout: float = 5.0) -> observation.Observation:
    """Observe the Qdrant server at ``conn`` (HTTP API; the password is the API key). Never raises on failure."""
    if conn.local_path and _held_by_another(conn.local_path):
        # A rebuild or a sync holds the directory for as long as it works (minutes): waiting for it would time
        # the probe out and make the store not Ready, and every VectorIndex on it with it, for that long. Held
        # means it was loaded and is in use; there is no server that could be down.
        return _local_observation()
    try:
        with open_client(conn, timeout) as client:
            return probe_client(client, conn.endpoint, conn)
    except (*_ERRORS, LocalBusy, RuntimeError) as exc:
        return observation.Observation.unreachable(describe(exc, conn))


def probe_client(
    client: QdrantClient, name: str = LOCAL_MODE, conn: connection.ConnectionInfo | None = None
) -> observation.Observation:
    """Observe through an existing client: a real server, or local mode (reported as such).

    ``name`` names this server's member when the cluster is disabled; ``conn`` (when given) supplies the
    secret to scrub from errors.
    """
    if is_local_mode(client):
        return _local_observation()
    try:
        version = client.info().version
        status = client.cluster_status()
    except _ERRORS as exc:
        return observation.Observation.unreachable(describe(exc, conn))
    members, state = members_from_cluster_status(status, name)
    return observation.Observation.observed(
        version=version,
        members=members,
        replication=state,
        notes=[STANDALONE_NOTE] if state == "not-applicable" else [LAG_NOTE],
    )


def peer_count(client: QdrantClient) -> int:
    """How many servers can hold a copy of a shard: the cluster's peers; 1 for a server with the cluster
    disabled, and for local mode (one process, one copy)."""
    if is_local_mode(client):
        return 1
    return peers_in(client.cluster_status())


def peers_in(status: models.ClusterStatusOneOf | models.ClusterStatusOneOf1) -> int:
    return len(status.peers) if isinstance(status, models.ClusterStatusOneOf1) else 1


def copies_refusal(replication_factor: int | None, peers: int, store: str) -> str | None:
    """Why ``replication_factor`` cannot be honoured by ``peers`` servers (None when it can). Qdrant takes a
    factor above its peer count and keeps fewer copies than it reports: the operator says so instead."""
    if replication_factor is None or replication_factor <= peers:
        return None
    servers = "1 server" if peers == 1 else f"{peers} peers"
    return (
        f"spec.replicationFactor is {replication_factor}, but the Qdrant of DataStore {store} has {servers}: it "
        f"would keep at most {peers} {'copy' if peers == 1 else 'copies'} of each shard while reporting "
        f"{replication_factor}; set spec.replicationFactor to at most {peers}, or give the store more peers "
        "(spec.managed.replicas of a managed store)"
    )


def _local_observation() -> observation.Observation:
    return observation.Observation.observed(
        version=None,
        members=[observation.MemberObservation(LOCAL_MODE, "standalone", ready=True)],
        replication="not-applicable",
        capabilities=[LOCAL_MODE],
        notes=[LOCAL_NOTE],
    )


def is_local_mode(client: QdrantClient) -> bool:
    """True for qdrant-client's in-process local mode (``:memory:`` or a ``path``)."""
    options = client.init_options
    return options.get("location") == ":memory:" or options.get("path") is not None


def members_from_cluster_status(
    status: models.ClusterStatusOneOf | models.ClusterStatusOneOf1, self_name: str
) -> tuple[list[observation.MemberObservation], observation.ReplicationState]:
    """Members and replication state from ``GET /cluster``.

    Disabled: the server alone. Enabled: one ``peer`` per Raft peer, named by its peer URI's ``host:port``;
    the probed peer is ready (it answered), the others unless messages to them are failing.
    """
    if not isinstance(status, models.ClusterStatusOneOf1):
        return [observation.MemberObservation(self_name, "standalone", ready=True)], "not-applicable"
    failing = {uri.rstrip("/") for uri in status.message_send_failures}
    members, others = [], []
    for peer_id, peer in sorted(status.peers.items(), key=lambda item: int(item[0])):
        is_self = int(peer_id) == status.peer_id
        member = observation.MemberObservation(
            name=_peer_name(peer_id, peer.uri),
            role="peer",
            ready=is_self or peer.uri.rstrip("/") not in failing,
        )
        members.append(member)
        if not is_self:
            others.append(member)
    return members, observation.replication_state(others)


def _peer_name(peer_id: str, uri: str) -> str:
    netloc = parse.urlsplit(uri).netloc
    return netloc or f"peer-{peer_id}"


def collection_replicas(client: QdrantClient, collection: str) -> list[ShardReplica]:
    """``(shard, peer, state)`` of every replica of ``collection``'s shards, from its cluster info.

    Real servers only: local mode has no shards or peers, and the result is empty (check
    :func:`is_local_mode` to tell "no replicas observable" from "no replicas"). Client errors propagate:
    the caller asked about one collection and should see why it failed.
    """
    if is_local_mode(client):
        return []
    return replicas_from_cluster_info(client.collection_cluster_info(collection))


def replicas_from_cluster_info(info: models.CollectionClusterInfo) -> list[ShardReplica]:
    """Local shards (on ``info.peer_id``) and remote shards, sorted by shard then peer."""
    replicas = [(shard.shard_id, info.peer_id, str(shard.state)) for shard in info.local_shards]
    replicas += [(shard.shard_id, shard.peer_id, str(shard.state)) for shard in info.remote_shards]
    return sorted(replicas)
