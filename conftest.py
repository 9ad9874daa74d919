"""Root conftest: the platform fixtures, one pytest marker per test tier (taken from the directory), and the
``qdrant`` marker on every test that talks to Qdrant (``pytest -m qdrant`` with ``QDRANT_URL`` runs them against
a real server)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["mlinfra.devenv.pytest_plugin"]

_ROOT = Path(__file__).parent
# The most specific prefix first: e2e/real/ is its own tier (Pods on the real node), not e2e.
_TIERS = {"tests/unit": "unit", "tests/integration": "integration", "e2e/real": "real", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(item.path).resolve().relative_to(_ROOT).as_posix()
        for prefix, marker in _TIERS.items():
            if rel.startswith(prefix + "/"):
                item.add_marker(marker)
                break
        if "qdrant_space" in getattr(item, "fixturenames", ()):
            item.add_marker("qdrant")
