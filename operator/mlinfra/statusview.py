"""``mlinfra status``: every mlinfra resource as a tree of DataStores and the resources that depend on them.

Pure: ``build`` takes the objects as the API lists them (plain dicts) and returns the tree; ``render_text``
and ``render_json`` turn it into output. Fetching is the CLI's job, so everything here is tested table-driven
without a cluster. Every figure comes from ``.status`` (plus ``spec.engine`` and the store references), which
is why read access (``list``) is all a user needs.

A resource that depends on two stores (a FeatureView's offline and online store, a ModelRegistry's metadata
and lineage store, a VectorIndex's index and source store) is listed under each of them, with the role that
store plays and the other stores it is also listed under: whoever looks at one store sees everything that
breaks when it breaks. A store that is referenced but does not exist gets a "(missing store X)" node.

The JSON form is a stable, versioned structure (``FORMAT_VERSION``), documented in docs/observability.md.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
STORE_KIND = "DataStore"
# The order dependents are listed in under a store.
DEPENDENT_KINDS = ("FeatureView", "ModelRegistry", "VectorIndex")
KINDS = (STORE_KIND, *DEPENDENT_KINDS)

# kind -> (role of the store, path of its name in the object). The roles name the spec fields.
STORE_REFS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "FeatureView": (
        ("offline", ("spec", "offline", "storeRef", "name")),
        ("online", ("spec", "online", "storeRef", "name")),
    ),
    "ModelRegistry": (
        ("metadata", ("spec", "metadataStoreRef", "name")),
        ("lineage", ("spec", "lineageStoreRef", "name")),
    ),
    "VectorIndex": (("index", ("spec", "storeRef", "name")), ("source", ("spec", "source", "storeRef", "name"))),
}


@dataclass(frozen=True)
class Entry:
    """One resource as the status view shows it."""

    kind: str
    namespace: str
    name: str
    ready: str  # the Ready condition's status: True, False or Unknown (also when there is none yet)
    reason: str
    message: str
    reconciling: bool  # Reconciling=True, or status not yet written for the current generation
    figures: dict[str, Any]  # kind-specific, from .status; keys as in the JSON form
    last_sync: str | None  # end of the latest sync, as status has it; None for kinds that do not sync

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "ready": self.ready,
            "reason": self.reason,
            "message": self.message,
            "reconciling": self.reconciling,
            "lastSync": self.last_sync,
            "figures": self.figures,
        }


@dataclass(frozen=True)
class Dependent:
    entry: Entry
    roles: tuple[str, ...]  # what the store is to this resource, e.g. ("offline",)
    also_under: tuple[str, ...]  # the other stores it depends on (it is listed under those too)


@dataclass
class StoreNode:
    name: str
    entry: Entry | None  # None: referenced, but no such DataStore
    dependents: list[Dependent] = field(default_factory=list)


@dataclass
class NamespaceTree:
    namespace: str
    stores: list[StoreNode]  # existing stores by name, then missing ones by name


# --- reading .status ----------------------------------------------------------------------------------------


def _dig(obj: Mapping[str, Any], *path: str) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in _dig(obj, "status", "conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return {}


def _run(run: Any) -> dict[str, Any] | None:
    """The fields of a sync run (common.SyncRun) worth showing; None when there was none."""
    if not isinstance(run, Mapping):
        return None
    return {key: run.get(key) for key in ("outcome", "startTime", "endTime", "rows")}


def _run_time(run: Mapping[str, Any] | None) -> str | None:
    # A run still going has no end time yet: its start is the latest sync activity.
    if run is None:
        return None
    value = run.get("endTime") or run.get("startTime")
    return str(value) if value else None


def _datastore(obj: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    st = obj.get("status") or {}
    figures = {
        "engine": _dig(obj, "spec", "engine"),
        "mode": st.get("mode"),
        "readyReplicas": _dig(st, "replication", "readyReplicas"),
        "desiredReplicas": _dig(st, "replication", "desiredReplicas"),
        "maxLagSeconds": _dig(st, "replication", "maxLagSeconds"),
        "maxLagBytes": _dig(st, "replication", "maxLagBytes"),
        # With spec.backup: when the newest complete Backup of the store completed (None: none yet).
        "backups": _dig(obj, "spec", "backup") is not None,
        "lastBackupTime": _dig(st, "backup", "lastSuccessfulTime"),
    }
    return figures, None  # a DataStore is observed, never synced


def _featureview(obj: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    st = obj.get("status") or {}
    run = _run(st.get("lastMaterialization"))
    return {"lagSeconds": _dig(st, "freshness", "lagSeconds"), "lastMaterialization": run}, _run_time(run)


def _modelregistry(obj: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    lineage = _dig(obj, "status", "lineage") or {}
    last = lineage.get("lastSyncTime")
    return (
        {
            "schemaVersion": _dig(obj, "status", "schemaVersion"),
            "pendingEvents": lineage.get("pendingEvents"),
            "lagSeconds": lineage.get("oldestPendingAgeSeconds"),
            "lastSyncTime": last,
        },
        str(last) if last else None,
    )


def _vectorindex(obj: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    st = obj.get("status") or {}
    run = _run(_dig(st, "sync", "lastRun"))
    return (
        {
            "points": st.get("points"),
            "rowsBehind": _dig(st, "sync", "rowsBehind"),
            "lagSeconds": _dig(st, "sync", "lagSeconds"),
            "lastRun": run,
        },
        _run_time(run),
    )


FIGURES: dict[str, Callable[[Mapping[str, Any]], tuple[dict[str, Any], str | None]]] = {
    "DataStore": _datastore,
    "FeatureView": _featureview,
    "ModelRegistry": _modelregistry,
    "VectorIndex": _vectorindex,
}


def entry(kind: str, obj: Mapping[str, Any]) -> Entry:
    """What the view shows of one object of ``kind``."""
    meta = obj.get("metadata") or {}
    ready = _condition(obj, "Ready")
    generation = meta.get("generation")
    stale = generation is not None and _dig(obj, "status", "observedGeneration") != generation
    figures, last_sync = FIGURES[kind](obj)
    return Entry(
        kind=kind,
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        ready=str(ready.get("status") or "Unknown"),
        reason=str(ready.get("reason") or ""),
        message=str(ready.get("message") or ""),
        reconciling=stale or _condition(obj, "Reconciling").get("status") == "True",
        figures=figures,
        last_sync=last_sync,
    )


def store_refs(kind: str, obj: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """store name -> the roles it plays for ``obj``, in the order of STORE_REFS."""
    refs: dict[str, tuple[str, ...]] = {}
    for role, path in STORE_REFS[kind]:
        name = _dig(obj, *path)
        if isinstance(name, str) and name:
            refs[name] = (*refs.get(name, ()), role)
    return refs


# --- the tree -----------------------------------------------------------------------------------------------


def build(objects: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[NamespaceTree]:
    """The trees, one per namespace (sorted), from ``{kind: [object, ...]}`` as listed by the API."""
    by_ns: dict[str, dict[str, StoreNode]] = {}
    for obj in objects.get(STORE_KIND, ()):
        e = entry(STORE_KIND, obj)
        by_ns.setdefault(e.namespace, {})[e.name] = StoreNode(e.name, e)
    for kind in DEPENDENT_KINDS:
        for obj in objects.get(kind, ()):
            e = entry(kind, obj)
            nodes = by_ns.setdefault(e.namespace, {})
            refs = store_refs(kind, obj)
            for store, roles in refs.items():
                node = nodes.setdefault(store, StoreNode(store, None))
                node.dependents.append(Dependent(e, roles, tuple(s for s in refs if s != store)))
    trees = []
    for ns in sorted(by_ns):
        ordered = sorted(by_ns[ns].values(), key=lambda n: (n.entry is None, n.name))
        for node in ordered:
            node.dependents.sort(key=lambda d: (DEPENDENT_KINDS.index(d.entry.kind), d.entry.name))
        trees.append(NamespaceTree(ns, ordered))
    return trees


# --- rendering ----------------------------------------------------------------------------------------------


def render_json(trees: Sequence[NamespaceTree]) -> str:
    """The machine form; its structure is documented in docs/observability.md and only grows."""
    doc = {
        "formatVersion": FORMAT_VERSION,
        "namespaces": [
            {
                "namespace": tree.namespace,
                "stores": [
                    {
                        "name": node.name,
                        "missing": node.entry is None,
                        "resource": node.entry.as_json() if node.entry else None,
                        "dependents": [
                            {**d.entry.as_json(), "storeRoles": list(d.roles), "alsoUnder": list(d.also_under)}
                            for d in node.dependents
                        ],
                    }
                    for node in tree.stores
                ],
            }
            for tree in trees
        ],
    }
    return json.dumps(doc, indent=2)


GREEN, RED, YELLOW, RESET = "\033[32m", "\033[31m", "\033[33m", "\033[0m"
HEADER = ("NAME", "READY", "REASON", "LAST SYNC", "DETAILS")


def seconds(value: Any) -> str:
    """A duration for people: 0s, 1.5s, 42s, 3m05s, 2h10m."""
    if not isinstance(value, int | float):
        return "-"
    if value < 60:
        return f"{round(value, 1):g}s"
    total = int(value)
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


def _run_text(run: Mapping[str, Any] | None) -> str:
    if not run:
        return "never"
    rows = f"/{run['rows']} rows" if run.get("rows") is not None else ""
    return f"{run.get('outcome') or 'Unknown'}{rows}"


def details(e: Entry, now: datetime.datetime | None = None) -> str:
    """The key figures of one entry as ``key=value`` words (ages relative to ``now`` when given)."""
    f = e.figures
    if e.kind == "DataStore":
        text = (
            f"engine={_num(f['engine'])} mode={_num(f['mode'])} "
            f"replicas={_num(f['readyReplicas'])}/{_num(f['desiredReplicas'])} "
            f"maxLag={seconds(f['maxLagSeconds'])}"
        )
        if f.get("backups"):
            text += f" lastBackupAge={_age(f.get('lastBackupTime'), now)}"
        return text
    if e.kind == "FeatureView":
        return f"lag={seconds(f['lagSeconds'])} lastMaterialization={_run_text(f['lastMaterialization'])}"
    if e.kind == "ModelRegistry":
        return (
            f"schema={_num(f['schemaVersion'])} pending={_num(f['pendingEvents'])} "
            f"lineageLag={seconds(f['lagSeconds'])}"
        )
    return (
        f"points={_num(f['points'])} rowsBehind={_num(f['rowsBehind'])} lag={seconds(f['lagSeconds'])} "
        f"lastRun={_run_text(f['lastRun'])}"
    )


def _age(timestamp: str | None, now: datetime.datetime | None) -> str:
    """``3h05m`` since ``timestamp`` (the timestamp itself without ``now``; ``none`` without a timestamp)."""
    if not timestamp:
        return "none"
    text = since(timestamp, now)
    return text[text.index("(") + 1 : -len(" ago)")] if "(" in text else timestamp


def since(timestamp: str | None, now: datetime.datetime | None) -> str:
    """``2024-05-01T10:00:00Z (3m05s ago)``; the bare timestamp when ``now`` is None or it does not parse."""
    if not timestamp:
        return "-"
    if now is None:
        return timestamp
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    if then.tzinfo is None:
        return timestamp
    return f"{timestamp} ({seconds(max(0.0, (now - then).total_seconds()))} ago)"


def _colour_of(e: Entry | None) -> str:
    if e is None:
        return RED
    if e.reconciling:
        return YELLOW
    return GREEN if e.ready == "True" else RED


@dataclass(frozen=True)
class _Row:
    cells: tuple[str, str, str, str, str]  # as HEADER
    entry: Entry | None  # None: a missing store
    note: str  # printed on its own line under the row: why a resource is not Ready


def _rows(tree: NamespaceTree, now: datetime.datetime | None, glyphs: tuple[str, str, str]) -> list[_Row]:
    branch, last, pipe = glyphs
    rows = []
    for node in tree.stores:
        e = node.entry
        if e is None:
            rows.append(_Row((f"(missing store {node.name})", "", "", "", ""), None, ""))
        else:
            rows.append(
                _Row(
                    (f"{e.kind}/{e.name}", e.ready, e.reason, since(e.last_sync, now), details(e, now)),
                    e,
                    f"   {_one_line(e.message)}" if e.message and e.ready != "True" else "",
                )
            )
        for i, dep in enumerate(node.dependents):
            d = dep.entry
            final = i == len(node.dependents) - 1
            where = f"{', '.join(dep.roles)}" + (f"; also under {', '.join(dep.also_under)}" if dep.also_under else "")
            note = f"{'   ' if final else pipe}   {_one_line(d.message)}" if d.message and d.ready != "True" else ""
            rows.append(
                _Row(
                    (
                        f"{last if final else branch}{d.kind}/{d.name}",
                        d.ready,
                        d.reason,
                        since(d.last_sync, now),
                        f"{details(d)} [{where}]",
                    ),
                    d,
                    note,
                )
            )
    return rows


def render_text(trees: Sequence[NamespaceTree], *, color: bool = False, now: datetime.datetime | None = None) -> str:
    """The tree for people: one section per namespace, columns aligned, READY coloured when ``color``.

    Box-drawing glyphs only with ``color`` (a terminal); plain output stays ASCII for pipes and logs."""
    if not trees:
        return "No mlinfra resources found.\n"
    glyphs = ("├─ ", "└─ ", "│  ") if color else ("|- ", "`- ", "|  ")
    out: list[str] = []
    for tree in trees:
        rows = _rows(tree, now, glyphs)
        widths = [max(len(HEADER[i]), *(len(r.cells[i]) for r in rows)) for i in range(4)]
        out += [f"NAMESPACE {tree.namespace}", _line(HEADER, widths)]
        for row in rows:
            text = _line(row.cells, widths)
            if color:
                paint = _colour_of(row.entry)
                if row.entry is None:
                    text = f"{paint}{text}{RESET}"
                else:
                    # Only the READY cell: colour codes inside other cells would break the alignment.
                    at, cell = widths[0] + 2, row.cells[1].ljust(widths[1])
                    text = f"{text[:at]}{paint}{cell}{RESET}{text[at + len(cell) :]}"
            out.append(text)
            if row.note:
                out.append(row.note[:240])
        out.append("")
    return "\n".join(out)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [c.ljust(w) for c, w in zip(cells[:4], widths, strict=True)]
    return "  ".join([*padded, cells[4]]).rstrip()
