"""The lineage client's pure parts: every query stays within the client's registry, and which registry a
client reads (a fake driver: no Neo4j here; the queries run for real in tests/integration)."""

from __future__ import annotations

import re
from typing import Any
from unittest import mock

import neo4j
import pytest

from mlinfra.client import lineage

QUERIES = {
    name: getattr(lineage, name)
    for name in (
        "UPSTREAM_DATASETS",
        "UPSTREAM_FEATURE_VIEWS",
        "VERSION_EXISTS",
        "DATASET_VERSIONS",
        "FEATURE_VIEW_VERSIONS",
        "DEPLOYMENTS_OF",
    )
}
NODE_PATTERN = re.compile(r"\(\s*\w*\s*:\s*(\w+)\s*(\{[^}]*\})?\s*\)")


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_node_a_query_reads_is_one_of_the_clients_registry(name: str) -> None:
    """Several registries share one Neo4j database with overlapping ids and names: a labelled node without
    ``registry`` in a query would let one registry's client see another's."""
    patterns = list(NODE_PATTERN.finditer(QUERIES[name]))
    assert patterns
    for match in patterns:
        assert match.group(2) and "registry: $registry" in match.group(2), match.group(0)


class FakeDriver:
    """Answers LineageRegistry lookups with ``registries`` and records the parameters of every other query."""

    def __init__(self, registries: list[str]) -> None:
        self.registries = registries
        self.params: list[dict[str, Any]] = []
        self.driver = mock.create_autospec(neo4j.Driver, instance=True)
        self.driver.execute_query.side_effect = self.execute_query

    def execute_query(self, query: str, params: dict[str, Any], **_: Any) -> tuple[list[Any], None, None]:
        if "LineageRegistry" in query:
            return [self.record({"registry": r}) for r in self.registries], None, None
        self.params.append(params)
        return ([self.record({"n": 0})] if "count(mv)" in query else []), None, None  # an empty graph

    @staticmethod
    def record(data: dict[str, Any]) -> Any:
        out = mock.Mock()
        out.data.return_value = data
        out.__getitem__ = lambda _, key: data[key]
        return out


def test_a_client_reads_the_registry_it_is_given() -> None:
    fake = FakeDriver(["team-a/models", "team-b/models"])
    client = lineage.Lineage(fake.driver, registry="team-b/models")
    assert client.registry == "team-b/models"
    with pytest.raises(LookupError):
        client.upstream("churn", 1)
    assert fake.params and {p["registry"] for p in fake.params} == {"team-b/models"}


@pytest.mark.parametrize("bad", ["models", "a/b/c", "/models", "team a/models"])
def test_a_registry_that_is_not_namespace_slash_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="<namespace>/<name>"):
        lineage.Lineage(FakeDriver([]).driver, registry=bad)


def test_without_a_registry_the_databases_one_registry_is_read_and_several_are_refused() -> None:
    one = FakeDriver(["team-a/models"])
    with pytest.warns(DeprecationWarning, match="registry="):
        client = lineage.Lineage(one.driver)
    client.downstream_of_dataset("events")
    assert [p["registry"] for p in one.params] == ["team-a/models"]

    none = FakeDriver([])
    with pytest.warns(DeprecationWarning):
        client = lineage.Lineage(none.driver)
    assert client.registry is None  # nothing synced yet: queries match nothing
    none.registries.append("team-a/models")  # looked up again: the first sync came
    assert client.registry == "team-a/models"

    several = FakeDriver(["team-a/models", "team-b/models"])
    with pytest.warns(DeprecationWarning):
        client = lineage.Lineage(several.driver)
    with pytest.raises(ValueError, match="several ModelRegistries"):
        client.downstream_of_feature_view("ml", "user-stats")
    assert several.params == []  # nothing was read
