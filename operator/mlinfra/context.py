"""What every reconcile and observation is given: the operator's settings, its Kubernetes client, and the
development-only wiring (the endpoint map), built once at start-up instead of threaded by hand.

A test builds one around an in-memory Kubernetes client; ``mlinfra run`` builds the real one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from mlinfra.api import base
from mlinfra.config import Settings
from mlinfra.engines import connection, endpoints
from mlinfra.engines.connection import ConnectionInfo
from mlinfra.k8s import objects


@dataclass(frozen=True)
class Context:
    settings: Settings = field(default_factory=Settings)
    kube: objects.Kube = field(default_factory=objects.Kube)
    # Development only (empty in a cluster): managed stores served by local servers, see engines.endpoints.
    endpoints: endpoints.EndpointMap = field(default_factory=lambda: endpoints.EndpointMap(None))

    @classmethod
    def from_settings(cls, settings: Settings, kube: objects.Kube | None = None) -> Context:
        # The operator's PostgreSQL sessions are opened deep in the engines (a default, not an argument
        # threaded through every call): the settings replace that default here, for the process.
        connection.set_operator_timeouts(
            connection.PgTimeouts(
                statement=settings.pg_statement_timeout,
                lock=settings.pg_lock_timeout,
                idle_in_transaction=settings.pg_idle_in_transaction_timeout,
            )
        )
        return cls(
            settings=settings, kube=kube or objects.Kube(), endpoints=endpoints.EndpointMap(settings.endpoint_map)
        )

    def reach(self, conn: ConnectionInfo, namespace: str, datastore: str) -> ConnectionInfo:
        """How the operator reaches the managed store ``namespace/datastore`` published as ``conn``."""
        return self.endpoints.resolve(conn, namespace, datastore)

    def reach_service(self, host: str, port: int, namespace: str, service: str) -> tuple[str, int]:
        """Where the operator reaches the Service ``namespace/service`` known in the cluster as ``host:port``
        (a backup volume's server): the development platform serves it locally."""
        found = self.endpoints.lookup(namespace, service, port)
        return (found.host, found.port) if found is not None and not found.unserved else (host, port)


class Reporter(Protocol):
    """How a reconcile tells the world what it did while it runs (the handler layer implements it)."""

    def event(self, reason: str, message: str) -> None:
        """A Normal event: something the operator did (created, repaired, rebuilt)."""

    def warning(self, reason: str, message: str) -> None:
        """A Warning event that does not stop the reconcile."""

    def status_now(self, new: Mapping[str, Any]) -> None:
        """Write ``new`` (a whole status as the kind's status module computes it) at once rather than at
        the end of the handler: a rebuild that takes minutes says so while it runs."""


class Recorder:
    """A Reporter that keeps what it is told (tests, and callers that post nothing)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []  # (type, reason, message)
        self.statuses: list[dict[str, Any]] = []

    def event(self, reason: str, message: str) -> None:
        self.events.append(("Normal", reason, message))

    def warning(self, reason: str, message: str) -> None:
        self.events.append(("Warning", reason, message))

    def status_now(self, new: Mapping[str, Any]) -> None:
        self.statuses.append(dict(new))


M = TypeVar("M", bound=base.Resource)


@dataclass(frozen=True)
class Obj(Generic[M]):
    """One object being reconciled or observed: the body as the API server sent it, its parsed model, and
    where to report progress."""

    body: Mapping[str, Any]
    model: M
    report: Reporter = field(default_factory=Recorder)

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "default")

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def generation(self) -> int | None:
        generation = self.body["metadata"].get("generation")
        return int(generation) if generation is not None else None

    @property
    def status(self) -> Mapping[str, Any]:
        """The status as stored before this handler ran (what a new status is compared with)."""
        return self.body.get("status") or {}

    def owner_reference(self) -> dict[str, Any]:
        return objects.owner_reference(self.body)
