"""The layer contract of operator/mlinfra/__init__.py, checked on the source: imports flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "operator" / "mlinfra"

# layer -> the mlinfra layers it may import (besides itself). Top-level modules are layers of their own.
ALLOWED: dict[str, set[str]] = {
    "api": set(),
    "config": set(),
    "metrics": set(),
    "engines": {"api"},
    "k8s": {"api"},
    "crdgen": {"api"},
    "apidocs": {"api", "crdgen"},
    "argocd": {"api"},
    "stores": {"api", "engines", "k8s"},
    "features": {"api", "engines", "k8s", "stores", "config", "metrics"},
    "registry": {"api", "engines", "k8s", "stores", "config", "metrics"},
    "vectors": {"api", "engines", "k8s", "stores", "config", "metrics"},
    "client": {"api", "engines", "features"},
    "handlers": {"api", "engines", "k8s", "stores", "features", "registry", "vectors", "config", "metrics"},
    "run": {"handlers", "config", "metrics"},
    # The development platform drives the product end to end (the demo reads features with the SDK).
    "devenv": {"api", "engines", "k8s", "stores", "features", "vectors", "client"},
    # Pure rendering of `mlinfra status`: plain dicts in, text out (the CLI fetches).
    "statusview": set(),
    "cli": {"*"},
    "__main__": {"cli"},
    "__init__": set(),
}
KOPF_ALLOWED = {"handlers", "run"}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_imports_flow_one_way() -> None:
    violations = []
    for path in sorted(PKG.rglob("*.py")):
        layer = layer_of(path)
        assert layer in ALLOWED, f"{path.relative_to(PKG)}: unknown layer {layer!r}; add it to the contract"
        allowed = ALLOWED[layer]
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "kopf" and layer not in KOPF_ALLOWED:
                violations.append(f"{path.relative_to(PKG)} imports kopf (only {sorted(KOPF_ALLOWED)} may)")
            if parts[0] != "mlinfra" or len(parts) < 2:
                continue
            target = parts[1]
            is_layer = (PKG / target).is_dir() or (PKG / f"{target}.py").is_file()
            if is_layer and target != layer and "*" not in allowed and target not in allowed:
                violations.append(f"{path.relative_to(PKG)} ({layer}) imports mlinfra.{target}")
    assert violations == []


def test_the_package_is_never_importable_as_operator() -> None:
    # `operator` would shadow the standard library module.
    assert not (PKG.parent / "__init__.py").exists()
