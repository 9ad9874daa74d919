"""Test files need distinct names across tiers: pytest's default import mode cannot load two test modules
with the same basename from directories without __init__.py (the run stops at collection)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_test_module_names_are_unique() -> None:
    names = Counter(p.name for d in ("tests", "e2e") for p in (ROOT / d).rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []


def test_the_unit_tier_mirrors_the_package() -> None:
    # tests/unit/<package>/ holds the tests of operator/mlinfra/<package>/; what tests the repository (the
    # chart, the Dockerfile, the system packages) stays at the top of tests/unit.
    package = ROOT / "operator" / "mlinfra"
    dirs = {
        p.name
        for p in (ROOT / "tests" / "unit").iterdir()
        if p.is_dir() and p.name not in ("fixtures",) and not p.name.startswith((".", "__"))
    }
    assert dirs and all((package / d).is_dir() for d in dirs), sorted(d for d in dirs if not (package / d).is_dir())
