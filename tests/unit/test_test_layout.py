"""Test files need distinct names across tiers: pytest's default import mode cannot load two test modules
with the same basename from directories without __init__.py (the run stops at collection)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_test_module_names_are_unique() -> None:
    names = Counter(p.name for d in ("tests", "e2e") for p in (ROOT / d).rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
