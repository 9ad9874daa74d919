"""The layer contract of the package, the one source of it: which layer may import which, and what the
handler shape forbids. ``tests/unit/build/test_layers.py`` checks the code against it; the table in
``mlinfra/__init__.py`` and ``docs/architecture.md`` is rendered from it (``python -m mlinfra.build.layers``
rewrites both, ``--check`` fails when either is stale, and the unit tests run the check).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from collections.abc import Sequence

# layer -> (the mlinfra layers it may import besides itself, what it owns). Top-level modules are layers of
# their own. Order: from the bottom (the API models) up.
LAYERS: dict[str, tuple[frozenset[str], str]] = {
    "api": (frozenset(), "pydantic models of the four kinds: the single source of the CRDs"),
    "config": (frozenset(), "the operator's settings (flags, then environment)"),
    "metrics": (frozenset(), "the Prometheus metrics the operator exports"),
    "engines": (frozenset({"api"}), "one database engine each: connections, probes, names, rendered Pods"),
    "k8s": (frozenset({"api"}), "the Kubernetes API: objects (Kube), conditions, patches, sync Jobs"),
    "backup": (
        frozenset({"api", "engines"}),
        "backups of every engine: targets (S3, volume), sealed objects, the catalog, retention, take and restore",
    ),
    "problems": (frozenset({"k8s"}), "Problem, the shared reasons, parse, the kstatus summary"),
    "context": (
        frozenset({"api", "config", "engines", "k8s"}),
        "what every reconcile is given: settings, the Kube client, dev wiring; Obj, Reporter",
    ),
    "stores": (
        frozenset({"api", "backup", "config", "context", "engines", "k8s", "metrics", "problems"}),
        "DataStore: reconcile, observe, status; Secrets, credentials, store references, sync-command support",
    ),
    "features": (
        frozenset({"api", "config", "context", "engines", "k8s", "metrics", "problems", "stores"}),
        "FeatureView: offline schema, materialization, freshness",
    ),
    "registry": (
        frozenset({"api", "config", "context", "engines", "k8s", "metrics", "problems", "stores"}),
        "ModelRegistry: migrations, roles, lineage",
    ),
    "vectors": (
        frozenset({"api", "config", "context", "engines", "k8s", "metrics", "problems", "stores"}),
        "VectorIndex: collections, blue/green rebuilds, sync",
    ),
    "backups": (
        frozenset({"api", "backup", "config", "context", "engines", "k8s", "metrics", "problems", "stores"}),
        "Backup: the Job that takes one, its status read from the target, deleting it",
    ),
    "client": (frozenset({"api", "engines", "features"}), "the SDK apps use to read features and the registry"),
    "handlers": (
        frozenset(
            {
                "api",
                "backups",
                "config",
                "context",
                "k8s",
                "metrics",
                "problems",
                "stores",
                "features",
                "registry",
                "vectors",
            }
        ),
        "Kopf wiring: one shape (kind.py), one status-write path, a file of wiring per kind",
    ),
    "run": (frozenset({"config", "handlers", "metrics"}), "the operator process"),
    "statusview": (frozenset(), "pure rendering of `mlinfra status`"),
    "build": (frozenset({"api"}), "build-time generators: CRDs, API reference, Argo CD checks, this contract"),
    "devenv": (
        frozenset(
            {
                "api",
                "backup",
                "backups",
                "client",
                "context",
                "engines",
                "features",
                "k8s",
                "problems",
                "stores",
                "vectors",
            }
        ),
        "the local platform (control plane, real node, real databases): tests and the demo only",
    ),
    "cli": (frozenset({"*"}), "the `mlinfra` command"),
    "__main__": (frozenset({"cli"}), "`python -m mlinfra`"),
    "__init__": (frozenset(), "this contract, rendered"),
}
KOPF_LAYERS = frozenset({"handlers", "run"})
# Inside handlers, only these modules talk to Kopf; a kind's file is wiring of handlers/kind.py.
KOPF_MODULES = frozenset(
    {"handlers/kind.py", "handlers/startup.py", "handlers/statuswrite.py", "handlers/__init__.py", "run.py"}
)
HANDLER_FILE_MAX_LINES = 60
# Concepts with one owner in the product (devenv, build and cli excepted): module -> the only files that
# may import it.
OWNERS: dict[str, frozenset[str]] = {
    # Secret data is decoded in one place; a SCRAM verifier is base64 by its definition (RFC 5802).
    "base64": frozenset({"engines/connection.py", "engines/pg_scram.py"}),
    # Generated credentials; a SCRAM verifier's salt (random, not a credential).
    "secrets": frozenset({"stores/credentials.py", "engines/pg_scram.py"}),
}
OWNER_EXEMPT = frozenset({"devenv", "build", "cli", "client"})

BEGIN, END = "<!-- layers:begin -->", "<!-- layers:end -->"


def table() -> str:
    rows = ["| layer | may import | owns |", "| --- | --- | --- |"]
    for layer, (allowed, owns) in LAYERS.items():
        may = "anything" if "*" in allowed else ", ".join(sorted(allowed)) or "—"
        rows.append(f"| `{layer}` | {may} | {owns} |")
    return "\n".join(rows)


def _docstring_block() -> str:
    return "\n".join(f"    {row}" for row in table().splitlines())


def render(path: pathlib.Path, text: str) -> str:
    """``text`` with the block between the markers replaced (the markers must be there)."""
    block = _docstring_block() if path.suffix == ".py" else table()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path}: the markers {BEGIN} ... {END} are missing")
    indent = "    " if path.suffix == ".py" else ""
    return pattern.sub(lambda _: f"{BEGIN}\n{block}\n{indent}{END}", text)


def targets(root: pathlib.Path) -> list[pathlib.Path]:
    return [root / "operator" / "mlinfra" / "__init__.py", root / "docs" / "architecture.md"]


def stale(root: pathlib.Path) -> list[str]:
    return [str(p.relative_to(root)) for p in targets(root) if render(p, p.read_text()) != p.read_text()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlinfra.build.layers", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when a rendered table is stale")
    args = parser.parse_args(argv)
    root = pathlib.Path(__file__).resolve().parents[3]
    if args.check:
        out = stale(root)
        for name in out:
            print(f"{name} is stale: run python -m mlinfra.build.layers", file=sys.stderr)
        return 1 if out else 0
    for path in targets(root):
        path.write_text(render(path, path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
