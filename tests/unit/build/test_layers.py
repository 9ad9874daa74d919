"""The layer contract of mlinfra.build.layers, checked on the source: imports flow one way, Kopf stays in
the handler shape, the concepts the shape gave one owner keep it, and the rendered tables are current."""

from __future__ import annotations

import ast
from pathlib import Path

from mlinfra.build import layers

ROOT = Path(__file__).resolve().parents[3]
PKG = ROOT / "operator" / "mlinfra"
KIND_HANDLERS = ("datastore.py", "featureview.py", "modelregistry.py", "vectorindex.py")


def layer_of(path: Path) -> str:
    return path.relative_to(PKG).parts[0].removesuffix(".py")


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


def sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_imports_flow_one_way() -> None:
    violations = []
    for path in sources():
        layer = layer_of(path)
        assert layer in layers.LAYERS, f"{path.relative_to(PKG)}: unknown layer {layer!r}; add it to the contract"
        allowed = layers.LAYERS[layer][0]
        rel = path.relative_to(PKG).as_posix()
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "kopf" and layer not in layers.KOPF_LAYERS:
                violations.append(f"{rel} imports kopf (only {sorted(layers.KOPF_LAYERS)} may)")
            if parts[0] != "mlinfra" or len(parts) < 2:
                continue
            target = parts[1]
            is_layer = (PKG / target).is_dir() or (PKG / f"{target}.py").is_file()
            if is_layer and target != layer and "*" not in allowed and target not in allowed:
                violations.append(f"{rel} ({layer}) imports mlinfra.{target}")
    assert violations == []


def test_kopf_only_in_the_handler_shape() -> None:
    users = {
        p.relative_to(PKG).as_posix() for p in sources() if any(m.split(".")[0] == "kopf" for m in imported_modules(p))
    }
    assert users <= layers.KOPF_MODULES, sorted(users - layers.KOPF_MODULES)


def test_kind_handler_files_are_wiring_only() -> None:
    for name in KIND_HANDLERS:
        path = PKG / "handlers" / name
        assert len(path.read_text().splitlines()) < layers.HANDLER_FILE_MAX_LINES, name
        mlinfra_imports = {m for m in imported_modules(path) if m.startswith("mlinfra.handlers")}
        assert "mlinfra.handlers.kind" in mlinfra_imports, f"{name} does not use the handler shape"


def test_no_module_imports_a_reconciler_but_the_handlers() -> None:
    offenders = [
        f"{p.relative_to(PKG)} imports {m}"
        for p in sources()
        if layer_of(p) != "handlers"
        for m in imported_modules(p)
        if m.startswith("mlinfra.") and m.endswith(".reconcile") and m.split(".")[1] != layer_of(p)
    ]
    assert offenders == []


def test_status_is_written_through_one_path() -> None:
    writers = {
        p.relative_to(PKG).as_posix()
        for p in sources()
        if layer_of(p) not in ("devenv", "build") and 'subresource="status"' in p.read_text()
    }
    assert writers == {"handlers/statuswrite.py"}


def test_concepts_keep_their_one_owner() -> None:
    offenders = []
    for path in sources():
        rel = path.relative_to(PKG).as_posix()
        if layer_of(path) in layers.OWNER_EXEMPT:
            continue
        offenders += [
            f"{rel} imports {m}" for m in imported_modules(path) if m in layers.OWNERS and rel not in layers.OWNERS[m]
        ]
    assert offenders == []


def test_the_endpoint_map_is_development_wiring_of_the_context_only() -> None:
    users = {
        p.relative_to(PKG).as_posix()
        for p in sources()
        if layer_of(p) != "devenv" and "mlinfra.engines.endpoints" in imported_modules(p)
    }
    assert users <= {"context.py"}, sorted(users)


def test_rendered_tables_are_current() -> None:
    assert layers.stale(ROOT) == [], "run `python -m mlinfra.build.layers`"


def test_the_package_is_never_importable_as_operator() -> None:
    # `operator` would shadow the standard library module.
    assert not (PKG.parent / "__init__.py").exists()


def test_the_operator_process_loads_no_generator_and_no_dev_platform() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mlinfra.run, mlinfra.handlers; "
        "print(sorted(m for m in sys.modules if m.startswith(('mlinfra.build', 'mlinfra.devenv'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
