"""Observe a live PostgreSQL server: version, primary or standby, streaming standbys and their lag, extensions.

On a primary, each physical standby is a row of ``pg_stat_replication``: ``pg_wal_lsn_diff`` between the
current WAL position and the standby's replay position gives the lag in bytes, ``replay_lag`` the lag in
seconds. PostgreSQL sets ``replay_lag`` to NULL once a standby has caught up and the primary is idle: with
zero bytes behind that is a lag of 0. With bytes behind and no ``replay_lag`` (the standby has not replied
since), ``flush_lag`` and then ``write_lag`` are used; they are lower bounds of the replay lag. Without any,
the lag in seconds is reported as unknown (None), never invented.

On a standby (``pg_is_in_recovery()``), the probe reports itself as a replica: ready while its WAL receiver
streams, with the received-but-not-replayed WAL as bytes and the age of the last replayed transaction as
seconds (only while it is behind).

The row interpretation is pure (``standby_member``, ``lag_seconds``, ``parse_version``) and unit-tested;
:func:`probe` only talks to the server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg

from mlinfra.engines import connection, observation

# pg_available_extensions names -> capability names (DataStore.status.capabilities).
EXTENSION_CAPABILITIES = {
    "vector": "pgvector",
    "pg_stat_statements": "pg_stat_statements",
    "pg_trgm": "pg_trgm",
    "pgcrypto": "pgcrypto",
    "postgis": "postgis",
    "timescaledb": "timescaledb",
    "hstore": "hstore",
    "citext": "citext",
    "btree_gist": "btree_gist",
    "uuid-ossp": "uuid-ossp",
    "pg_partman": "pg_partman",
}
# The default application_name of a standby's WAL receiver: it names nothing, so the address is used.
_ANONYMOUS = frozenset({"", "walreceiver"})

_VERSION_SQL = "select current_setting('server_version'), pg_is_in_recovery()"
_STANDBYS_SQL = """
select application_name, client_addr::text, client_port, state,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
       extract(epoch from replay_lag)::float8,
       extract(epoch from flush_lag)::float8,
       extract(epoch from write_lag)::float8
  from pg_stat_replication
 where state is distinct from 'backup'
 order by application_name, client_addr, client_port
"""
_SELF_AS_STANDBY_SQL = """
select (select status from pg_stat_wal_receiver),
       exists (select 1 from pg_stat_wal_receiver),
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,
       extract(epoch from now() - pg_last_xact_replay_timestamp())::float8
"""
_EXTENSIONS_SQL = "select name from pg_available_extensions where name = any(%s) order by name"


def probe(conn: connection.ConnectionInfo, timeout: float = 5.0) -> observation.Observation:
    """Observe the server at ``conn``; never raises on connection failure (returns reachable=False)."""
    try:
        with _connect(conn, timeout) as pg:
            version_row = _one(pg.execute(_VERSION_SQL).fetchone())
            in_recovery = bool(version_row[1])
            if in_recovery:
                standby_row = _one(pg.execute(_SELF_AS_STANDBY_SQL).fetchone())
                standbys: Sequence[Sequence[Any]] = []
            else:
                standbys = pg.execute(_STANDBYS_SQL).fetchall()
            extensions = [str(r[0]) for r in pg.execute(_EXTENSIONS_SQL, [list(EXTENSION_CAPABILITIES)])]
    except (psycopg.Error, OSError) as exc:
        return observation.Observation.unreachable(observation.error_message(exc, conn))

    if in_recovery:
        me = self_as_standby(standby_row, conn.endpoint)
        members = [me]
        state: observation.ReplicationState = "streaming" if me.ready else "degraded"
    else:
        replicas = unique_names([standby_member(row) for row in standbys])
        role: observation.Role = "primary" if replicas else "standalone"
        members = [observation.MemberObservation(conn.endpoint, role, ready=True), *replicas]
        state = observation.replication_state(replicas)
    return observation.Observation.observed(
        version=parse_version(str(version_row[0])),
        members=members,
        replication=state,
        capabilities=[EXTENSION_CAPABILITIES[name] for name in extensions],
    )


def _connect(
    conn: connection.ConnectionInfo, timeout: float
) -> contextlib.AbstractContextManager[psycopg.Connection[tuple[Any, ...]]]:
    # The whole probe, connection included, within ``timeout``: the server's timeouts for a server that
    # answers slowly, the client's deadline for one that does not run at all (stopped, black-holed).
    limits = connection.PgTimeouts(statement=timeout, lock=timeout, idle_in_transaction=timeout, total=timeout)
    return connection.postgres(conn, "mlinfra-probe", connect_timeout=timeout, timeouts=limits)


def _one(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    if row is None:  # a single-row SELECT without FROM always returns a row
        raise psycopg.InterfaceError("query returned no row")
    return row


def parse_version(server_version: str) -> str:
    """``15.18 (Debian 15.18-0+deb12u1)`` -> ``15.18``."""
    return server_version.split()[0] if server_version.strip() else server_version


def lag_seconds(lag_bytes: int | None, replay: float | None, flush: float | None, write: float | None) -> float | None:
    """A standby's lag in seconds from ``pg_stat_replication``; see the module docstring for the rules."""
    if lag_bytes == 0:
        return 0.0
    for value in (replay, flush, write):
        if value is not None:
            return max(0.0, float(value))
    return None


def standby_member(row: Sequence[Any]) -> observation.MemberObservation:
    """One ``pg_stat_replication`` row (columns of the probe's query) as a replica member."""
    app_name, addr, port, state, lag_bytes, replay, flush, write = row
    name = str(app_name) if app_name not in _ANONYMOUS and app_name is not None else _address(addr, port)
    byte_lag = max(0, int(lag_bytes)) if lag_bytes is not None else None
    return observation.MemberObservation(
        name=name,
        role="replica",
        ready=state == "streaming",
        lag_bytes=byte_lag,
        lag_seconds=lag_seconds(byte_lag, replay, flush, write),
    )


def self_as_standby(row: Sequence[Any], self_name: str) -> observation.MemberObservation:
    """The probed standby itself, from the probe's WAL receiver query."""
    status, has_receiver, behind, replay_age = row
    # Without pg_read_all_stats the status column reads NULL: the receiver's existence is all we know.
    ready = bool(has_receiver) and status in ("streaming", None)
    byte_lag = max(0, int(behind)) if behind is not None else None
    if byte_lag == 0:
        seconds: float | None = 0.0
    else:
        seconds = max(0.0, float(replay_age)) if replay_age is not None and byte_lag is not None else None
    return observation.MemberObservation(self_name, "replica", ready=ready, lag_bytes=byte_lag, lag_seconds=seconds)


def unique_names(members: Sequence[observation.MemberObservation]) -> list[observation.MemberObservation]:
    """Members whose names collide (two standbys with one application_name) get their index appended."""
    counts: dict[str, int] = {}
    for m in members:
        counts[m.name] = counts.get(m.name, 0) + 1
    seen: dict[str, int] = {}
    result = []
    for m in members:
        if counts[m.name] > 1:
            seen[m.name] = seen.get(m.name, 0) + 1
            m = observation.MemberObservation(f"{m.name}-{seen[m.name]}", m.role, m.ready, m.lag_bytes, m.lag_seconds)
        result.append(m)
    return result


def _address(addr: object, port: object) -> str:
    if addr is None:
        return "local"  # a standby connected over a Unix socket
    host = str(addr).split("/")[0]  # inet renders as 10.0.0.5/32 on some paths
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
