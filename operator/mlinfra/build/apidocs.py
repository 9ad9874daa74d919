"""docs/api-reference.md, generated from the same schemas as the CRDs: the docs quote the models.

``mlinfra crds`` writes it and ``mlinfra crds --check`` fails when it is stale, like the CRD files.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

from mlinfra import api
from mlinfra.api import base
from mlinfra.build import crdgen

PATH = pathlib.Path("docs") / "api-reference.md"
HEADER = """# API reference (mlinfra.io/v1alpha1)

Generated from the pydantic models in `operator/mlinfra/api/` by `mlinfra crds`; do not edit by hand.
The same schemas are in `crds/`, so `kubectl explain <kind>.spec` shows the same descriptions.
"""


def _type(node: Mapping[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node:
        return f"map of {_type(node['additionalProperties'])}"
    return kind


def _constraints(node: Mapping[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "default" in node:
        parts.append(f"default `{json.dumps(node['default'])}`")
    for key, label in (("minimum", "min"), ("maximum", "max"), ("maxLength", "max length"), ("maxItems", "max items")):
        if key in node:
            parts.append(f"{label} {node[key]}")
    return "; ".join(parts)


def _rows(node: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, str, bool, str, str]]:
    required = set(node.get("required", ()))
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}.{name}"
        yield path, _type(child), name in required, str(child.get("description", "")), _constraints(child)
        if child.get("type") == "array" and "properties" in child.get("items", {}):
            yield from _rows(child["items"], f"{path}[]")
        elif "properties" in child:
            yield from _rows(child, path)


def _rules(node: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, str]]:
    for rule in node.get("x-kubernetes-validations", ()):
        yield prefix, str(rule["message"])
    for name, child in node.get("properties", {}).items():
        yield from _rules(child, f"{prefix}.{name}")
        if child.get("type") == "array":
            yield from _rules(child.get("items", {}), f"{prefix}.{name}[]")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_kind(resource: type[base.Resource]) -> str:
    crd = crdgen.build_crd(resource)
    info = resource.crd_info
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    names = crd["spec"]["names"]
    lines = [
        f"## {info.kind}",
        "",
        info.description,
        "",
        f"Plural `{names['plural']}`, short names {', '.join(f'`{n}`' for n in names.get('shortNames', []))}, "
        f"categories {', '.join(f'`{c}`' for c in names.get('categories', []))}.",
        "",
    ]
    for part in ("spec", "status"):
        lines += [
            f"### {part}",
            "",
            "| field | type | required | description | constraints |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| `{_cell(p)}` | {_cell(t)} | {'yes' if r else ''} | {_cell(d)} | {_cell(c)} |"
            for p, t, r, d, c in _rows(schema[part], part)
        ]
        lines.append("")
    rules = [("metadata.name", rule.message) for rule in resource.root_rules()] + list(_rules(schema["spec"], "spec"))
    if rules:
        lines += ["### Validation rules (enforced by the API server)", ""]
        lines += [f"- `{path}`: {message}" for path, message in rules]
        lines.append("")
    return "\n".join(lines)


def render() -> str:
    return HEADER + "\n" + "\n".join(render_kind(kind) for kind in api.KINDS)


def write(root: pathlib.Path) -> bool:
    path = root / PATH
    text = render()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def stale(root: pathlib.Path) -> bool:
    path = root / PATH
    return not path.is_file() or path.read_text(encoding="utf-8") != render()
