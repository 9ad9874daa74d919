"""Every example a user copies (manifests/samples, the kind guides in docs/) passes the models, name rules
included: what the API server would accept from them the operator accepts too."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest
import yaml

from mlinfra import api

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[3]
MODELS = {kind.crd_info.kind: kind for kind in api.KINDS}


def _docs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((ROOT / "manifests" / "samples").glob("*.yaml")):
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    for path in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S):
            try:
                docs = [doc for doc in yaml.safe_load_all(block) if doc]
            except yaml.YAMLError:
                continue  # a fragment (e.g. with ... elisions), not a whole object
            found += [(path.name, doc) for doc in docs if isinstance(doc, dict)]
    return [(where, doc) for where, doc in found if doc.get("kind") in MODELS and "spec" in doc]


SAMPLES = _docs()


def test_there_are_samples_of_every_kind() -> None:
    assert {doc["kind"] for _, doc in SAMPLES} == set(MODELS)


@pytest.mark.parametrize("doc", [pytest.param(doc, id=f"{where}:{doc['metadata']['name']}") for where, doc in SAMPLES])
def test_sample_is_valid(doc: dict[str, Any]) -> None:
    MODELS[doc["kind"]].model_validate(doc)
