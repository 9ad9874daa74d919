"""Neo4j: version and edition from dbms.components(), capabilities from procedure names."""

from __future__ import annotations

from typing import Any

import pytest

from mlinfra.engines import neo4j


def test_parse_components_reads_the_kernel() -> None:
    components = [{"name": "Neo4j Kernel", "versions": ["5.26.30"], "edition": "community"}]
    assert neo4j.parse_components(components) == ("5.26.30", "community")


def test_parse_components_normalises_the_edition_and_ignores_other_components() -> None:
    components: list[dict[str, Any]] = [
        {"name": "Other", "versions": ["1"], "edition": "x"},
        {"name": "Neo4j Kernel", "versions": ["5.26.0"], "edition": "Enterprise"},
    ]
    assert neo4j.parse_components(components) == ("5.26.0", "enterprise")


def test_parse_components_without_a_kernel_knows_nothing() -> None:
    assert neo4j.parse_components([]) == (None, None)
    assert neo4j.parse_components([{"name": "Neo4j Kernel", "versions": [], "edition": None}]) == (None, None)


@pytest.mark.parametrize(
    ("names", "capabilities"),
    [
        ([], []),
        (["apoc.help", "apoc.create.node"], ["apoc"]),
        (["gds.pageRank.stream", "apoc.help"], ["apoc", "gds"]),
        (["db.labels", "dbms.components"], []),
    ],
)
def test_capabilities_from_procedures(names: list[str], capabilities: list[str]) -> None:
    assert neo4j.capabilities_from_procedures(names) == capabilities
