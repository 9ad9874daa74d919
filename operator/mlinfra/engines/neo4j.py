"""Observe a live Neo4j server: version and edition, and the procedure libraries it has (APOC, GDS).

Neo4j Community Edition has no replication: it is one standalone server, and the observation says so
(``replication="not-applicable"`` with a note) rather than reporting an empty replica set. Enterprise
clustering is not observed by this probe; it reports the probed server only, and says that too.

The probe connects directly to the one server (``bolt://``, ``bolt+s://`` with TLS) even though the
connection Secret's ``uri`` is a routing ``neo4j+s://`` URI under TLS: a probe observes one endpoint.

The record interpretation is pure (``parse_components``, ``capabilities_from_procedures``); :func:`probe`
only talks to the server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import neo4j as neo4j_lib
from neo4j import exceptions as neo4j_errors

from mlinfra.engines import connection, observation

COMMUNITY_NOTE = "Neo4j Community Edition has no replication: a single standalone server"
ENTERPRISE_NOTE = "Neo4j Enterprise clustering is not observed: members lists the probed server only"
# Procedure name prefixes -> capability names.
PROCEDURE_CAPABILITIES = {"apoc.": "apoc", "gds.": "gds"}

_COMPONENTS = "CALL dbms.components() YIELD name, versions, edition RETURN name, versions, edition"
_PROCEDURES = "SHOW PROCEDURES YIELD name WHERE name STARTS WITH 'apoc.' OR name STARTS WITH 'gds.' RETURN name"


def probe(conn: connection.ConnectionInfo, timeout: float = 5.0) -> observation.Observation:
    """Observe the server at ``conn``; never raises on connection failure (returns reachable=False)."""
    try:
        with _driver(conn, timeout) as driver:
            database = conn.database or None
            # Transaction timeouts: the server ends a query that outlives the probe (a busy database).
            components = driver.execute_query(
                neo4j_lib.Query(_COMPONENTS, timeout=timeout),
                database_=database,
                routing_=neo4j_lib.RoutingControl.READ,
            ).records
            procedures = driver.execute_query(
                neo4j_lib.Query(_PROCEDURES, timeout=timeout),
                database_=database,
                routing_=neo4j_lib.RoutingControl.READ,
            ).records
    except (neo4j_errors.Neo4jError, neo4j_errors.DriverError, OSError, ValueError) as exc:
        return observation.Observation.unreachable(observation.error_message(exc, conn))

    version, edition = parse_components([record.data() for record in components])
    community = edition == "community"
    return observation.Observation.observed(
        version=version,
        members=[observation.MemberObservation(conn.endpoint, "standalone", ready=True)],
        replication="not-applicable" if community else "none",
        capabilities=capabilities_from_procedures(str(record["name"]) for record in procedures),
        edition=edition,
        notes=[COMMUNITY_NOTE if community else ENTERPRISE_NOTE],
    )


@contextlib.contextmanager
def _driver(conn: connection.ConnectionInfo, timeout: float) -> Iterator[neo4j_lib.Driver]:
    # One attempt: a probe reports what it sees now; the observing timer is the retry loop.
    with connection.neo4j_driver(conn, timeout, max_transaction_retry_time=0, max_connection_pool_size=1) as driver:
        yield driver


def parse_components(components: Iterable[Mapping[str, Any]]) -> tuple[str | None, str | None]:
    """(version, edition) of the ``Neo4j Kernel`` component of ``dbms.components()``."""
    for component in components:
        if component.get("name") == "Neo4j Kernel":
            versions = component.get("versions") or []
            edition = component.get("edition")
            return (str(versions[0]) if versions else None, str(edition).lower() if edition is not None else None)
    return None, None


def capabilities_from_procedures(names: Iterable[str]) -> list[str]:
    """``apoc``/``gds`` when any procedure of that library is installed."""
    found = {
        capability for name in names for prefix, capability in PROCEDURE_CAPABILITIES.items() if name.startswith(prefix)
    }
    return sorted(found)
