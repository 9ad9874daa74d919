"""Lineage questions on a ModelRegistry's Neo4j graph: what trained a model version, what a dataset or a
FeatureView feeds.

The graph is built by the registry's lineage sync from the outbox (``mlinfra.registry.lineage``); this module
only reads it (read transactions, so a read-only user or a read replica is enough). Answers are frozen
dataclasses in frozensets: compare them as sets, sort them for display.

The graph (``(:Model)-[:HAS_VERSION]->(:ModelVersion)-[:TRAINED_ON|EVALUATED_ON]->(:Dataset)``,
``(:ModelVersion)-[:USES_FEATURE]->(:FeatureView)``, ``(:Deployment)-[:DEPLOYS]->(:ModelVersion)``) is the
sync's; the client layer may not import
``mlinfra.registry`` (tests/unit/build/test_layers.py), so the Cypher here is checked against the sync by the
integration tests.

Several ModelRegistries may share one Neo4j database: every node carries ``registry``
(``<namespace>/<name>`` of its ModelRegistry) and every query here matches only the nodes of this client's
registry, so one registry's client never sees another's models, datasets or deployments. Pass ``registry=``;
without it (the API before registries were scoped) the client reads the one registry the database holds, and
refuses when it holds several.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from typing import Any, LiteralString

import neo4j

from mlinfra.client import connections
from mlinfra.engines import connection


@dataclasses.dataclass(frozen=True, order=True)
class VersionRef:
    model: str
    version: int


@dataclasses.dataclass(frozen=True, order=True)
class DatasetLink:
    """A dataset and how the version used it (TRAINED_ON or EVALUATED_ON)."""

    name: str
    version: str
    relation: str


@dataclasses.dataclass(frozen=True, order=True)
class FeatureViewRef:
    namespace: str
    name: str


@dataclasses.dataclass(frozen=True, order=True)
class VersionLink:
    """A model version and how it used the dataset or FeatureView asked about."""

    model: str
    version: int
    relation: str


@dataclasses.dataclass(frozen=True, order=True)
class DeploymentRef:
    id: int
    model: str
    version: int
    environment: str
    retired: bool = False


@dataclasses.dataclass(frozen=True)
class Upstream:
    """What went into a model version."""

    datasets: frozenset[DatasetLink]
    feature_views: frozenset[FeatureViewRef]

    @property
    def trained_on(self) -> frozenset[DatasetLink]:
        return frozenset(d for d in self.datasets if d.relation == "TRAINED_ON")


@dataclasses.dataclass(frozen=True)
class Downstream:
    """What a dataset or a FeatureView feeds: model versions, and the deployments of those versions."""

    versions: frozenset[VersionLink]
    deployments: frozenset[DeploymentRef]

    @property
    def models(self) -> frozenset[str]:
        return frozenset(v.model for v in self.versions)


# -- Cypher: the graph model of mlinfra.registry.lineage ---------------------------------------------------
# Every node pattern carries ``registry: $registry`` (tests/unit/client/test_client_lineage.py checks it).

UPSTREAM_DATASETS: LiteralString = """
MATCH (:Model {registry: $registry, name: $model})-[:HAS_VERSION]->
      (mv:ModelVersion {registry: $registry, version: $version})-[r:TRAINED_ON|EVALUATED_ON]->
      (d:Dataset {registry: $registry})
RETURN d.name AS name, d.version AS version, type(r) AS relation
"""
UPSTREAM_FEATURE_VIEWS: LiteralString = """
MATCH (:Model {registry: $registry, name: $model})-[:HAS_VERSION]->
      (mv:ModelVersion {registry: $registry, version: $version})-[:USES_FEATURE]->(f:FeatureView {registry: $registry})
RETURN f.namespace AS namespace, f.name AS name
"""
VERSION_EXISTS: LiteralString = """
MATCH (:Model {registry: $registry, name: $model})-[:HAS_VERSION]->
      (mv:ModelVersion {registry: $registry, version: $version})
RETURN count(mv) AS n
"""
DATASET_VERSIONS: LiteralString = """
MATCH (m:Model {registry: $registry})-[:HAS_VERSION]->(mv:ModelVersion {registry: $registry})
      -[r:TRAINED_ON|EVALUATED_ON]->(d:Dataset {registry: $registry, name: $name})
WHERE $version IS NULL OR d.version = $version
RETURN mv.id AS id, m.name AS model, mv.version AS version, type(r) AS relation
"""
FEATURE_VIEW_VERSIONS: LiteralString = """
MATCH (m:Model {registry: $registry})-[:HAS_VERSION]->(mv:ModelVersion {registry: $registry})
      -[r:USES_FEATURE]->(:FeatureView {registry: $registry, namespace: $namespace, name: $name})
RETURN mv.id AS id, m.name AS model, mv.version AS version, type(r) AS relation
"""
DEPLOYMENTS_OF: LiteralString = """
MATCH (m:Model {registry: $registry})-[:HAS_VERSION]->(mv:ModelVersion {registry: $registry})
      <-[:DEPLOYS]-(dep:Deployment {registry: $registry})
WHERE mv.id IN $ids
RETURN dep.id AS id, m.name AS model, mv.version AS version, dep.environment AS environment,
       dep.retired_at IS NOT NULL AS retired
"""
# The registries whose graphs the database holds (one LineageRegistry node each, written by the sync).
REGISTRIES: LiteralString = """
MATCH (r:LineageRegistry) RETURN r.registry AS registry ORDER BY registry LIMIT 2
"""

REGISTRY_PATTERN = re.compile(r"[^/\s]+/[^/\s]+")  # as mlinfra.registry.lineage: <namespace>/<name>


class Lineage:
    """Read-only lineage queries on the registry's Neo4j graph.

    ``graph``: a ``neo4j.Driver`` (kept open: the caller owns it), or the lineage store's connection (a
    ``ConnectionInfo``, its mounted Secret directory or a dict of its keys; the driver is then opened here and
    closed by :meth:`close`, or ``with``). ``registry``: the ModelRegistry, ``"<namespace>/<name>"``; only
    its nodes are read. Without it (deprecated) the database must hold the graph of one registry only, which
    is then read; with several, every query raises ValueError. ``database``: the Neo4j database (default:
    the connection's).
    """

    def __init__(
        self,
        graph: neo4j.Driver | connections.ConnectionSource,
        *,
        registry: str | None = None,
        database: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if registry is None:
            warnings.warn(
                "Lineage() without registry='<namespace>/<name>' reads the one registry of the database and "
                "fails when it holds several: pass registry=",
                DeprecationWarning,
                stacklevel=2,
            )
        elif not REGISTRY_PATTERN.fullmatch(registry):
            raise ValueError(f"registry must be '<namespace>/<name>' of the ModelRegistry, got {registry!r}")
        self._registry = registry
        self._stack = contextlib.ExitStack()
        if isinstance(graph, neo4j.Driver):
            self.driver = graph
            self.database = database
        else:
            info = connections.expect_engine(connections.resolve(graph), "neo4j", "lineage")
            self.driver = open_driver(info, timeout, self._stack)
            self.database = database or info.database or None

    def upstream(self, model: str, version: int) -> Upstream:
        """The datasets (with TRAINED_ON / EVALUATED_ON) and FeatureViews behind ``model`` version ``version``.

        Raises LookupError when the graph has no such version (unknown, or not synced yet).
        """
        params = {"model": model, "version": version}
        if self._read(VERSION_EXISTS, params)[0]["n"] == 0:
            raise LookupError(
                f"the lineage graph has no version {version} of model {model!r} (unknown, or not synced yet)"
            )
        datasets = frozenset(
            DatasetLink(r["name"], r["version"], r["relation"]) for r in self._read(UPSTREAM_DATASETS, params)
        )
        views = frozenset(FeatureViewRef(r["namespace"], r["name"]) for r in self._read(UPSTREAM_FEATURE_VIEWS, params))
        return Upstream(datasets, views)

    def downstream_of_dataset(self, name: str, version: str | None = None) -> Downstream:
        """The model versions trained or evaluated on dataset ``name`` (any version, or only ``version``;
        ``''`` is the unversioned one) and their deployments. Empty for an unknown dataset."""
        return self._downstream(self._read(DATASET_VERSIONS, {"name": name, "version": version}))

    def downstream_of_feature_view(self, namespace: str, name: str) -> Downstream:
        """The model versions using the FeatureView ``namespace/name`` and their deployments."""
        return self._downstream(self._read(FEATURE_VIEW_VERSIONS, {"namespace": namespace, "name": name}))

    def _downstream(self, rows: list[dict[str, Any]]) -> Downstream:
        versions = frozenset(VersionLink(r["model"], r["version"], r["relation"]) for r in rows)
        ids = sorted({r["id"] for r in rows})
        deployments = (
            frozenset(
                DeploymentRef(r["id"], r["model"], r["version"], r["environment"], r["retired"])
                for r in self._read(DEPLOYMENTS_OF, {"ids": ids})
            )
            if ids
            else frozenset()
        )
        return Downstream(versions, deployments)

    @property
    def registry(self) -> str | None:
        """The registry whose graph this client reads (without ``registry=``: the database's one registry,
        None while it holds none)."""
        if self._registry is None:
            found = [r["registry"] for r in self._query(REGISTRIES, {})]
            if len(found) > 1:
                raise ValueError(
                    "the lineage database holds the graphs of several ModelRegistries: "
                    "pass Lineage(..., registry='<namespace>/<name>')"
                )
            if not found:
                return None  # nothing synced yet: every answer is empty; looked up again on the next call
            self._registry = str(found[0])
        return self._registry

    def _read(self, query: LiteralString, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self._query(query, {**params, "registry": self.registry})

    def _query(self, query: LiteralString, params: dict[str, Any]) -> list[dict[str, Any]]:
        records, _, _ = self.driver.execute_query(
            query, params, database_=self.database, routing_=neo4j.RoutingControl.READ
        )
        return [record.data() for record in records]

    def close(self) -> None:
        """Close the driver if this object opened it."""
        self._stack.close()

    def __enter__(self) -> Lineage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_driver(info: connections.ConnectionInfo, timeout: float, stack: contextlib.ExitStack) -> neo4j.Driver:
    """A Neo4j driver for a neo4j connection, closed (with its CA file) when ``stack`` closes."""
    return stack.enter_context(connection.neo4j_driver(info, timeout))
