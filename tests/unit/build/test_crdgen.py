"""crdgen: the generated CRDs are structural, bounded, complete and committed; --check catches drift."""

from __future__ import annotations

import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
import yaml
from typer import testing

from mlinfra import api, cli
from mlinfra.api import base
from mlinfra.build import apidocs, crdgen

pytestmark = pytest.mark.unit

ROOT = crdgen.repo_root()
CRDS = {kind.crd_info.kind: crdgen.build_crd(kind) for kind in api.KINDS}
# Keywords pydantic emits that a structural schema must not contain (or that the API server rejects).
FORBIDDEN = {"$ref", "$defs", "oneOf", "allOf", "not", "const", "title", "uniqueItems", "discriminator",
             "propertyNames", "nullable", "examples", "prefixItems"}  # fmt: skip


def root_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "", in_list: bool = False) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Every schema node with its path and whether it is (inside) a list item."""
    yield path, node, in_list
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}", in_list)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]", True)
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}", in_list)


ALL_NODES = [
    pytest.param(kind, path, node, in_list, id=f"{kind}{path}")
    for kind in CRDS
    for path, node, in_list in walk(root_schema(kind))
    if path not in {"", ".apiVersion", ".kind", ".metadata"}
]


@pytest.mark.parametrize(("kind", "path", "node", "in_list"), ALL_NODES)
def test_schema_nodes_are_structural_and_bounded(kind: str, path: str, node: dict[str, Any], in_list: bool) -> None:
    assert not FORBIDDEN & set(node), f"{kind}{path}: {sorted(FORBIDDEN & set(node))}"
    assert node.get("additionalProperties", {}) not in (True, False)
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        assert isinstance(node.get(key, True), bool), "OpenAPI v3.0 wants the boolean form"
    if node.get("x-kubernetes-int-or-string"):
        assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}] and "type" not in node
        assert "maxLength" in node
    else:
        assert "anyOf" not in node
        assert node["type"] in {"object", "array", "string", "integer", "number", "boolean"}
    if node.get("type") == "string":
        assert "maxLength" in node or "enum" in node or node.get("format") == "date-time"
    if node.get("type") == "array":
        assert "maxItems" in node
    if node.get("type") == "object":
        assert "properties" in node or "maxProperties" in node
    if in_list:
        assert "default" not in node, "defaults inside list items drift forever under Argo CD"
    for name, child in node.get("properties", {}).items():
        assert child.get("description"), f"{kind}{path}.{name} has no description"


@pytest.mark.parametrize("kind", CRDS)
def test_crd_metadata(kind: str) -> None:
    crd = CRDS[kind]
    resource = next(r for r in api.KINDS if r.crd_info.kind == kind)
    info = resource.crd_info
    assert crd["metadata"]["name"] == f"{info.plural}.mlinfra.io"
    spec = crd["spec"]
    assert spec["group"] == "mlinfra.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["categories"] == ["mlinfra"]
    assert spec["names"]["kind"] == kind == resource.model_fields["kind"].default
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert root_schema(kind)["required"] == ["spec"]


def test_short_names() -> None:
    assert {kind: crd["spec"]["names"]["shortNames"] for kind, crd in CRDS.items()} == {
        "DataStore": ["ds", "dstore"],
        "FeatureView": ["fv"],
        "ModelRegistry": ["mr"],
        "VectorIndex": ["vi"],
        "Backup": ["mlbackup"],
    }


@pytest.mark.parametrize(
    ("kind", "figures"),
    [
        (
            "DataStore",
            {"Engine": ".spec.engine", "Mode": ".status.mode", "Max Lag": ".status.replication.maxLagSeconds"},
        ),
        ("FeatureView", {"Lag": ".status.freshness.lagSeconds"}),
        ("ModelRegistry", {"Schema": ".status.schemaVersion", "Pending": ".status.lineage.pendingEvents"}),
        ("VectorIndex", {"Points": ".status.points", "Collection": ".status.activeCollection"}),
    ],
)
def test_printer_columns(kind: str, figures: dict[str, str]) -> None:
    columns = {c["name"]: c for c in CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
        "description": "Time since creation.",
    }
    assert list(columns)[-1] == "Age"
    for name, json_path in figures.items():
        assert columns[name]["jsonPath"] == json_path
        assert columns[name].get("priority", 0) == 0, f"{name} should show in plain kubectl get"
    # Every column points at a field the schema has, of the column's type (a typo shows an empty column).
    for column in columns.values():
        if not column["jsonPath"].startswith(".metadata."):
            node = schema_for_json_path(kind, column["jsonPath"])
            assert node["type"] == {"date": "string"}.get(column["type"], column["type"]), column


def schema_for_json_path(kind: str, json_path: str) -> dict[str, Any]:
    node = root_schema(kind)
    for name, list_filter in re.findall(r"\.(\w+)(\[\?[^\]]*\])?", json_path):
        node = node["properties"][name]
        if list_filter:
            node = node["items"]
    return node


@pytest.mark.parametrize("kind", CRDS)
def test_conditions_are_a_bounded_map_list(kind: str) -> None:
    status = root_schema(kind)["properties"]["status"]["properties"]
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["maxItems"] == 16
    assert conditions["items"]["required"] == ["type", "status", "lastTransitionTime", "reason", "message"]
    assert status["observedGeneration"]["type"] == "integer"


def rules_at(kind: str, *path: str) -> list[str]:
    node = root_schema(kind)
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    return [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]


def test_cel_rules_sit_where_they_apply() -> None:
    assert rules_at("DataStore", "spec", "engine") == ["self == oldSelf"]
    ds_rules = rules_at("DataStore", "spec")
    assert "has(self.managed) != has(self.external)" in ds_rules
    assert any("'neo4j'" in rule and "replicas == 1" in rule for rule in ds_rules)
    assert rules_at("FeatureView", "spec", "entities") == ["self == oldSelf"]
    assert "x-kubernetes-list-type" in root_schema("FeatureView")["properties"]["spec"]["properties"]["entities"]
    assert rules_at("VectorIndex", "spec", "vectors", "size") == ["self > 0"]
    assert not rules_at("VectorIndex", "spec", "vectors"), "size/distance changes must stay allowed (rebuild)"
    assert rules_at("FeatureView", "spec", "online", "ttl")[0].startswith("self.matches(")
    assert rules_at("FeatureView", "spec", "materialization", "schedule")[0].startswith("self.matches(")
    assert rules_at("ModelRegistry", "spec", "lineageSync", "interval")[0].startswith("self.matches(")


@pytest.mark.parametrize("kind", CRDS)
def test_every_cel_rule_has_a_message(kind: str) -> None:
    for _, node, _ in walk(root_schema(kind)):
        for rule in node.get("x-kubernetes-validations", []):
            assert len(rule["message"]) > 10, rule


def test_committed_files_are_current() -> None:
    assert crdgen.stale(ROOT) == []
    for name, text in crdgen.render_all().items():
        assert (ROOT / "crds" / name).read_text() == text
        assert (ROOT / "charts/mlinfra-operator/crds" / name).read_text() == text
        assert yaml.safe_load(text) == CRDS[yaml.safe_load(text)["spec"]["names"]["kind"]]


@pytest.fixture
def checkout(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of the committed CRD directories."""
    for directory in crdgen.TARGET_DIRS:
        shutil.copytree(ROOT / directory, tmp_path / directory)
    # The API reference is generated and checked with the CRDs.
    (tmp_path / apidocs.PATH).parent.mkdir(parents=True)
    shutil.copy(ROOT / apidocs.PATH, tmp_path / apidocs.PATH)
    return tmp_path


def run_cli(*args: str) -> Any:
    return testing.CliRunner().invoke(cli.app, ["crds", *args])


def test_check_passes_on_the_committed_files(checkout: pathlib.Path) -> None:
    result = run_cli("--check", "--root", str(checkout))
    assert result.exit_code == 0, result.output
    assert run_cli("--check").exit_code == 0


def test_check_fails_on_an_edited_file_and_names_it(checkout: pathlib.Path) -> None:
    edited = checkout / "charts/mlinfra-operator/crds/featureviews.mlinfra.io.yaml"
    edited.write_text(edited.read_text().replace("maxItems: 8", "maxItems: 9"))
    result = run_cli("--check", "--root", str(checkout))
    assert result.exit_code == 1
    assert "charts/mlinfra-operator/crds/featureviews.mlinfra.io.yaml" in result.output
    assert "crds/datastores" not in result.output
    assert crdgen.stale(checkout) == [edited]


def test_check_fails_on_missing_and_left_over_files(checkout: pathlib.Path) -> None:
    (checkout / "crds/vectorindexes.mlinfra.io.yaml").unlink()
    (checkout / "crds/widgets.mlinfra.io.yaml").write_text("old kind\n")
    assert sorted(p.name for p in crdgen.stale(checkout)) == [
        "vectorindexes.mlinfra.io.yaml",
        "widgets.mlinfra.io.yaml",
    ]
    result = run_cli("--check", "--root", str(checkout))
    assert result.exit_code == 1 and "widgets" in result.output


def test_generate_repairs_and_is_idempotent(checkout: pathlib.Path) -> None:
    (checkout / "crds/vectorindexes.mlinfra.io.yaml").write_text("edited\n")
    (checkout / "crds/widgets.mlinfra.io.yaml").write_text("old kind\n")
    result = run_cli("--root", str(checkout))
    assert result.exit_code == 0
    assert "crds/vectorindexes.mlinfra.io.yaml" in result.output
    assert not (checkout / "crds/widgets.mlinfra.io.yaml").exists()
    assert crdgen.stale(checkout) == []
    assert crdgen.write(checkout) == [], "a second run must change nothing"


def test_generate_into_an_empty_tree(tmp_path: pathlib.Path) -> None:
    written = crdgen.write(tmp_path)
    assert len(written) == 2 * len(api.KINDS) + 1  # + crds/Kustomization
    assert crdgen.stale(tmp_path) == []


def test_crds_dir_has_a_kustomization_that_kubectl_apply_f_skips() -> None:
    kustomization = yaml.safe_load((ROOT / "crds" / "Kustomization").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == sorted(crdgen.render_all())
    # `kubectl apply -f crds/` reads only *.json, *.yaml and *.yml; Helm's crds/ must hold CRDs only.
    assert not list((ROOT / "crds").glob("kustomization.y*ml"))
    assert sorted(p.name for p in (ROOT / "charts/mlinfra-operator/crds").iterdir()) == sorted(crdgen.render_all())


def test_check_catches_a_stale_kustomization(checkout: pathlib.Path) -> None:
    path = checkout / "crds" / "Kustomization"
    path.write_text(path.read_text().replace("- vectorindexes.mlinfra.io.yaml\n", ""))
    assert crdgen.stale(checkout) == [path]
    path.unlink()
    assert crdgen.stale(checkout) == [path]
    assert crdgen.write(checkout) == [path]


def test_output_is_deterministic() -> None:
    assert crdgen.render_all() == crdgen.render_all()
    text = crdgen.render_all()["datastores.mlinfra.io.yaml"]
    assert text.startswith("# Generated by `mlinfra crds`")


class _Unbounded(base.SpecModel):
    name: str = pydantic.Field(description="No max_length.")


class _UnboundedList(base.SpecModel):
    names: list[int] = pydantic.Field(description="No max_length.")


class _Item(base.SpecModel):
    weight: int = pydantic.Field(default=1, description="A default inside a list item.")


class _DefaultInList(base.SpecModel):
    items: list[_Item] = pydantic.Field(max_length=3, description="Items.")


class _Union(base.SpecModel):
    value: int | bool = pydantic.Field(description="Not int-or-string.")


class _Undescribed(base.SpecModel):
    value: int


class _PropertyNames(base.SpecModel):
    labels: dict[pydantic.constr(max_length=3), int] = pydantic.Field(max_length=3, description="Keys bounded.")  # type: ignore[valid-type]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Unbounded, r"\.name: unbounded string"),
        (_UnboundedList, r"\.names: unbounded array"),
        (_DefaultInList, r"\.items\[\]\.weight: no defaults inside list items"),
        (_Union, r"\.value: a union other than `X \| None`"),
        (_Undescribed, r"\.value: every field needs a description"),
        (_PropertyNames, "keyword 'propertyNames'"),
    ],
)
def test_generator_refuses_what_a_crd_must_not_contain(model: type[base.CamelModel], message: str) -> None:
    with pytest.raises(crdgen.SchemaError, match=message):
        crdgen.model_schema(model, "")


def test_optional_fields_are_not_nullable_and_have_no_null_default() -> None:
    spec = root_schema("DataStore")["properties"]["spec"]["properties"]
    assert spec["managed"]["type"] == "object" and "default" not in spec["managed"]
    assert spec["deletionPolicy"]["default"] == "Retain"
    size = root_schema("VectorIndex")["properties"]["spec"]["properties"]["vectors"]["properties"]["size"]
    assert size == {
        "type": "integer",
        "maximum": 65536,
        "description": size["description"],
        "x-kubernetes-validations": [{"rule": "self > 0", "message": size["x-kubernetes-validations"][0]["message"]}],
    }
