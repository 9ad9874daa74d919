"""probe(conn) dispatches on the engine; the engine layer imports no Kubernetes library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mlinfra.engines import connection, observation, probe

ENGINES_DIR = Path(probe.__file__).parent
OWN_MODULES = ("__init__", "connection", "observation", "probe", "redis", "postgres", "neo4j", "qdrant")


@pytest.mark.parametrize("engine", ["redis", "postgres", "neo4j", "qdrant"])
def test_probe_dispatches_on_the_engine(engine: connection.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float]] = []

    def fake(conn: connection.ConnectionInfo, timeout: float) -> observation.Observation:
        seen.append((conn.engine, timeout))
        return observation.Observation.unreachable("fake")

    monkeypatch.setitem(probe.PROBES, engine, fake)
    conn = connection.ConnectionInfo.for_engine(engine, "h", "pw")
    assert probe.probe(conn, timeout=1.5).error == "fake"
    assert seen == [(engine, 1.5)]


def test_every_engine_has_a_probe() -> None:
    assert set(probe.PROBES) == {"redis", "postgres", "neo4j", "qdrant"}


async def test_probe_async_runs_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(probe.PROBES, "redis", lambda conn, timeout: observation.Observation.unreachable("x"))
    obs = await probe.probe_async(connection.ConnectionInfo.for_engine("redis", "h", "pw"))
    assert obs.error == "x"


@pytest.mark.parametrize("module", OWN_MODULES)
def test_engine_modules_import_neither_kopf_nor_kubernetes(module: str) -> None:
    tree = ast.parse((ENGINES_DIR / f"{module}.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"kopf", "kubernetes", "kubernetes_asyncio"}
