"""The Argo CD health checks (manifests/argocd/health/<Kind>/health.lua), run as Argo CD runs them (Lua 5.1,
global ``obj``, no string library) against objects captured from live e2e runs (tests/unit/fixtures/argocd/,
written by e2e/test_argocd_health_live.py with MLINFRA_CAPTURE_ARGOCD=1), plus edge cases no live run shows.

A fixture's name says what Argo CD must make of it: ``<kind>-<state>[-detail][-handwritten].json`` with state
ready -> Healthy, progressing, degraded, suspended. ``-handwritten`` marks objects written from the condition
contract rather than captured: VectorIndex states the e2e tier cannot drive on demand (a failed backfill, a
rebuild caught while it runs), and Backups, whose fixtures are made from the status contract
(mlinfra.backups.status.compute).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlinfra.build import argocd
from mlinfra.handlers import startup

ROOT = argocd.repo_root()
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "argocd"
EXPECTED = {"ready": "Healthy", "progressing": "Progressing", "degraded": "Degraded", "suspended": "Suspended"}
KINDS = ("DataStore", "FeatureView", "ModelRegistry", "VectorIndex", "Backup")
NAME = re.compile(
    r"^(datastore|featureview|modelregistry|vectorindex|backup)-(ready|progressing|degraded|suspended)"
    r"(-[a-z0-9-]+)?\.json$"
)


def script(kind: str) -> str:
    return argocd.health_script(ROOT, kind)


def kind_of(fixture: Path) -> str:
    return {k.lower(): k for k in KINDS}[fixture.name.split("-", 1)[0]]


def fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


# --- the captured objects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", fixtures(), ids=lambda p: p.stem)
def test_health_of_each_captured_object(fixture: Path) -> None:
    match = NAME.match(fixture.name)
    assert match, f"{fixture.name}: name it <kind>-<ready|progressing|degraded|suspended>[-detail].json"
    obj = json.loads(fixture.read_text())
    assert obj["kind"] == kind_of(fixture)
    hs = argocd.evaluate(script(obj["kind"]), obj)
    assert hs is not None
    assert hs["status"] == EXPECTED[match.group(2)], hs
    assert hs["message"]


def test_every_kind_has_every_state_captured_or_written() -> None:
    states = {(m.group(1), m.group(2)) for p in fixtures() if (m := NAME.match(p.name))}
    for kind in KINDS:
        wanted = {"ready", "progressing", "degraded"} | (
            {"suspended"} if kind in ("FeatureView", "VectorIndex") else set()
        )
        assert {s for k, s in states if k == kind.lower()} >= wanted, kind


def test_only_vectorindex_and_backup_objects_are_handwritten() -> None:
    # Everything else comes from a live run; VectorIndex and Backup join when the e2e tier drives them.
    handwritten = [p.name for p in fixtures() if p.stem.endswith("-handwritten")]
    assert all(name.startswith(("vectorindex-", "backup-")) for name in handwritten)
    assert {p.name.split("-")[0] for p in fixtures() if not p.stem.endswith("-handwritten")} >= {
        "datastore",
        "featureview",
        "modelregistry",
    }


def test_captured_objects_keep_only_what_health_needs() -> None:
    for fixture in fixtures():
        obj = json.loads(fixture.read_text())
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec", "status"}, fixture.name
        assert set(obj["metadata"]) <= {"name", "namespace", "generation"}, fixture.name


@pytest.mark.parametrize(
    ("fixture", "source"),
    [
        ("datastore-degraded-unreachable", "Ready"),
        ("datastore-degraded-stalled", "Stalled"),
        ("featureview-degraded-slo", "FreshnessSLOMet"),
        ("featureview-degraded-stalled", "Stalled"),
        ("modelregistry-degraded-lineage", "LineageInSync"),
        ("modelregistry-degraded-stalled", "Stalled"),
        ("datastore-ready", "Ready"),
        ("featureview-ready", "Ready"),
        ("modelregistry-ready", "Ready"),
        ("datastore-progressing-reconciling", "Reconciling"),
        ("vectorindex-degraded-lag", "Synced"),
        ("vectorindex-degraded-stalled", "Stalled"),
        ("vectorindex-degraded-backfill-handwritten", "Reindexing"),
        ("vectorindex-progressing-reindexing-handwritten", "Reindexing"),
    ],
)
def test_message_is_the_condition_that_decided(fixture: str, source: str) -> None:
    obj = json.loads((FIXTURES / f"{fixture}.json").read_text())
    hs = argocd.evaluate(script(obj["kind"]), obj)
    assert hs is not None
    assert hs["message"] == cond(obj, source)["message"]


def test_progressing_generation_names_both_generations() -> None:
    for fixture in FIXTURES.glob("*-progressing-generation*.json"):
        obj = json.loads(fixture.read_text())
        assert obj["status"]["observedGeneration"] < obj["metadata"]["generation"], fixture.name
        hs = argocd.evaluate(script(obj["kind"]), obj)
        assert hs is not None
        assert f"generation {obj['metadata']['generation']}" in hs["message"], fixture.name


# --- edge cases no live run shows ---------------------------------------------------------------------------


def obj_with(
    kind: str,
    conditions: list[tuple[str, str, str]],
    generation: int = 3,
    observed: int | None = 3,
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [{"type": t, "status": s, "reason": r, "message": f"{t} {r}"} for t, s, r in conditions]
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "generation": generation},
        "spec": spec or {},
        "status": status,
    }


READY = ("Ready", "True", "Ready")


@pytest.mark.parametrize("kind", KINDS)
def test_no_status_yet_is_progressing(kind: str) -> None:
    fresh = {"apiVersion": "mlinfra.io/v1alpha1", "kind": kind, "metadata": {"name": "x", "generation": 1}, "spec": {}}
    assert argocd.evaluate(script(kind), fresh) == {
        "status": "Progressing",
        "message": "Waiting for the operator to report status",
    }
    assert argocd.evaluate(script(kind), {**fresh, "status": {}})["status"] == "Progressing"  # type: ignore[index]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("conditions", "expected", "message"),
    [
        ([READY], "Healthy", "Ready Ready"),
        ([], "Progressing", "Waiting for the Ready condition"),
        ([("Ready", "Unknown", "NotObserved")], "Progressing", "Ready NotObserved"),
        (
            [("Ready", "False", "Provisioning"), ("Reconciling", "True", "Provisioning")],
            "Progressing",
            "Reconciling Provisioning",
        ),
        # A transient reason without Reconciling (another writer, an older operator): still only Progressing.
        ([("Ready", "False", "StoreNotReady")], "Progressing", "Ready StoreNotReady"),
        ([("Ready", "False", "Unreachable"), ("Reconciling", "False", "Unreachable")], "Degraded", "Ready Unreachable"),
        ([("Ready", "False", "InvalidSpec"), ("Stalled", "True", "InvalidSpec")], "Degraded", "Stalled InvalidSpec"),
        # Stalled wins over a Ready left True by an earlier generation's observation.
        ([READY, ("Stalled", "True", "ImmutableFieldChange")], "Degraded", "Stalled ImmutableFieldChange"),
    ],
)
def test_common_rules(kind: str, conditions: list[tuple[str, str, str]], expected: str, message: str) -> None:
    assert argocd.evaluate(script(kind), obj_with(kind, conditions)) == {"status": expected, "message": message}


@pytest.mark.parametrize("kind", KINDS)
def test_a_newer_generation_is_progressing_whatever_the_conditions_say(kind: str) -> None:
    stale = obj_with(kind, [READY, ("Stalled", "True", "InvalidSpec")], generation=5, observed=4)
    assert argocd.evaluate(script(kind), stale) == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 5 (status is at generation 4)",
    }


def test_an_empty_message_falls_back_to_the_reason() -> None:
    obj = obj_with("DataStore", [("Ready", "False", "Unreachable")])
    obj["status"]["conditions"][0]["message"] = ""
    assert argocd.evaluate(script("DataStore"), obj) == {"status": "Degraded", "message": "Ready: Unreachable"}


@pytest.mark.parametrize(
    ("kind", "conditions", "spec", "expected", "message"),
    [
        (
            "FeatureView",
            [READY, ("FreshnessSLOMet", "False", "FreshnessSLOBreached")],
            {},
            "Degraded",
            "FreshnessSLOMet FreshnessSLOBreached",
        ),
        ("FeatureView", [READY, ("FreshnessSLOMet", "Unknown", "NoData")], {}, "Healthy", "Ready Ready"),
        ("FeatureView", [("Ready", "False", "SyncFailed")], {}, "Degraded", "Ready SyncFailed"),
        ("FeatureView", [("Ready", "False", "JobFailed")], {}, "Degraded", "Ready JobFailed"),
        (
            "FeatureView",
            [READY],
            {"materialization": {"suspend": True}},
            "Suspended",
            "Materialization is suspended (spec.materialization.suspend)",
        ),
        ("FeatureView", [READY], {"materialization": {"suspend": False}}, "Healthy", "Ready Ready"),
        # Suspended only when otherwise healthy: a breached SLO still shows.
        (
            "FeatureView",
            [READY, ("FreshnessSLOMet", "False", "FreshnessSLOBreached")],
            {"materialization": {"suspend": True}},
            "Degraded",
            "FreshnessSLOMet FreshnessSLOBreached",
        ),
        (
            "ModelRegistry",
            [READY, ("LineageInSync", "False", "LineageLagging")],
            {},
            "Degraded",
            "LineageInSync LineageLagging",
        ),
        ("ModelRegistry", [READY, ("LineageInSync", "True", "NotApplicable")], {}, "Healthy", "Ready Ready"),
        ("VectorIndex", [READY, ("Synced", "False", "LagExceeded")], {}, "Degraded", "Synced LagExceeded"),
        ("VectorIndex", [READY, ("Synced", "False", "Behind")], {}, "Healthy", "Ready Ready"),
        ("VectorIndex", [READY, ("Synced", "False", "NoSource")], {}, "Healthy", "Ready Ready"),
        (
            "VectorIndex",
            [READY, ("Reindexing", "False", "BackfillFailed")],
            {},
            "Degraded",
            "Reindexing BackfillFailed",
        ),
        ("VectorIndex", [READY, ("Reindexing", "False", "Idle")], {}, "Healthy", "Ready Ready"),
        ("VectorIndex", [READY, ("Reindexing", "True", "Rebuilding")], {}, "Progressing", "Reindexing Rebuilding"),
        ("VectorIndex", [READY], {"sync": {"suspend": True}}, "Suspended", "Sync is suspended (spec.sync.suspend)"),
        ("DataStore", [READY, ("Replicating", "False", "ReplicaNotStreaming")], {}, "Healthy", "Ready Ready"),
    ],
)
def test_kind_rules(
    kind: str, conditions: list[tuple[str, str, str]], spec: dict[str, Any], expected: str, message: str
) -> None:
    assert argocd.evaluate(script(kind), obj_with(kind, conditions, spec=spec)) == {
        "status": expected,
        "message": message,
    }


# --- the scripts and what ships them -------------------------------------------------------------------------


def common_block(text: str) -> str:
    match = re.search(r"^-- BEGIN common.*?^-- END common$", text, re.S | re.M)
    assert match, "the common block is missing"
    return match.group(0)


def test_the_common_block_is_the_same_in_every_kind() -> None:
    blocks = {kind: common_block(script(kind)) for kind in KINDS}
    assert len(set(blocks.values())) == 1, "edit the common block in all four health.lua files alike"


def test_scripts_use_no_string_library() -> None:
    # Argo CD opens no string library: `("x"):len()` or string.format would fail only in Argo CD.
    for kind in KINDS:
        code = "\n".join(line.split("--", 1)[0] for line in script(kind).splitlines())
        assert not re.search(r"\bstring\.|\bmath\.|\):\w+\(|\":\w+\(", code), kind


def test_there_is_one_script_per_kind_of_the_api() -> None:
    assert argocd.kinds() == list(KINDS)
    assert sorted(p.parent.name for p in (ROOT / argocd.HEALTH_DIR).glob("*/health.lua")) == sorted(KINDS)


def test_generated_files_are_up_to_date() -> None:
    assert argocd.stale(ROOT) == [], "run `python -m mlinfra.build.argocd` and commit manifests/argocd/"
    assert argocd.main(["--check"]) == 0


def test_check_catches_an_edited_script(tmp_path: Path) -> None:
    actions = [p.relative_to(ROOT) for p in (ROOT / argocd.ACTIONS_DIR).rglob("*.lua")]
    for rel in [*(argocd.script_path(k) for k in KINDS), *actions, argocd.SNIPPET, argocd.VALUES]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    assert argocd.stale(tmp_path) == []
    lua = tmp_path / argocd.script_path("FeatureView")
    lua.write_text(lua.read_text().replace("Materialization is suspended", "Paused"))
    assert sorted(argocd.stale(tmp_path)) == sorted([tmp_path / argocd.SNIPPET, tmp_path / argocd.VALUES])
    assert argocd.main(["--check", "--root", str(tmp_path)]) == 1
    assert argocd.main(["--root", str(tmp_path)]) == 0
    assert argocd.stale(tmp_path) == []
    assert "Paused" in (tmp_path / argocd.SNIPPET).read_text()


def test_snippet_and_values_carry_the_scripts_verbatim() -> None:
    snippet = yaml.safe_load((ROOT / argocd.SNIPPET).read_text())
    values = yaml.safe_load((ROOT / argocd.VALUES).read_text())
    assert (snippet["kind"], snippet["metadata"]["name"], snippet["metadata"]["namespace"]) == (
        "ConfigMap",
        "argocd-cm",
        "argocd",
    )
    assert snippet["data"] == values["configs"]["cm"]
    for kind in KINDS:
        # Argo CD splits the key at its first three dots and the rest at "_": group mlinfra.io, this kind.
        key = f"resource.customizations.health.mlinfra.io_{kind}"
        assert key.split(".", 3)[3].split("_") == ["mlinfra.io", kind]
        assert snippet["data"][key] == script(kind)
        ignore = yaml.safe_load(snippet["data"][f"resource.customizations.ignoreResourceUpdates.mlinfra.io_{kind}"])
        assert ignore["jsonPointers"] == ["/status"]
        assert ignore["jqPathExpressions"] == [
            '.metadata.annotations | objects | .[keys[] | select(startswith("kopf.mlinfra.io/"))]'
        ]
    for kind in ("DataStore", "FeatureView", "VectorIndex"):  # and the actions (test_argocd_actions.py)
        actions = yaml.safe_load(snippet["data"][f"resource.customizations.actions.mlinfra.io_{kind}"])
        scripts = argocd.action_scripts(ROOT, kind)
        assert actions["discovery.lua"] == scripts["discovery"]
        assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
            k: v for k, v in scripts.items() if k != "discovery"
        }
    assert len(snippet["data"]) == 2 * len(KINDS) + 3


def test_ignored_annotations_are_kopfs_storage() -> None:
    assert argocd.KOPF_STORAGE_PREFIX == startup.STORAGE_PREFIX
    # Users' own annotations (sync now) are outside the prefix and stay news for Argo CD.
    assert not "mlinfra.io/sync-requested-at".startswith(argocd.KOPF_STORAGE_PREFIX + "/")
