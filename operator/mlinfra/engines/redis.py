"""Observe a live Redis server: version, role, replicas and their lag, loaded modules.

Lag comes from the engine, never guessed. On a primary, ``INFO replication`` lists each replica as ``slaveN``
with the offset it acknowledged and ``lag``, the seconds since its last acknowledgement (replicas ack every
second, so a stalled replica's ``lag`` grows); lag in bytes is ``master_repl_offset - offset``, lag in seconds
is ``lag``, except that a replica with nothing left to acknowledge (0 bytes behind) is 0 seconds behind: an
idle, caught-up replica otherwise shows the 0-1 s since its last periodic ack, and PostgreSQL's figures follow
the same rule. A replica does not know how far its primary has got, so seen from a replica only the seconds
since the last I/O with the primary (``master_last_io_seconds_ago``) are reported.

The parsing is pure (``replication_members``, ``capabilities_from_modules``) and unit-tested with canned
``INFO`` dicts; :func:`probe` only talks to the server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis as redis_lib
from redis import backoff as redis_backoff
from redis import retry as redis_retry

from mlinfra.engines import connection, observation

# MODULE LIST names -> capability names as DataStore.status.capabilities shows them.
MODULE_CAPABILITIES = {
    "search": "redisearch",
    "ft": "redisearch",
    "rejson": "redisjson",
    "timeseries": "redistimeseries",
    "bf": "redisbloom",
    "graph": "redisgraph",
    "vectorset": "vectorset",
}


def probe(conn: connection.ConnectionInfo, timeout: float = 5.0) -> observation.Observation:
    """Read ``INFO server``, ``INFO replication`` and ``MODULE LIST``; never raises on connection failure."""
    notes: list[str] = []
    try:
        client = _client(conn, timeout)
    except ValueError as exc:  # e.g. a database that is not a number
        return observation.Observation.unreachable(observation.error_message(exc, conn))
    try:
        server = client.info("server")
        replication = client.info("replication")
        try:
            modules: Sequence[Mapping[str, Any]] = client.module_list()
        except redis_lib.ResponseError:  # e.g. an ACL user without the MODULE command
            modules = []
            notes.append("MODULE LIST not permitted: loaded modules unknown")
    except (redis_lib.RedisError, OSError) as exc:
        return observation.Observation.unreachable(observation.error_message(exc, conn))
    finally:
        client.close()
    members, state = replication_members(replication, conn.endpoint)
    return observation.Observation.observed(
        version=server.get("redis_version"),
        members=members,
        replication=state,
        capabilities=capabilities_from_modules(modules),
        notes=notes,
    )


def _client(conn: connection.ConnectionInfo, timeout: float) -> redis_lib.Redis:
    return redis_lib.Redis(
        **connection.redis_kwargs(conn, timeout),
        # One attempt: a probe reports what it sees now; the observing timer is the retry loop.
        retry=redis_retry.Retry(redis_backoff.NoBackoff(), 0),
        decode_responses=True,
    )


def replication_members(
    info: Mapping[str, Any], self_name: str
) -> tuple[list[observation.MemberObservation], observation.ReplicationState]:
    """Members and replication state from an ``INFO replication`` dict (as redis-py parses it).

    ``self_name`` names the probed server (its endpoint). On a primary: itself, then every ``slaveN``. On a
    replica: itself only, ready when its link to the primary is up and not resyncing.
    """
    if info.get("role") == "slave":
        return [_replica_self(info, self_name)], ("streaming" if info.get("master_link_status") == "up" else "degraded")
    replicas = _attached_replicas(info)
    role: observation.Role = "primary" if replicas else "standalone"
    members = [observation.MemberObservation(self_name, role, ready=True), *replicas]
    return members, observation.replication_state(replicas)


def _attached_replicas(info: Mapping[str, Any]) -> list[observation.MemberObservation]:
    primary_offset = _int(info.get("master_repl_offset"))
    slaves = sorted(
        (int(key[5:]), value) for key, value in info.items() if key.startswith("slave") and key[5:].isdigit()
    )
    members = []
    for _, raw in slaves:
        fields = _slave_fields(raw)
        offset = _int(fields.get("offset"))
        lag = _int(fields.get("lag"))
        lag_bytes = max(0, primary_offset - offset) if primary_offset is not None and offset is not None else None
        if lag_bytes == 0:
            lag_seconds: float | None = 0.0
        else:
            lag_seconds = float(lag) if lag is not None and lag >= 0 else None
        members.append(
            observation.MemberObservation(
                name=f"{fields.get('ip', '?')}:{fields.get('port', '?')}",
                role="replica",
                ready=fields.get("state") == "online",
                lag_bytes=lag_bytes,
                lag_seconds=lag_seconds,
            )
        )
    return members


def _replica_self(info: Mapping[str, Any], self_name: str) -> observation.MemberObservation:
    link_up = info.get("master_link_status") == "up"
    syncing = _int(info.get("master_sync_in_progress")) == 1
    if link_up:
        last_io = _int(info.get("master_last_io_seconds_ago"))
        lag_seconds = float(last_io) if last_io is not None and last_io >= 0 else None
    else:
        down_since = _int(info.get("master_link_down_since_seconds"))
        lag_seconds = float(down_since) if down_since is not None and down_since >= 0 else None
    return observation.MemberObservation(
        self_name, "replica", ready=link_up and not syncing, lag_bytes=None, lag_seconds=lag_seconds
    )


def _slave_fields(raw: object) -> Mapping[str, Any]:
    # redis-py parses "ip=127.0.0.1,port=6380,state=online,offset=42,lag=0" into a dict; accept both.
    if isinstance(raw, Mapping):
        return raw
    return dict(part.partition("=")[::2] for part in str(raw).split(","))


def _int(value: object) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


def capabilities_from_modules(modules: Sequence[Mapping[str, Any]]) -> list[str]:
    """Capability names for the loaded modules (``search`` -> ``redisearch``, ``ReJSON`` -> ``redisjson``)."""
    names = []
    for module in modules:
        name = module.get("name")
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if isinstance(name, str) and name:
            names.append(MODULE_CAPABILITIES.get(name.lower(), name.lower()))
    return sorted(set(names))
