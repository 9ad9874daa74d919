"""mlinfra.statusview: the tree of stores and dependents, the figures taken from .status, and both renderings."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from mlinfra import statusview as sv

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2024, 5, 1, 10, 5, tzinfo=datetime.UTC)


def cond(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def obj(
    kind: str,
    name: str,
    spec: dict[str, Any],
    status: dict[str, Any] | None = None,
    ns: str = "ml",
    generation: int = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, "generation": generation},
        "spec": spec,
        **({"status": status} if status is not None else {}),
    }


def ready(status: str = "True", reason: str = "Ready", message: str = "", **extra: Any) -> dict[str, Any]:
    return {"observedGeneration": 1, "conditions": [cond("Ready", status, reason, message)], **extra}


def ds(name: str, engine: str = "postgres", ns: str = "ml", **status: Any) -> dict[str, Any]:
    return obj("DataStore", name, {"engine": engine}, status or ready(), ns=ns)


def fv(
    name: str, offline: str = "offline", online: str = "online", ns: str = "ml", status: dict[str, Any] | None = None
) -> dict[str, Any]:
    return obj(
        "FeatureView",
        name,
        {"offline": {"storeRef": {"name": offline}}, "online": {"storeRef": {"name": online}}},
        status or ready(),
        ns=ns,
    )


def mr(
    name: str, metadata: str = "offline", lineage: str | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"metadataStoreRef": {"name": metadata}}
    if lineage:
        spec["lineageStoreRef"] = {"name": lineage}
    return obj("ModelRegistry", name, spec, status or ready())


def vi(
    name: str, index: str = "vectors", source: str | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"storeRef": {"name": index}, "collection": name}
    if source:
        spec["source"] = {"storeRef": {"name": source}, "table": "docs"}
    return obj("VectorIndex", name, spec, status or ready())


def shape(trees: list[sv.NamespaceTree]) -> list[tuple[str, list[tuple[str, bool, list[tuple[str, ...]]]]]]:
    """namespace -> [(store, missing, [(kind/name, roles, also_under)])]: the tree without the figures."""
    return [
        (
            t.namespace,
            [
                (
                    n.name,
                    n.entry is None,
                    [
                        (f"{d.entry.kind}/{d.entry.name}", ",".join(d.roles), ",".join(d.also_under))
                        for d in n.dependents
                    ],
                )
                for n in t.stores
            ],
        )
        for t in trees
    ]


# --- the tree ------------------------------------------------------------------------------------------------


TREES: list[tuple[str, dict[str, list[dict[str, Any]]], Any]] = [
    ("nothing", {}, []),
    ("a store alone", {"DataStore": [ds("offline")]}, [("ml", [("offline", False, [])])]),
    (
        "a view under both its stores, marked",
        {"DataStore": [ds("offline"), ds("online", "redis")], "FeatureView": [fv("clicks")]},
        [
            (
                "ml",
                [
                    ("offline", False, [("FeatureView/clicks", "offline", "online")]),
                    ("online", False, [("FeatureView/clicks", "online", "offline")]),
                ],
            )
        ],
    ),
    (
        "a missing store gets its own node, after the existing ones",
        {"DataStore": [ds("offline")], "FeatureView": [fv("clicks", online="gone")]},
        [
            (
                "ml",
                [
                    ("offline", False, [("FeatureView/clicks", "offline", "gone")]),
                    ("gone", True, [("FeatureView/clicks", "online", "offline")]),
                ],
            )
        ],
    ),
    (
        "a registry without lineage depends on one store",
        {"DataStore": [ds("meta")], "ModelRegistry": [mr("models", "meta")]},
        [("ml", [("meta", False, [("ModelRegistry/models", "metadata", "")])])],
    ),
    (
        "a registry with lineage depends on two",
        {"DataStore": [ds("meta"), ds("graph", "neo4j")], "ModelRegistry": [mr("models", "meta", "graph")]},
        [
            (
                "ml",
                [
                    ("graph", False, [("ModelRegistry/models", "lineage", "meta")]),
                    ("meta", False, [("ModelRegistry/models", "metadata", "graph")]),
                ],
            )
        ],
    ),
    (
        "a vector index with and without a source",
        {"DataStore": [ds("vectors", "qdrant"), ds("pg")], "VectorIndex": [vi("docs", source="pg"), vi("raw")]},
        [
            (
                "ml",
                [
                    ("pg", False, [("VectorIndex/docs", "source", "vectors")]),
                    ("vectors", False, [("VectorIndex/docs", "index", "pg"), ("VectorIndex/raw", "index", "")]),
                ],
            )
        ],
    ),
    (
        "dependents in kind order, then by name",
        {
            "DataStore": [ds("pg")],
            "VectorIndex": [vi("a", index="q", source="pg")],
            "ModelRegistry": [mr("m", "pg")],
            "FeatureView": [fv("z", "pg", "kv"), fv("b", "pg", "kv")],
        },
        [
            (
                "ml",
                [
                    (
                        "pg",
                        False,
                        [
                            ("FeatureView/b", "offline", "kv"),
                            ("FeatureView/z", "offline", "kv"),
                            ("ModelRegistry/m", "metadata", ""),
                            ("VectorIndex/a", "source", "q"),
                        ],
                    ),
                    ("kv", True, [("FeatureView/b", "online", "pg"), ("FeatureView/z", "online", "pg")]),
                    ("q", True, [("VectorIndex/a", "index", "pg")]),
                ],
            )
        ],
    ),
    (
        "namespaces apart and sorted; same names do not mix",
        {
            "DataStore": [ds("offline", ns="team-b"), ds("offline", ns="team-a")],
            "FeatureView": [fv("clicks", ns="team-b")],
        },
        [
            ("team-a", [("offline", False, [])]),
            (
                "team-b",
                [
                    ("offline", False, [("FeatureView/clicks", "offline", "online")]),
                    ("online", True, [("FeatureView/clicks", "online", "offline")]),
                ],
            ),
        ],
    ),
    (
        "the same store in two roles is one node with both roles",
        {"DataStore": [ds("pg")], "FeatureView": [fv("odd", "pg", "pg")]},
        [("ml", [("pg", False, [("FeatureView/odd", "offline,online", "")])])],
    ),
]


@pytest.mark.parametrize(("objects", "expected"), [(o, e) for _, o, e in TREES], ids=[i for i, _, _ in TREES])
def test_tree(objects: dict[str, list[dict[str, Any]]], expected: Any) -> None:
    assert shape(sv.build(objects)) == expected


# --- one entry: Ready, reason, reconciling, figures ------------------------------------------------------------


RUN = {
    "outcome": "Succeeded",
    "startTime": "2024-05-01T10:00:00Z",
    "endTime": "2024-05-01T10:00:03Z",
    "rows": 3,
    "watermark": "2024-05-01T09:59:00Z",
}
SHOWN_RUN = {"outcome": "Succeeded", "startTime": "2024-05-01T10:00:00Z", "endTime": "2024-05-01T10:00:03Z", "rows": 3}
ENTRIES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (
        "datastore ready",
        "DataStore",
        ds(
            "pg",
            mode="managed",
            replication={"readyReplicas": 2, "desiredReplicas": 2, "maxLagSeconds": 0.5, "maxLagBytes": 128},
            **ready(),
        ),
        {
            "ready": "True",
            "reason": "Ready",
            "reconciling": False,
            "last_sync": None,
            "figures": {
                "engine": "postgres",
                "mode": "managed",
                "readyReplicas": 2,
                "desiredReplicas": 2,
                "maxLagSeconds": 0.5,
                "maxLagBytes": 128,
                "backups": False,
                "lastBackupTime": None,
            },
        },
    ),
    (
        "datastore without status yet",
        "DataStore",
        obj("DataStore", "new", {"engine": "redis"}),
        {
            "ready": "Unknown",
            "reason": "",
            "reconciling": True,
            "last_sync": None,
            "figures": {
                "engine": "redis",
                "mode": None,
                "readyReplicas": None,
                "desiredReplicas": None,
                "maxLagSeconds": None,
                "maxLagBytes": None,
                "backups": False,
                "lastBackupTime": None,
            },
        },
    ),
    (
        "datastore unreachable",
        "DataStore",
        ds("pg", **ready("False", "Unreachable", "connection refused")),
        {"ready": "False", "reason": "Unreachable", "message": "connection refused", "reconciling": False},
    ),
    (
        "reconciling condition",
        "DataStore",
        ds(
            "pg",
            observedGeneration=1,
            conditions=[cond("Ready", "False", "Provisioning"), cond("Reconciling", "True", "Progressing")],
        ),
        {"ready": "False", "reason": "Provisioning", "reconciling": True},
    ),
    (
        "a new generation not yet observed",
        "DataStore",
        obj("DataStore", "pg", {"engine": "postgres"}, ready(), generation=2),
        {"ready": "True", "reconciling": True},
    ),
    (
        "featureview synced",
        "FeatureView",
        fv("clicks", status=ready(freshness={"lagSeconds": 12.5, "sourceWatermark": "x"}, lastMaterialization=RUN)),
        {
            "ready": "True",
            "last_sync": "2024-05-01T10:00:03Z",
            "figures": {"lagSeconds": 12.5, "lastMaterialization": SHOWN_RUN},
        },
    ),
    (
        "featureview never materialized",
        "FeatureView",
        fv("clicks"),
        {"last_sync": None, "figures": {"lagSeconds": None, "lastMaterialization": None}},
    ),
    (
        "featureview run in progress: its start is the last sync activity",
        "FeatureView",
        fv("clicks", status=ready(lastMaterialization={"outcome": "Running", "startTime": "2024-05-01T10:04:00Z"})),
        {"last_sync": "2024-05-01T10:04:00Z"},
    ),
    (
        "modelregistry lineage",
        "ModelRegistry",
        mr(
            "models",
            status=ready(
                schemaVersion=4,
                lineage={
                    "pendingEvents": 7,
                    "oldestPendingAgeSeconds": 42.0,
                    "lastSyncTime": "2024-05-01T10:04:30Z",
                    "nodes": 9,
                },
            ),
        ),
        {
            "last_sync": "2024-05-01T10:04:30Z",
            "figures": {
                "schemaVersion": 4,
                "pendingEvents": 7,
                "lagSeconds": 42.0,
                "lastSyncTime": "2024-05-01T10:04:30Z",
            },
        },
    ),
    (
        "modelregistry without lineage",
        "ModelRegistry",
        mr("models", status=ready(schemaVersion=4)),
        {
            "last_sync": None,
            "figures": {"schemaVersion": 4, "pendingEvents": None, "lagSeconds": None, "lastSyncTime": None},
        },
    ),
    (
        "vectorindex sync",
        "VectorIndex",
        vi("docs", status=ready(points=1000, sync={"rowsBehind": 5, "lagSeconds": 90.0, "lastRun": RUN})),
        {
            "last_sync": "2024-05-01T10:00:03Z",
            "figures": {"points": 1000, "rowsBehind": 5, "lagSeconds": 90.0, "lastRun": SHOWN_RUN},
        },
    ),
]


@pytest.mark.parametrize(
    ("kind", "body", "expected"), [(k, b, e) for _, k, b, e in ENTRIES], ids=[i for i, _, _, _ in ENTRIES]
)
def test_entry(kind: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    e = sv.entry(kind, body)
    assert (e.kind, e.namespace, e.name) == (kind, "ml", body["metadata"]["name"])
    assert {key: getattr(e, key) for key in expected} == expected


# --- formatting ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "-"),
        (0, "0s"),
        (0.0, "0s"),
        (1.54, "1.5s"),
        (42, "42s"),
        (59.96, "60s"),
        (60, "1m00s"),
        (185, "3m05s"),
        (3600, "1h00m"),
        (7830.9, "2h10m"),
        ("12", "-"),
    ],
)
def test_seconds(value: Any, text: str) -> None:
    assert sv.seconds(value) == text


@pytest.mark.parametrize(
    ("timestamp", "now", "text"),
    [
        (None, NOW, "-"),
        ("2024-05-01T10:00:00Z", None, "2024-05-01T10:00:00Z"),
        ("2024-05-01T10:00:00Z", NOW, "2024-05-01T10:00:00Z (5m00s ago)"),
        ("2024-05-01T10:00:00+00:00", NOW, "2024-05-01T10:00:00+00:00 (5m00s ago)"),
        ("2024-05-01T10:06:00Z", NOW, "2024-05-01T10:06:00Z (0s ago)"),  # clock skew: never negative
        ("yesterday", NOW, "yesterday"),
    ],
)
def test_since(timestamp: str | None, now: datetime.datetime | None, text: str) -> None:
    assert sv.since(timestamp, now) == text


DETAILS = [
    (
        sv.entry(
            "DataStore",
            ds(
                "pg",
                mode="external",
                replication={"readyReplicas": 1, "desiredReplicas": 2, "maxLagSeconds": 3.0},
                **ready(),
            ),
        ),
        "engine=postgres mode=external replicas=1/2 maxLag=3s",
    ),
    (sv.entry("DataStore", obj("DataStore", "x", {"engine": "neo4j"})), "engine=neo4j mode=- replicas=-/- maxLag=-"),
    (
        sv.entry("FeatureView", fv("c", status=ready(freshness={"lagSeconds": 0}, lastMaterialization=RUN))),
        "lag=0s lastMaterialization=Succeeded/3 rows",
    ),
    (sv.entry("FeatureView", fv("c")), "lag=- lastMaterialization=never"),
    (
        sv.entry(
            "ModelRegistry",
            mr("m", status=ready(schemaVersion=4, lineage={"pendingEvents": 0, "oldestPendingAgeSeconds": 0})),
        ),
        "schema=4 pending=0 lineageLag=0s",
    ),
    (
        sv.entry(
            "VectorIndex",
            vi("d", status=ready(points=10, sync={"rowsBehind": 0, "lagSeconds": 0, "lastRun": {"outcome": "Failed"}})),
        ),
        "points=10 rowsBehind=0 lag=0s lastRun=Failed",
    ),
]


@pytest.mark.parametrize(("e", "text"), DETAILS, ids=[e.kind + "-" + t[:12] for e, t in DETAILS])
def test_details(e: sv.Entry, text: str) -> None:
    assert sv.details(e) == text


# --- rendering ------------------------------------------------------------------------------------------------


SCENE = {
    "DataStore": [
        ds(
            "offline",
            mode="managed",
            replication={"readyReplicas": 2, "desiredReplicas": 2, "maxLagSeconds": 0},
            **ready(),
        ),
        ds("online", "redis", **ready("False", "Unreachable", "connection\nrefused")),
    ],
    "FeatureView": [fv("clicks", status=ready(freshness={"lagSeconds": 12.5}, lastMaterialization=RUN))],
    "ModelRegistry": [
        mr(
            "models",
            "offline",
            "graph",
            status={
                "observedGeneration": 1,
                "conditions": [
                    cond("Ready", "False", "StoreNotFound", "DataStore graph not found"),
                    cond("Reconciling", "True", "Retrying"),
                ],
            },
        )
    ],
}

PLAIN = """\
NAMESPACE ml
NAME                     READY  REASON         LAST SYNC                         DETAILS
DataStore/offline        True   Ready          -                                 engine=postgres mode=managed replicas=2/2 maxLag=0s
|- FeatureView/clicks    True   Ready          2024-05-01T10:00:03Z (4m57s ago)  lag=12.5s lastMaterialization=Succeeded/3 rows [offline; also under online]
`- ModelRegistry/models  False  StoreNotFound  -                                 schema=- pending=- lineageLag=- [metadata; also under graph]
      DataStore graph not found
DataStore/online         False  Unreachable    -                                 engine=redis mode=- replicas=-/- maxLag=-
   connection refused
`- FeatureView/clicks    True   Ready          2024-05-01T10:00:03Z (4m57s ago)  lag=12.5s lastMaterialization=Succeeded/3 rows [online; also under offline]
(missing store graph)
`- ModelRegistry/models  False  StoreNotFound  -                                 schema=- pending=- lineageLag=- [lineage; also under offline]
      DataStore graph not found
"""  # noqa: E501


def test_plain_text_is_the_aligned_ascii_tree() -> None:
    text = sv.render_text(sv.build(SCENE), now=NOW)
    assert text == PLAIN
    assert text.isascii() and "\033[" not in text


def test_plain_text_without_now_shows_bare_timestamps() -> None:
    assert "2024-05-01T10:00:03Z  " in sv.render_text(sv.build(SCENE))
    assert " ago)" not in sv.render_text(sv.build(SCENE))


def test_nothing_to_show() -> None:
    assert sv.render_text([]) == "No mlinfra resources found.\n"
    assert json.loads(sv.render_json([])) == {"formatVersion": 1, "namespaces": []}


@pytest.mark.parametrize(
    ("name", "colour"),
    [
        ("DataStore/offline ", sv.GREEN),  # Ready
        ("DataStore/online ", sv.RED),  # not Ready
        ("FeatureView/clicks ", sv.GREEN),
        ("ModelRegistry/models ", sv.YELLOW),  # Reconciling wins over not Ready
        ("(missing store graph)", sv.RED),
    ],
)
def test_colours_in_a_terminal(name: str, colour: str) -> None:
    lines = [line for line in sv.render_text(sv.build(SCENE), color=True, now=NOW).splitlines() if name in line]
    assert lines
    for line in lines:
        if name.startswith("("):
            assert line.startswith(colour) and line.endswith(sv.RESET)
        else:
            # Only the READY cell is painted, so the columns stay aligned once the codes are stripped.
            assert line.count(colour) == 1 and line.count(sv.RESET) == 1
            assert line.index(colour) == PLAIN.splitlines()[1].index("READY")


def test_colour_output_strips_to_the_same_columns_with_box_glyphs() -> None:
    coloured = sv.render_text(sv.build(SCENE), color=True, now=NOW)
    for code in (sv.GREEN, sv.RED, sv.YELLOW, sv.RESET):
        coloured = coloured.replace(code, "")
    ascii_glyphs = coloured.replace("├─ ", "|- ").replace("└─ ", "`- ").replace("│  ", "|  ")
    assert ascii_glyphs == PLAIN


def test_json_structure() -> None:
    doc = json.loads(sv.render_json(sv.build(SCENE)))
    assert doc["formatVersion"] == sv.FORMAT_VERSION
    [ns] = doc["namespaces"]
    assert ns["namespace"] == "ml"
    assert [(s["name"], s["missing"]) for s in ns["stores"]] == [("offline", False), ("online", False), ("graph", True)]
    offline, online, graph = ns["stores"]
    assert offline["resource"] == {
        "kind": "DataStore",
        "namespace": "ml",
        "name": "offline",
        "ready": "True",
        "reason": "Ready",
        "message": "",
        "reconciling": False,
        "lastSync": None,
        "figures": {
            "engine": "postgres",
            "mode": "managed",
            "readyReplicas": 2,
            "desiredReplicas": 2,
            "maxLagSeconds": 0,
            "maxLagBytes": None,
            "backups": False,
            "lastBackupTime": None,
        },
    }
    assert online["resource"]["message"] == "connection\nrefused"  # JSON keeps the message as written
    assert graph["resource"] is None
    view = offline["dependents"][0]
    assert view == {
        "kind": "FeatureView",
        "namespace": "ml",
        "name": "clicks",
        "ready": "True",
        "reason": "Ready",
        "message": "",
        "reconciling": False,
        "lastSync": "2024-05-01T10:00:03Z",
        "figures": {"lagSeconds": 12.5, "lastMaterialization": SHOWN_RUN},
        "storeRoles": ["offline"],
        "alsoUnder": ["online"],
    }
    assert [(d["kind"], d["storeRoles"], d["alsoUnder"]) for d in graph["dependents"]] == [
        ("ModelRegistry", ["lineage"], ["offline"])
    ]
    assert graph["dependents"][0]["reconciling"] is True


def test_a_store_with_backups_shows_the_age_of_its_newest_backup() -> None:
    now = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
    body = ds("pg", backup={"lastSuccessfulTime": "2026-11-30T09:00:00Z"}, **ready())
    body["spec"]["backup"] = {"target": {"s3": {"bucket": "b", "credentialsSecretRef": {"name": "s"}}}}
    e = sv.entry("DataStore", body)
    assert e.figures["lastBackupTime"] == "2026-11-30T09:00:00Z"
    assert sv.details(e, now).endswith("lastBackupAge=3h00m")
    body["status"].pop("backup")
    assert sv.details(sv.entry("DataStore", body), now).endswith("lastBackupAge=none")
    assert "lastBackupAge" not in sv.details(sv.entry("DataStore", ds("pg", **ready())), now)
