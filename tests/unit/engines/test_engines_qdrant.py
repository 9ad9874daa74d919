"""Qdrant: members from cluster status, shard replicas from collection cluster info, local mode said honestly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from qdrant_client import QdrantClient
from qdrant_client.http import models

from mlinfra.engines import qdrant


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
