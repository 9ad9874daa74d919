"""Qdrant: members from cluster status, shard replicas from collection cluster info, local mode said honestly."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http import exceptions as qdrant_errors
from qdrant_client.http import models

from mlinfra.engines import connection, qdrant


def enabled(peer_id: int, peers: dict[int, str], failing: tuple[str, ...] = ()) -> models.ClusterStatusOneOf1:
    return models.ClusterStatusOneOf1(
        status="enabled",
        peer_id=peer_id,
        peers={str(pid): models.PeerInfo(uri=uri) for pid, uri in peers.items()},
        raft_info=models.RaftInfo(
            term=3, commit=10, pending_operations=0, leader=peer_id, role=models.StateRole.LEADER, is_voter=True
        ),
        consensus_thread_status=models.ConsensusThreadStatusOneOf(
            consensus_thread_status="working", last_update="2025-01-01T00:00:00Z"
        ),
        message_send_failures={uri: models.MessageSendErrors(count=3, latest_error="timeout") for uri in failing},
    )


PEERS = {
    11: "http://qdrant-0.qdrant-headless:6335/",
    22: "http://qdrant-1.qdrant-headless:6335/",
    3: "http://qdrant-2.qdrant-headless:6335/",
}


def test_cluster_disabled_is_one_standalone_server() -> None:
    members, state = qdrant.members_from_cluster_status(models.ClusterStatusOneOf(status="disabled"), "q:6333")
    assert [(m.name, m.role, m.ready) for m in members] == [("q:6333", "standalone", True)]
    assert state == "not-applicable"


def test_cluster_peers_are_members_sorted_by_peer_id() -> None:
    members, state = qdrant.members_from_cluster_status(enabled(11, PEERS), "ignored")
    assert [(m.name, m.role, m.ready) for m in members] == [
        ("qdrant-2.qdrant-headless:6335", "peer", True),
        ("qdrant-0.qdrant-headless:6335", "peer", True),
        ("qdrant-1.qdrant-headless:6335", "peer", True),
    ]
    assert state == "streaming"
    assert all(m.lag_bytes is None and m.lag_seconds is None for m in members)


def test_a_peer_we_cannot_reach_is_not_ready() -> None:
    status = enabled(11, PEERS, failing=("http://qdrant-1.qdrant-headless:6335",))
    members, state = qdrant.members_from_cluster_status(status, "ignored")
    assert {m.name: m.ready for m in members}["qdrant-1.qdrant-headless:6335"] is False
    assert state == "degraded"


def test_a_single_peer_cluster_has_no_replication_peers() -> None:
    _, state = qdrant.members_from_cluster_status(enabled(11, {11: PEERS[11]}), "ignored")
    assert state == "none"


def test_replicas_from_cluster_info() -> None:
    info = models.CollectionClusterInfo(
        peer_id=11,
        shard_count=2,
        local_shards=[
            models.LocalShardInfo(shard_id=1, points_count=5, state=models.ReplicaState.ACTIVE),
            models.LocalShardInfo(shard_id=0, points_count=5, state=models.ReplicaState.ACTIVE),
        ],
        remote_shards=[
            models.RemoteShardInfo(shard_id=0, peer_id=22, state=models.ReplicaState.PARTIAL),
            models.RemoteShardInfo(shard_id=1, peer_id=3, state=models.ReplicaState.DEAD),
        ],
        shard_transfers=[],
    )
    assert qdrant.replicas_from_cluster_info(info) == [
        (0, 11, "Active"),
        (0, 22, "Partial"),
        (1, 3, "Dead"),
        (1, 11, "Active"),
    ]


@pytest.fixture
def local() -> Iterator[QdrantClient]:
    client = QdrantClient(location=":memory:")
    try:
        yield client
    finally:
        client.close()


def test_local_mode_is_reported_honestly(local: QdrantClient) -> None:
    assert qdrant.is_local_mode(local)
    obs = qdrant.probe_client(local)
    assert obs.reachable and obs.error is None
    assert obs.version is None  # the local mode would report the client library's version
    assert [(m.name, m.role, m.ready) for m in obs.members] == [("local-mode", "standalone", True)]
    assert obs.replication == "not-applicable"
    assert obs.capabilities == ["local-mode"]
    assert obs.notes == [qdrant.LOCAL_NOTE]


def test_local_mode_has_no_observable_replicas(local: QdrantClient) -> None:
    assert qdrant.collection_replicas(local, "anything") == []


def test_a_server_client_is_not_local() -> None:
    client = QdrantClient(url="http://127.0.0.1:1", check_compatibility=False)
    try:
        assert not qdrant.is_local_mode(client)
    finally:
        client.close()


# --- refusals: what Qdrant answered "no" to, told apart from what may pass by itself ------------------------


def answer(status: int, reason: str, content: bytes) -> qdrant_errors.UnexpectedResponse:
    return qdrant_errors.UnexpectedResponse(
        status, reason, content, httpx.Headers({"content-type": "application/json"})
    )


def qdrant_error(message: str) -> bytes:
    return json.dumps({"status": {"error": message}, "time": 0.0}).encode()


@pytest.mark.parametrize(
    ("status", "reason", "message", "invalid_request"),
    [
        (400, "Bad Request", "Json deserialize error: Invalid json path: '/../../../x#'", True),
        (404, "Not Found", "Not found: Collection `docs-1` doesn't exist!", False),
        (409, "Conflict", "Wrong input: Collection `docs-1` already exists!", False),
        (422, "Unprocessable Entity", "Validation error in JSON body: [hnsw_config.m: value 1000 invalid]", True),
        (401, "Unauthorized", "Must provide an API key or an Authorization bearer token", False),
        (403, "Forbidden", "Access denied", False),
    ],
)
def test_a_4xx_is_a_refusal_in_qdrants_words(status: int, reason: str, message: str, invalid_request: bool) -> None:
    refused = qdrant.refusal(answer(status, reason, qdrant_error(message)))
    assert refused == qdrant.Refusal(status, reason, message)
    assert refused.invalid_request is invalid_request
    assert str(refused) == f"qdrant refused ({status} {reason}): {message}"


@pytest.mark.parametrize(
    "exc",
    [
        answer(500, "Internal Server Error", qdrant_error("Service internal error: disk full")),
        answer(503, "Service Unavailable", b"upstream connect error"),
        answer(408, "Request Timeout", b""),
        answer(429, "Too Many Requests", qdrant_error("Too many requests")),
        qdrant_errors.ResponseHandlingException(httpx.ConnectError("connection refused")),
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        ConnectionRefusedError(111, "Connection refused"),
        ValueError("Collection docs-1 not found"),  # local mode
        RuntimeError("Storage folder is already accessed by another instance"),
    ],
    ids=lambda exc: type(exc).__name__ + str(getattr(exc, "status_code", "")),
)
def test_no_answer_a_5xx_408_429_and_local_mode_errors_may_pass(exc: Exception) -> None:
    assert qdrant.refusal(exc) is None


def test_a_refusal_without_json_is_told_as_text_on_one_bounded_line() -> None:
    assert qdrant.refusal(answer(400, "Bad Request", b"bad\n  request")) == qdrant.Refusal(
        400, "Bad Request", "bad request"
    )
    assert qdrant.refusal(answer(400, "", b"")) == qdrant.Refusal(400, "", "no message")
    assert str(qdrant.refusal(answer(400, "", b"x"))) == "qdrant refused (400): x"
    long = qdrant.refusal(answer(400, "Bad Request", qdrant_error("x" * 5000)))
    assert long is not None and len(long.message) == qdrant.MAX_REFUSAL_MESSAGE


def test_describe_says_what_qdrant_said_and_never_the_api_key() -> None:
    conn = connection.ConnectionInfo.for_engine("qdrant", "q.example", "s3cret-key")
    refused = answer(403, "Forbidden", qdrant_error("api key s3cret-key has no access to collection docs"))
    assert (
        qdrant.describe(refused, conn) == "qdrant refused (403 Forbidden): api key *** has no access to collection docs"
    )
    unreachable = httpx.ConnectError("connection to http://q.example:6333?api-key=s3cret-key refused")
    text = qdrant.describe(unreachable, conn)
    assert text.startswith("ConnectError: ") and "s3cret-key" not in text


class _Refusing(http.server.BaseHTTPRequestHandler):
    """A server that refuses every request as a Qdrant with another API key would."""

    def do_GET(self) -> None:
        body = qdrant_error("Must provide an API key or an Authorization bearer token")
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_the_probe_of_a_server_that_refuses_us_says_why() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conn = connection.ConnectionInfo.for_engine("qdrant", "127.0.0.1", "wrong-key", port=server.server_port)
        obs = qdrant.probe(conn)
    finally:
        server.shutdown()
        server.server_close()
    assert not obs.reachable
    assert obs.error == ("qdrant refused (401 Unauthorized): Must provide an API key or an Authorization bearer token")
