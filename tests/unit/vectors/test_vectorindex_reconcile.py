"""vectors.reconcile against the in-memory Kubernetes API: store references, "sync now", and a whole
reconcile + observation of an index without a source on qdrant-client's local mode (no server)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kopf
import pytest
from fakekube import FakeKube
from prometheus_client import REGISTRY
from qdrant_client import models
from qdrant_client.http import exceptions as qdrant_errors

from mlinfra import metrics, problems
from mlinfra.api import vectorindex as api
from mlinfra.config import Settings
from mlinfra.context import Context, Obj, Recorder
from mlinfra.engines import connection, endpoints
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.handlers import kind
from mlinfra.handlers import vectorindex as handler
from mlinfra.problems import Problem, ProblemError
from mlinfra.vectors import attempts, collection, jobs, rebuild, rebuild_cli, reconcile, status

NS, NAME = "ml", "docs"


def body(**spec: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "storeRef": {"name": "vectors"},
        "collection": "docs",
        "vectors": {"size": 4, "distance": "Cosine"},
    }
    values.update(spec)
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": NAME, "namespace": NS, "uid": "vi-uid", "generation": 1},
        "spec": values,
    }


def obj_of(b: dict[str, Any]) -> Obj[api.VectorIndex]:
    return Obj(b, problems.parse(api.VectorIndex, b), Recorder())


def events(o: Obj[api.VectorIndex]) -> list[tuple[str, str, str]]:
    assert isinstance(o.report, Recorder)
    return o.report.events


def put_store(kube: FakeKube, name: str, engine: str, ready: str | None = "True", message: str = "") -> None:
    ds: dict[str, Any] = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "DataStore",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"engine": engine, "managed": True},
    }
    if ready is not None:
        ds["status"] = {"conditions": [{"type": "Ready", "status": ready, "reason": "R", "message": message}]}
    kube.put(ds)
    info = connection.ConnectionInfo.for_engine(engine, host=f"{name}.{NS}.svc", password="pw")  # type: ignore[arg-type]
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-conn", "namespace": NS},
            "stringData": info.to_secret_data(),
        }
    )


def problem_of(fn: Any, ctx: Context, o: Obj[api.VectorIndex]) -> Problem:
    with pytest.raises(ProblemError) as raised:
        fn(ctx, o)
    return raised.value.problem


SOURCE = {
    "storeRef": {"name": "pg"},
    "table": "docs",
    "idColumn": "id",
    "vectorColumn": "embedding",
    "updatedAtColumn": "updated_at",
}


@pytest.mark.parametrize("step", [reconcile.reconcile, reconcile.observe], ids=["reconcile", "observe"])
@pytest.mark.parametrize(
    ("stores", "spec", "expected"),
    [
        (
            [],
            {},
            Problem(
                problems.STORE_NOT_FOUND,
                "spec.storeRef: DataStore 'vectors' not found in namespace 'ml'",
                stalled=False,
            ),
        ),
        (
            [("vectors", "redis", "True", "")],
            {},
            Problem(
                problems.WRONG_ENGINE,
                "spec.storeRef: DataStore 'vectors' is a redis store; a qdrant store is required",
                stalled=True,
            ),
        ),
        (
            [("vectors", "qdrant", None, "")],
            {},
            Problem(
                problems.STORE_NOT_READY,
                "spec.storeRef: DataStore 'vectors' is not Ready: not observed yet",
                stalled=False,
            ),
        ),
        (
            [("vectors", "qdrant", "False", "0/1 pods ready")],
            {},
            Problem(
                problems.STORE_NOT_READY,
                "spec.storeRef: DataStore 'vectors' is not Ready: 0/1 pods ready",
                stalled=False,
            ),
        ),
        (
            [("vectors", "qdrant", "True", "")],
            {"source": SOURCE},
            Problem(
                problems.STORE_NOT_FOUND,
                "spec.source.storeRef: DataStore 'pg' not found in namespace 'ml'",
                stalled=False,
            ),
        ),
        (
            [("vectors", "qdrant", "True", ""), ("pg", "qdrant", "True", "")],
            {"source": SOURCE},
            Problem(
                problems.WRONG_ENGINE,
                "spec.source.storeRef: DataStore 'pg' is a qdrant store; a postgres store is required",
                stalled=True,
            ),
        ),
    ],
)
def test_store_references_become_problems(
    ctx: Context,
    kube: FakeKube,
    step: Any,
    stores: list[tuple[str, str, str | None, str]],
    spec: dict[str, Any],
    expected: Problem,
) -> None:
    for name, engine, ready, message in stores:
        put_store(kube, name, engine, ready, message)
    o = obj_of(body(**spec))
    assert problem_of(step, ctx, o) == expected
    assert kube.writes == [] and events(o) == []


def test_sync_now_without_a_source_is_stalled(ctx: Context, kube: FakeKube) -> None:
    problem = problem_of(lambda c, o: reconcile.request_sync(c, o, "2026-01-01T00:00:00Z"), ctx, obj_of(body()))
    assert problem == Problem(
        problems.INVALID_SPEC, "sync requested, but spec.source is not set: there is nothing to sync from", stalled=True
    )
    assert kube.writes == []


def test_sync_now_starts_one_job_per_request(ctx: Context, kube: FakeKube) -> None:
    o = obj_of(body(source=SOURCE))
    first = reconcile.request_sync(ctx, o, "2026-01-01T00:00:00Z")
    again = reconcile.request_sync(ctx, o, "2026-01-01T00:00:00Z")
    assert first == again == jobs.ondemand_job_name(NAME, "2026-01-01T00:00:00Z")
    assert kube.writes == [("create", "Job", NS, first)]
    job = kube.get("Job", NS, first)
    assert job["metadata"]["labels"][jobs.KIND_LABEL] == NAME
    assert job["metadata"]["ownerReferences"][0]["uid"] == "vi-uid"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "example.test/mlinfra:1"
    assert reconcile.request_sync(ctx, o, "2026-01-02T00:00:00Z") != first
    assert len(kube.kinds("Job")) == 2


@pytest.fixture
def local_ctx(kube: FakeKube, tmp_path: Path) -> Context:
    """A managed, Ready qdrant DataStore ``vectors`` served by local mode on a directory under tmp_path."""
    put_store(kube, "vectors", "qdrant")
    emap = tmp_path / "endpoints.json"
    emap.write_text(
        json.dumps({f"{NS}/vectors": {"endpoint": "127.0.0.1:6333", "localPath": str(tmp_path / "qdrant")}})
    )
    return Context(
        settings=Settings(job_image="example.test/mlinfra:1"), kube=kube, endpoints=endpoints.EndpointMap(emap)
    )


def local_conn(ctx: Context) -> connection.ConnectionInfo:
    """The connection to the ``vectors`` store of :func:`local_ctx` (its local-mode directory)."""
    return ctx.endpoints.resolve(connection.ConnectionInfo.for_engine("qdrant", host="x", password="pw"), NS, "vectors")


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"namespace": NS, "name": NAME})


def test_reconcile_and_observe_an_index_without_source_on_local_mode(local_ctx: Context, kube: FakeKube) -> None:
    b = body()
    o = obj_of(b)
    # A CronJob left from when the spec had a source and a schedule: the spec no longer asks for one.
    kube.put(
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {
                "name": jobs.cronjob_name(NAME),
                "namespace": NS,
                "ownerReferences": [o.owner_reference()],
            },
            "spec": {},
        }
    )
    physical = collection.physical_name(api.VectorIndex.model_validate(b).spec)
    reconcile.reconcile(local_ctx, o)
    assert events(o) == [("Normal", "CollectionCreated", f"created {physical} behind alias docs")]
    assert kube.writes == [("delete", "CronJob", NS, jobs.cronjob_name(NAME))]
    assert o.report.statuses == []  # type: ignore[attr-defined]  # no rebuild: nothing written early

    try:
        st = reconcile.observe(local_ctx, o)
        assert events(o) == [("Normal", "CollectionCreated", f"created {physical} behind alias docs")]
        assert st == status.compute(
            status.Facts(generation=1, active=physical, points=0, indexed_vectors=0, collection_status="green"), None
        )
        conds = {c["type"]: (c["status"], c["reason"], c["message"]) for c in st["conditions"]}
        assert conds["Ready"] == ("True", "Ready", f"0 points in {physical}")
        assert conds["Synced"] == ("True", "NoSource", "no spec.source: points are written by clients")
        assert (st["activeCollection"], st["points"]) == (physical, 0)
        assert "replicas" not in st and "sync" not in st  # local mode: not observable; no source
        assert gauge("mlinfra_vectorindex_points") == 0
        assert gauge("mlinfra_vectorindex_sync_max_lag_seconds") is None
    finally:
        metrics.forget_vectorindex(NS, NAME)

    # Reconciled again (a resume): nothing to do, nothing said, nothing written.
    again = obj_of(dict(b, status=st))
    reconcile.reconcile(local_ctx, again)
    metrics.forget_vectorindex(NS, NAME)
    assert events(again) == []
    assert kube.writes == [("delete", "CronJob", NS, jobs.cronjob_name(NAME))]


def test_observe_repairs_an_alias_deleted_by_hand(local_ctx: Context) -> None:
    b = body()
    reconcile.reconcile(local_ctx, obj_of(b))
    physical = collection.physical_name(api.VectorIndex.model_validate(b).spec)
    with qdrant_engine.open_client(local_conn(local_ctx)) as client:
        client.update_collection_aliases(
            change_aliases_operations=[models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name="docs"))]
        )
    o = obj_of(b)
    try:
        st = reconcile.observe(local_ctx, o)
    finally:
        metrics.forget_vectorindex(NS, NAME)
    assert events(o) == [("Normal", "DriftRepaired", f"changed by hand, restored: alias docs: missing -> {physical}")]
    assert st["activeCollection"] == physical


def test_an_immutable_change_without_source_is_refused(local_ctx: Context) -> None:
    reconcile.reconcile(local_ctx, obj_of(body()))
    o = obj_of(body(vectors={"size": 8, "distance": "Cosine"}))
    problem = problem_of(reconcile.reconcile, local_ctx, o)
    assert (problem.reason, problem.stalled) == ("ImmutableFieldChange", True)
    assert problem.message.startswith("vectors.size: 4 -> 8 needs a rebuild into a new collection")
    assert events(o) == []
    st = status.problem_status(o.body, problem)
    assert [c["type"] for c in st["conditions"]] == ["Ready", "Reconciling", "Stalled", "Reindexing"]


def test_more_copies_than_servers_is_refused_before_anything_is_created(local_ctx: Context) -> None:
    # Local mode keeps one copy, like a server with the cluster disabled; Qdrant itself would take the factor
    # and keep fewer copies than it reports.
    o = obj_of(body(replicationFactor=2))
    problem = problem_of(reconcile.reconcile, local_ctx, o)
    assert (problem.reason, problem.stalled, problem.recheck) == ("InvalidSpec", True, reconcile.QDRANT_REFUSED_RECHECK)
    assert problem.message.startswith("spec.replicationFactor is 2, but the Qdrant of DataStore vectors has 1 server")
    assert "set spec.replicationFactor to at most 1" in problem.message
    with qdrant_engine.open_client(local_conn(local_ctx)) as client:
        assert client.get_collections().collections == []
    reconcile.reconcile(local_ctx, obj_of(body(replicationFactor=1)))  # within the servers: fine
    metrics.forget_vectorindex(NS, NAME)


@pytest.mark.parametrize(
    ("factor", "peers", "refused"), [(None, 1, False), (1, 1, False), (3, 3, False), (2, 1, True), (4, 3, True)]
)
def test_copies_refusal(factor: int | None, peers: int, refused: bool) -> None:
    message = qdrant_engine.copies_refusal(factor, peers, "vectors")
    assert (message is not None) == refused
    if message is not None:
        assert f"has {peers} {'server' if peers == 1 else 'peers'}" in message


def test_peers_of_a_cluster_status() -> None:
    disabled = models.ClusterStatusOneOf(status="disabled")
    assert qdrant_engine.peers_in(disabled) == 1
    raft = models.RaftInfo(term=1, commit=1, pending_operations=0, leader=1, role=None, is_voter=True)
    peers = {str(i): models.PeerInfo(uri=f"http://q-{i}:6335/") for i in (1, 2, 3)}
    working = models.ConsensusThreadStatusOneOf(consensus_thread_status="working", last_update="2026-01-01T00:00:00Z")
    enabled = models.ClusterStatusOneOf1(
        status="enabled", peer_id=1, peers=peers, raft_info=raft, consensus_thread_status=working,
        message_send_failures={},
    )  # fmt: skip
    assert qdrant_engine.peers_in(enabled) == 3


def test_the_handler_is_wiring_of_the_package(ctx: Context) -> None:
    assert handler.KIND.model is api.VectorIndex and handler.KIND.owned == status.OWNED
    assert handler.KIND.reconcile is reconcile.reconcile and handler.KIND.observe is reconcile.observe
    assert handler.KIND.problem_status is status.problem_status
    assert handler.KIND.request_sync is reconcile.request_sync
    assert handler.KIND.delete is reconcile.delete  # the sync role goes; the collections (users' vectors) stay
    registry = kopf.OperatorRegistry()
    kind.register(registry, ctx, handler.KIND)
    changing = registry._changing.get_all_handlers()
    assert {
        (h.selector.group, h.selector.version, h.selector.any_name)
        for h in changing  # type: ignore[union-attr]
    } == {("mlinfra.io", "v1alpha1", "vectorindexes")}
    # The handler ids Kopf keys its progress annotations by stay those of the handlers this shape replaced.
    ids = {str(h.id).split("/")[0] for h in [*changing, *registry._spawning.get_all_handlers()]}
    assert ids == {
        f"register.<locals>.{n}"
        for n in ("reconcile_vectorindex", "observe_vectorindex", "delete_vectorindex", "sync_now")
    }


# --- Qdrant's refusals: Stalled in Qdrant's words and looked at again; outages stay temporary ---------------

# A key the model lets through and Qdrant does not: U+0301 is a combining mark Rust's is_alphanumeric does not
# count (see api/vectorindex.py), so Qdrant cannot parse it unquoted. (Sorted after "lang": indexes are made in
# order.)
DECOMPOSED = "re\u0301sume\u0301"
INVALID_JSON_PATH = qdrant_errors.UnexpectedResponse(
    400,
    "Bad Request",
    json.dumps({"status": {"error": f"Json deserialize error: Invalid json path: '{DECOMPOSED}'"}}).encode(),
    httpx.Headers(),
)
UNAVAILABLE = qdrant_errors.UnexpectedResponse(503, "Service Unavailable", b"no healthy upstream", httpx.Headers())


@pytest.fixture
def failing(monkeypatch: pytest.MonkeyPatch) -> dict[str, Callable[..., Any]]:
    """Client methods to replace, by name: every client the reconcile opens (local mode) calls these instead,
    with the real method as their first argument."""
    replaced: dict[str, Callable[..., Any]] = {}
    real = qdrant_engine.open_client

    @contextlib.contextmanager
    def open_client(conn: connection.ConnectionInfo, timeout: float = 30.0) -> Iterator[Any]:
        with real(conn, timeout) as client:
            for name, method in replaced.items():
                setattr(client, name, functools.partial(method, getattr(client, name)))
            yield client

    monkeypatch.setattr(qdrant_engine, "open_client", open_client)
    return replaced


def refuse_field(refused: str, exc: Exception) -> Callable[..., Any]:
    def create_payload_index(real: Callable[..., Any], collection_name: str, field_name: str, *a: Any, **k: Any) -> Any:
        if field_name == refused:
            raise exc
        return real(collection_name, field_name, *a, **k)

    return create_payload_index


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_a_payload_index_qdrant_refuses_is_invalid_spec_naming_the_field(
    local_ctx: Context, failing: dict[str, Callable[..., Any]]
) -> None:
    failing["create_payload_index"] = refuse_field(DECOMPOSED, INVALID_JSON_PATH)
    b = body(payloadIndexes=[{"field": "lang", "type": "keyword"}, {"field": DECOMPOSED, "type": "keyword"}])
    o = obj_of(b)
    for step in (reconcile.reconcile, reconcile.observe):
        problem = problem_of(step, local_ctx, o)
        assert problem == Problem(
            problems.INVALID_SPEC,
            f"spec.payloadIndexes[{DECOMPOSED}]: qdrant refused (400 Bad Request): Json deserialize error: "
            f"Invalid json path: '{DECOMPOSED}'",
            stalled=True,
            recheck=reconcile.QDRANT_REFUSED_RECHECK,
        )
    conds = {c["type"]: (c["status"], c["reason"]) for c in status.problem_status(b, problem)["conditions"]}
    assert conds["Stalled"] == ("True", problems.INVALID_SPEC)
    assert conds["Reconciling"] == ("False", problems.INVALID_SPEC)
    # The index made before the refused one is recorded as the operator's (else taken for someone else's).
    with qdrant_engine.open_client(local_conn(local_ctx)) as client:
        physical = collection.physical_name(o.model.spec)
        owned = (client.get_collection(physical).config.metadata or {})[collection.OWNED_INDEXES_KEY]
    assert owned == {"lang": "keyword"}


def test_a_refusal_not_tied_to_a_field_is_qdrant_refused(
    local_ctx: Context, failing: dict[str, Callable[..., Any]]
) -> None:
    denied = qdrant_errors.UnexpectedResponse(
        403, "Forbidden", b'{"status":{"error":"Access denied: read-only API key"}}', httpx.Headers()
    )

    def get_aliases(real: Callable[..., Any]) -> Any:
        raise denied

    failing["get_aliases"] = get_aliases
    problem = problem_of(reconcile.reconcile, local_ctx, obj_of(body()))
    assert problem == Problem(
        reconcile.QDRANT_REFUSED,
        "qdrant refused (403 Forbidden): Access denied: read-only API key",
        stalled=True,
        recheck=reconcile.QDRANT_REFUSED_RECHECK,
    )


@pytest.mark.parametrize("exc", [UNAVAILABLE, httpx.ConnectError("connection refused")], ids=["503", "no-answer"])
def test_an_unavailable_qdrant_stays_a_temporary_error(
    local_ctx: Context, failing: dict[str, Callable[..., Any]], exc: Exception
) -> None:
    failing["create_payload_index"] = refuse_field("lang", exc)
    o = obj_of(body(payloadIndexes=[{"field": "lang", "type": "keyword"}]))
    problem = problem_of(reconcile.reconcile, local_ctx, o)
    assert (problem.reason, problem.stalled, problem.recheck) == (reconcile.QDRANT_ERROR, False, None)
    assert problem.message.startswith(f"qdrant: {type(exc).__name__}: ")


def backfill_failed(cause: Exception | None) -> rebuild.BackfillFailed:
    """What rebuild.rebuild raises: ``from`` the backfill's error, or on its own for a count mismatch."""
    if cause is None:
        return rebuild.BackfillFailed("backfill of 'docs-2' wrote 3 points, the source has 4")
    failed = rebuild.BackfillFailed(f"backfill of 'docs-2' failed: {cause}; alias 'docs' left on 'docs-1'")
    failed.__cause__ = cause
    return failed


@pytest.mark.parametrize(
    ("cause", "stalled"),
    [(INVALID_JSON_PATH, True), (UNAVAILABLE, False), (httpx.ReadTimeout("timed out"), False), (None, False)],
    ids=["refused", "503", "timeout", "count-mismatch"],
)
def test_a_backfill_qdrant_refuses_is_stalled_and_retried_after_the_backoff(
    cause: Exception | None, stalled: bool
) -> None:
    """The rebuild Job names a refusal in its termination message; the operator's BackfillFailed is Stalled
    then (every attempt fails alike), else temporary; either way the next attempt comes after the backoff."""
    reason = rebuild_cli.reason_of(backfill_failed(cause))
    assert reason == (rebuild_cli.QDRANT_REFUSED if stalled else rebuild_cli.BACKFILL_FAILED)
    last = attempts.Attempt(1, "docs-rebuild-1", "docs-2", False, "BackoffLimitExceeded", None, False, "")
    found = collection.Result(alias="docs", collection="docs-1", target="docs-2")
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    detail = f"Job docs-rebuild-1 failed; its container: Error (exit code 1): {reason}: backfill of 'docs-2' ..."
    problem = reconcile.attempt_problem(last, detail, found, now + datetime.timedelta(seconds=60), now, ("pg-s3cret",))
    assert (problem.reason, problem.stalled, problem.recheck) == (reconcile.BACKFILL_FAILED, stalled, 60.0)
    assert problem.message.startswith("rebuild attempt 1 failed: Job docs-rebuild-1 failed")
    assert problem.message.endswith("alias docs left on docs-1; attempt 2 starts at 2026-01-01T00:01:00Z")
