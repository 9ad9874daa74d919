"""docs/api-reference.md is generated from the models and committed up to date."""

from __future__ import annotations

from mlinfra import api
from mlinfra.build import apidocs, crdgen


def test_committed_reference_is_up_to_date() -> None:
    assert not apidocs.stale(crdgen.repo_root()), "run `mlinfra crds` and commit docs/api-reference.md"


def test_reference_covers_every_kind_field_and_rule() -> None:
    text = apidocs.render()
    for kind in api.KINDS:
        assert f"## {kind.crd_info.kind}" in text
    assert "| `spec.engine` | string | yes |" in text
    assert "spec.engine is immutable" in text  # a CEL rule's message
    assert "default `false`" in text
