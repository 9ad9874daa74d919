"""One member of a replicated Redis or PostgreSQL store, looked at and acted on directly (not through the
client Service): its role and replication position, promotion, and (Redis) following another member.

The failover and switchover of ``stores.ha`` are built on these calls; each has a deadline (a member that
hangs, a SIGSTOPped primary, must cost one timeout, never a stuck operator) and never raises on a member that
does not answer (:func:`look` says so in :class:`MemberState`).

Positions are bytes of the replication stream, comparable between the members of one store: Redis's
replication offset (``master_repl_offset``, on a replica the offset it has processed), PostgreSQL's WAL
position (on a standby the WAL received, which a promotion replays in full).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import psycopg
import redis as redis_lib
from psycopg import sql
from redis import backoff as redis_backoff
from redis import retry as redis_retry

from mlinfra.engines import connection, observation

Role = Literal["primary", "replica", "unknown"]


@dataclasses.dataclass(frozen=True)
class MemberState:
    reachable: bool
    role: Role = "unknown"
    position: int | None = None
    following: str | None = None  # a replica's primary as it names it (host:port), when known
    link_up: bool = False  # a replica's link to its primary is up
    error: str | None = None  # why it could not be looked at (safe to publish)
    synchronous: str | None = None  # a PostgreSQL primary's synchronous_standby_names
    # Nothing listens at its address (the connection was refused, not timed out): no server process runs
    # there. A stopped (SIGSTOP) server still holds its socket, and the kernel accepts connections for it.
    refused: bool = False


class ReplicationError(RuntimeError):
    """A promotion or re-pointing the member refused or did not finish (message safe to publish)."""


def _redis(conn: connection.ConnectionInfo, timeout: float) -> redis_lib.Redis:
    return redis_lib.Redis(
        **connection.redis_kwargs(conn, timeout),
        retry=redis_retry.Retry(redis_backoff.NoBackoff(), 0),  # one attempt: the caller's loop is the retry
        decode_responses=True,
    )


def _pg(conn: connection.ConnectionInfo, timeout: float) -> Any:
    limits = connection.PgTimeouts(statement=timeout, lock=timeout, idle_in_transaction=timeout, total=timeout)
    return connection.postgres(conn, "mlinfra-ha", connect_timeout=timeout, timeouts=limits)


def look(conn: connection.ConnectionInfo, timeout: float) -> MemberState:
    """The member at ``conn`` now: role and position; ``reachable=False`` with the reason when it does not
    answer within ``timeout``."""
    if conn.engine == "redis":
        return _look_redis(conn, timeout)
    if conn.engine == "postgres":
        return _look_postgres(conn, timeout)
    raise ValueError(f"{conn.engine} has no failover")


def redis_state(info: dict[str, Any]) -> MemberState:
    """A member's state from its ``INFO replication``."""
    offset = str(info.get("master_repl_offset", ""))
    position = int(offset) if offset.isdigit() else None
    if info.get("role") == "slave":
        host, port = info.get("master_host"), info.get("master_port")
        return MemberState(
            True,
            "replica",
            position,
            following=f"{host}:{port}" if host else None,
            link_up=info.get("master_link_status") == "up",
        )
    return MemberState(True, "primary", position)


def _look_redis(conn: connection.ConnectionInfo, timeout: float) -> MemberState:
    client = _redis(conn, timeout)
    try:
        return redis_state(client.info("replication"))
    except (redis_lib.RedisError, OSError) as exc:
        return MemberState(False, error=observation.error_message(exc, conn), refused=_refused(exc))
    finally:
        client.close()


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a refused connection."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "connection refused" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_PG_STATE_SQL = """
select pg_is_in_recovery(),
       pg_wal_lsn_diff(case when pg_is_in_recovery()
                            then coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
                            else pg_current_wal_lsn() end, '0/0')::bigint,
       (select sender_host || ':' || sender_port from pg_stat_wal_receiver),
       (select status = 'streaming' from pg_stat_wal_receiver),
       current_setting('synchronous_standby_names')
"""


def _look_postgres(conn: connection.ConnectionInfo, timeout: float) -> MemberState:
    try:
        with _pg(conn, timeout) as pg:
            row = pg.execute(_PG_STATE_SQL).fetchone()
    except (psycopg.Error, OSError) as exc:
        return MemberState(False, error=observation.error_message(exc, conn), refused=_refused(exc))
    assert row is not None  # a SELECT without FROM returns one row
    in_recovery, position, sender, streaming, synchronous = row
    if in_recovery:
        return MemberState(True, "replica", position, following=sender, link_up=bool(streaming))
    return MemberState(True, "primary", position, synchronous=str(synchronous))


def pg_synchronous_names(standbys: list[str], wanted: int) -> str:
    """``synchronous_standby_names`` asking ``wanted`` of ``standbys`` (their application names: the pod names)
    to have each commit, or as many as there are; empty (asynchronous) for none."""
    count = min(wanted, len(standbys))
    if count <= 0:
        return ""
    return f"ANY {count} (" + ", ".join('"' + name.replace('"', '""') + '"' for name in sorted(standbys)) + ")"


def pg_set_synchronous(conn: connection.ConnectionInfo, names: str, timeout: float) -> None:
    """PostgreSQL: set the primary's ``synchronous_standby_names`` (a reload applies it to waiting commits)."""
    statement = sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(names))
    try:
        with _pg(conn, timeout) as pg:
            pg.execute(statement)
            pg.execute("select pg_reload_conf()")
    except (psycopg.Error, OSError) as exc:
        raise ReplicationError(
            f"setting the synchronous standbys of {conn.endpoint}: {observation.error_message(exc, conn)}"
        ) from None


def promote(conn: connection.ConnectionInfo, timeout: float) -> None:
    """Make the replica at ``conn`` a primary (it stops following anyone); done when this returns."""
    if conn.engine == "redis":
        client = _redis(conn, timeout)
        try:
            client.replicaof("NO", "ONE")
        except (redis_lib.RedisError, OSError) as exc:
            raise ReplicationError(f"promoting {conn.endpoint}: {observation.error_message(exc, conn)}") from None
        finally:
            client.close()
        return
    try:
        with _pg(conn, timeout + 5) as pg:
            row = pg.execute("select pg_promote(true, %s)", [max(1, int(timeout))]).fetchone()
            if row and row[0]:
                # The new timeline reaches the control file (what pg_rewind of the old primary reads) now.
                pg.execute("checkpoint")
    except (psycopg.Error, OSError) as exc:
        raise ReplicationError(f"promoting {conn.endpoint}: {observation.error_message(exc, conn)}") from None
    if not row or not row[0]:
        raise ReplicationError(f"promoting {conn.endpoint}: not promoted within {timeout:g} s")


def follow(conn: connection.ConnectionInfo, host: str, port: int, timeout: float) -> None:
    """Redis: make the member at ``conn`` a replica of ``host:port`` (a demotion, or a re-pointing)."""
    if conn.engine != "redis":
        raise ValueError("only a Redis member is re-pointed by a command")
    client = _redis(conn, timeout)
    try:
        client.replicaof(host, str(port))
    except (redis_lib.RedisError, OSError) as exc:
        raise ReplicationError(
            f"pointing {conn.endpoint} at {host}:{port}: {observation.error_message(exc, conn)}"
        ) from None
    finally:
        client.close()


def pg_follow(conn: connection.ConnectionInfo, conninfo: str, timeout: float) -> None:
    """PostgreSQL: point the standby at ``conn`` at another primary (``primary_conninfo``, which names a password
    file, never a password; a reload restarts the WAL receiver, which follows the new timeline)."""
    statement = sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo))
    try:
        with _pg(conn, timeout) as pg:
            pg.execute(statement)
            pg.execute("select pg_reload_conf()")
    except (psycopg.Error, OSError) as exc:
        raise ReplicationError(f"re-pointing {conn.endpoint}: {observation.error_message(exc, conn)}") from None


def pause_writes(conn: connection.ConnectionInfo, seconds: float, timeout: float) -> None:
    """Redis: hold every write on the primary at ``conn`` for ``seconds`` (a switchover's quiet moment; reads
    go on). The pause ends by itself: an operator that dies half-way leaves no store paused for ever."""
    client = _redis(conn, timeout)
    try:
        client.client_pause(int(seconds * 1000), all=False)  # all=False: WRITE mode
    except (redis_lib.RedisError, OSError) as exc:
        raise ReplicationError(f"pausing writes on {conn.endpoint}: {observation.error_message(exc, conn)}") from None
    finally:
        client.close()


def unpause(conn: connection.ConnectionInfo, timeout: float) -> None:
    """Redis: end a :func:`pause_writes` early (the clients held meet the server's new role)."""
    client = _redis(conn, timeout)
    try:
        client.client_unpause()
    except (redis_lib.RedisError, OSError):
        pass  # the pause ends by itself
    finally:
        client.close()
