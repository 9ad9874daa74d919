"""The rebuild Job of a VectorIndex: its manifest, its name among the sync Jobs' names, the attempts and their
backoff, and the reconcile following attempts through Kubernetes (in memory) and a local-mode collection; the
PostgreSQL side (the source's shape, the rebuild lock) is the only part stood in for here (integration tests
run the real one)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra import problems
from mlinfra.api import vectorindex as api
from mlinfra.config import Settings
from mlinfra.context import Context, Obj, Recorder
from mlinfra.engines import connection, endpoints
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.k8s import jobstatus, syncjobs
from mlinfra.problems import Problem, ProblemError
from mlinfra.stores import sync_command
from mlinfra.vectors import attempts, collection, jobs, rebuild, rebuild_cli, reconcile, status

NS, NAME = "ml", "docs"
SOURCE = {
    "storeRef": {"name": "pg"},
    "table": "docs",
    "idColumn": "id",
    "vectorColumn": "embedding",
    "updatedAtColumn": "updated_at",
}
OWNER = {"apiVersion": "mlinfra.io/v1alpha1", "kind": "VectorIndex", "name": NAME, "uid": "vi-uid", "controller": True}
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def body(distance: str = "Cosine", **spec: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "storeRef": {"name": "vectors"},
        "collection": "docs",
        "vectors": {"size": 4, "distance": distance},
        "source": SOURCE,
        "sync": {"schedule": "*/5 * * * *"},
    }
    values.update(spec)
    return {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": NAME, "namespace": NS, "uid": "vi-uid", "generation": 1},
        "spec": values,
    }


def model(b: dict[str, Any]) -> api.VectorIndex:
    return api.VectorIndex.model_validate(b)


# --- the Job ---------------------------------------------------------------------------------------------


def test_the_rebuild_job_runs_the_rebuild_command_with_the_sync_jobs_mounts_and_no_retry() -> None:
    vi = model(body("Dot"))
    target = collection.physical_name(vi.spec)
    job = jobs.rebuild_job(vi, "example.test/mlinfra:1", OWNER, target, 3, "vectors.distance: Cosine -> Dot")
    sync = jobs.ondemand_job(vi, "example.test/mlinfra:1", OWNER, "now")
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == jobs.rebuild_job_name(NAME, target, 3)
    assert meta["labels"][jobs.KIND_LABEL] == NAME
    assert meta["labels"]["app.kubernetes.io/component"] == "index-rebuild"
    assert (meta["labels"][jobs.TARGET_LABEL], meta["labels"][jobs.ATTEMPT_LABEL]) == (target, "3")
    assert meta["annotations"] == {
        jobs.TARGET_ANNOTATION: target,
        jobs.REASONS_ANNOTATION: "vectors.distance: Cosine -> Dot",
    }
    assert meta["ownerReferences"] == [OWNER]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == jobs.REBUILD_DEADLINE_SECONDS >= 6 * 3600
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    pod, sync_pod = spec["template"]["spec"], sync["spec"]["template"]["spec"]
    [container], [sync_container] = pod["containers"], sync_pod["containers"]
    assert container["args"] == ["rebuild", "vectorindex", f"{NS}/{NAME}"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["resources"]["limits"]["memory"] == jobs.REBUILD_MEMORY_LIMIT
    # Everything else as the sync Job: the spec, the same Secrets at the same places, no API access.
    assert container["env"] == sync_container["env"]
    assert container["volumeMounts"] == sync_container["volumeMounts"]
    assert pod["volumes"] == sync_pod["volumes"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"


def test_the_sync_jobs_render_as_before() -> None:
    vi = model(body())
    for job in (
        jobs.ondemand_job(vi, "img", OWNER, "now")["spec"],
        jobs.cronjob(vi, "img", OWNER)["spec"]["jobTemplate"]["spec"],  # type: ignore[index]
    ):
        assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (1, 3600)
        [container] = job["template"]["spec"]["containers"]
        assert container["args"] == ["sync", "vectorindex", f"{NS}/{NAME}"]
        assert container["resources"]["limits"] == {"memory": "1Gi"}
        assert "terminationMessagePolicy" not in container
        assert job["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "index-sync"
    full = jobs.sync_job(model(body(sync={"schedule": "* * * * *", "hardDeletes": True})))
    assert list(full.args) == ["sync", "vectorindex", f"{NS}/{NAME}", "--full"]


@pytest.mark.parametrize("index", ["docs", "a" * 63, "x-rebuild-1", "team.docs"])
def test_rebuild_job_names_are_one_per_index_target_and_attempt_and_never_a_sync_jobs(index: str) -> None:
    targets = ["docs-0a1b2c3d", "docs-0a1b2c3e", "other-0a1b2c3d", "d" * 63 + "-12345678"]
    names = {(t, n): jobs.rebuild_job_name(index, t, n) for t in targets for n in (1, 2, 10, 11)}
    assert len(set(names.values())) == len(names)
    assert all(len(n) <= 63 and not n.startswith("-") and ".-" not in n for n in names.values())
    others = {jobs.rebuild_job_name(other, t, 1) for other in ("docs2", "doc", index + "x") for t in targets}
    assert not others & set(names.values())
    # Sync Jobs (on demand, and the CronJob's: its name plus the scheduled minute) of any index name.
    for owner in (index, "docs", f"{index}-rebuild", "docs-rebuild-0a1b2c3d"):
        sync_names = {jobs.ondemand_job_name(owner, when) for when in ("now", "1", "2026-01-01T00:00:00Z")}
        sync_names |= {syncjobs.ondemand_job_name(syncjobs.FEATUREVIEW_LABEL, owner, "now")}
        sync_names |= {f"{jobs.cronjob_name(owner)}-{minute}" for minute in (29000000, 1)}
        assert not sync_names & set(names.values())
    for name in names.values():
        assert not name.rsplit("-", 2)[-2].startswith("sync")


def test_a_target_too_long_for_a_label_is_labelled_by_a_digest() -> None:
    assert jobs.target_label("docs-0a1b2c3d") == "docs-0a1b2c3d"
    long = "d" * 63 + "-0a1b2c3d"
    assert jobs.target_label(long).startswith("sha256-") and len(jobs.target_label(long)) <= 63
    assert jobs.target_label(long) != jobs.target_label("e" * 63 + "-0a1b2c3d")


# --- attempts and backoff --------------------------------------------------------------------------------


def attempt(number: int, active: bool = False, ended: datetime.datetime | None = None) -> attempts.Attempt:
    return attempts.Attempt(number, f"job-{number}", "docs-2", active, None if active else "x", ended, False, "")


def test_the_backoff_doubles_per_failed_attempt_up_to_an_hour() -> None:
    assert [attempts.backoff(60, n).total_seconds() for n in range(1, 9)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]
    assert attempts.backoff(5, 1).total_seconds() == 5


def test_the_decision_follows_what_runs_not_what_a_job_says() -> None:
    assert attempts.decide([], False, T0, 60) == attempts.Decision("start", 1)
    assert attempts.decide([attempt(1, active=True)], False, T0, 60).action == "running"
    # A Job over but the lock held: its process runs (kwok ends every Job at once; a pod outlives its Job).
    assert attempts.decide([attempt(1, ended=T0)], True, T0, 60).action == "running"
    assert attempts.decide([], True, T0, 60).action == "running"
    # Seen over now: the backoff starts now.
    first = attempts.decide([attempt(1)], False, T0, 60)
    assert (first.action, first.attempt, first.next_at) == ("wait", 2, T0 + datetime.timedelta(seconds=60))
    seen = T0 - datetime.timedelta(seconds=59)
    assert attempts.decide([attempt(1, ended=seen)], False, T0, 60).action == "wait"
    due = attempts.decide([attempt(1, ended=T0 - datetime.timedelta(seconds=60))], False, T0, 60)
    assert (due.action, due.attempt) == ("start", 2)
    later = attempts.decide([attempt(1, ended=T0), attempt(2, ended=T0)], False, T0, 60)
    assert (later.action, later.attempt, later.next_at) == ("wait", 3, T0 + datetime.timedelta(seconds=120))


def job_obj(name: str, labels: dict[str, str], conditions: list[str], **notes: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": labels, "annotations": notes},
        "status": {"conditions": [{"type": c, "status": "True", "reason": "R", "message": "m"} for c in conditions]},
    }


def test_rebuild_jobs_are_no_sync_failures_and_sync_jobs_no_rebuild_attempts(kube: FakeKube) -> None:
    vi = model(body("Dot"))
    target = collection.physical_name(vi.spec)
    rebuild_job = jobs.rebuild_job(vi, "img", OWNER, target, 1)
    rebuild_job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}
    kube.put(rebuild_job)
    assert jobstatus.newest_failure(kube, NS, jobs.sync_selector(NAME)) is None
    sync = jobs.ondemand_job(vi, "img", OWNER, "now")
    sync["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    kube.put(sync)
    assert jobstatus.newest_failure(kube, NS, jobs.sync_selector(NAME)) == (
        f"Job {sync['metadata']['name']} failed: BackoffLimitExceeded"
    )
    found = attempts.attempts_of(kube.list_("Job", NS, jobs.rebuild_selector(NAME)))
    assert [(a.job, a.target, a.number, a.active, a.failed) for a in found] == [
        (rebuild_job["metadata"]["name"], target, 1, False, "DeadlineExceeded")
    ]
    # A Job carrying the rebuild's labels by hand but no attempt number is not counted.
    assert attempts.attempt_of(job_obj("x", jobs.rebuild_selector(NAME), [])) is None


def test_how_the_pod_of_a_job_ended(kube: FakeKube) -> None:
    assert jobstatus.terminated(kube, NS, "job-1") is None
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "job-1-abcde", "namespace": NS, "labels": {"job-name": "job-1"}},
            "status": {
                "containerStatuses": [
                    {"name": "sync", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
                ]
            },
        }
    )
    assert jobstatus.terminated(kube, NS, "job-1") == "OOMKilled (exit code 137)"
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "job-2-abcde", "namespace": NS, "labels": {"job-name": "job-2"}},
            "status": {
                "containerStatuses": [
                    {
                        "name": "sync",
                        "state": {"terminated": {"reason": "Error", "exitCode": 1, "message": "QdrantRefused: no\n"}},
                    }
                ]
            },
        }
    )
    assert jobstatus.terminated(kube, NS, "job-2") == "Error (exit code 1): QdrantRefused: no"


# --- the reconcile following the attempts -----------------------------------------------------------------


def put_store(kube: FakeKube, name: str, engine: str) -> None:
    kube.put(
        {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "DataStore",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"engine": engine, "managed": True},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": ""}]},
        }
    )
    info = connection.ConnectionInfo.for_engine(engine, host=f"{name}.{NS}.svc", password="pw-s3cret")  # type: ignore[arg-type]
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-conn", "namespace": NS},
            "stringData": info.to_secret_data(),
        }
    )


class Source:
    """The PostgreSQL side as the reconcile sees it: the table's shape (not looked at here) and whether a
    rebuild process holds the lock."""

    def __init__(self) -> None:
        self.lock_held = False
        self.watermark_resets = 0
        self.credentials: list[int] = []  # the rebuild Jobs there were each time the sync role was ensured


@pytest.fixture
def source(monkeypatch: pytest.MonkeyPatch) -> Source:
    pg = Source()
    monkeypatch.setattr(reconcile, "_source_facts", lambda vi, stores, ns, name: (None, pg.lock_held))

    def reset(conn: connection.ConnectionInfo, ns: str, name: str) -> None:
        pg.watermark_resets += 1

    monkeypatch.setattr(reconcile, "_reset_watermark", reset)

    def credentials(ctx: Context, obj: Obj[api.VectorIndex], stores: reconcile.Stores) -> None:
        pg.credentials.append(len(ctx.kube.list_("Job", NS, jobs.rebuild_selector(NAME))))

    monkeypatch.setattr(reconcile, "_sync_credentials", credentials)
    return pg


@pytest.fixture
def local_ctx(kube: FakeKube, tmp_path: Path) -> Context:
    put_store(kube, "vectors", "qdrant")
    put_store(kube, "pg", "postgres")
    emap = tmp_path / "endpoints.json"
    emap.write_text(
        json.dumps({f"{NS}/vectors": {"endpoint": "127.0.0.1:6333", "localPath": str(tmp_path / "qdrant")}})
    )
    return Context(
        settings=Settings(job_image="example.test/mlinfra:1", rebuild_backoff=60),
        kube=kube,
        endpoints=endpoints.EndpointMap(emap),
    )


def obj_of(b: dict[str, Any]) -> Obj[api.VectorIndex]:
    return Obj(b, problems.parse(api.VectorIndex, b), Recorder())


def events(o: Obj[api.VectorIndex]) -> list[tuple[str, str, str]]:
    assert isinstance(o.report, Recorder)
    return o.report.events


def problem_of(ctx: Context, o: Obj[api.VectorIndex]) -> Problem:
    with pytest.raises(ProblemError) as raised:
        reconcile.reconcile(ctx, o)
    return raised.value.problem


def conds(b: dict[str, Any], problem: Problem) -> dict[str, tuple[str, str]]:
    st = status.problem_status(b, problem)
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def rebuild_jobs(kube: FakeKube) -> list[dict[str, Any]]:
    return kube.list_("Job", NS, jobs.rebuild_selector(NAME))


def end_job(kube: FakeKube, name: str, condition: str) -> None:
    job = kube.get("Job", NS, name)
    job["status"] = {"conditions": [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}]}
    kube.put(job)


def backdate(kube: FakeKube, name: str, seconds: float) -> None:
    """The attempt seen over ``seconds`` earlier than it was: its backoff has run that much."""
    notes = kube.get("Job", NS, name)["metadata"]["annotations"]
    ended = datetime.datetime.fromisoformat(notes[attempts.ENDED_ANNOTATION]) - datetime.timedelta(seconds=seconds)
    kube.merge_patch("Job", NS, name, {"metadata": {"annotations": {attempts.ENDED_ANNOTATION: ended.isoformat()}}})


def test_a_rebuild_is_started_followed_retried_after_its_backoff_and_announced_once(
    local_ctx: Context, kube: FakeKube, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = local_ctx
    reconcile.reconcile(ctx, obj_of(body()))
    first = collection.physical_name(model(body()).spec)
    dot = body("Dot")
    target = collection.physical_name(model(dot).spec)
    assert source.watermark_resets == 1 and rebuild_jobs(kube) == []

    # The immutable change: attempt 1 starts in a Job, the operator only says so (Reindexing True, Ready False).
    o = obj_of(dot)
    problem = problem_of(ctx, o)
    job1 = jobs.rebuild_job_name(NAME, target, 1)
    assert [j["metadata"]["name"] for j in rebuild_jobs(kube)] == [job1]
    assert source.credentials[-1] == 0  # the sync role and its Secret before the Job that mounts them
    assert events(o) == [
        (
            "Normal",
            "Rebuilding",
            f"vectors.distance: Cosine -> Dot: building {target} beside {first} in Job {job1} (attempt 1)",
        )
    ]
    assert (problem.reason, problem.stalled, problem.recheck) == (status.REBUILDING, False, 15.0)
    assert problem.message.startswith(f"vectors.distance: Cosine -> Dot: Job {job1} (attempt 1) is building {target}")
    assert conds(dot, problem) == {
        "Ready": ("False", "Rebuilding"),
        "Reconciling": ("True", "Rebuilding"),
        "Stalled": ("False", "Ready"),
        "Reindexing": ("True", "Rebuilding"),
    }

    # Running (the Job active): looked at again, nothing new; Qdrant is not even opened (a local-mode directory
    # is the rebuild process's while it runs).
    def not_opened(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Qdrant opened while a rebuild runs")

    with monkeypatch.context() as patched:
        patched.setattr(qdrant_engine, "open_client", not_opened)
        o = obj_of(dot)
        assert problem_of(ctx, o).reason == status.REBUILDING and events(o) == []
    assert len(rebuild_jobs(kube)) == 1

    # Complete without a swap (kwok: nothing ran): a failed attempt, the next one after the backoff.
    end_job(kube, job1, "Complete")
    problem = problem_of(ctx, obj_of(dot))
    assert (problem.reason, problem.stalled) == (rebuild.BACKFILL_FAILED, False)
    assert problem.message.startswith(f"rebuild attempt 1 failed: Job {job1} completed without moving the alias")
    assert f"alias docs left on {first}; attempt 2 starts at " in problem.message
    assert problem.recheck == 15.0  # looked at again before the attempt is due: a process may still start
    assert conds(dot, problem)["Reindexing"] == ("False", rebuild.BACKFILL_FAILED)
    assert conds(dot, problem)["Ready"] == ("False", rebuild.BACKFILL_FAILED)
    assert len(rebuild_jobs(kube)) == 1
    seen_over = kube.get("Job", NS, job1)["metadata"]["annotations"][attempts.ENDED_ANNOTATION]
    assert problem_of(ctx, obj_of(dot)).reason == rebuild.BACKFILL_FAILED  # the same attempt: not seen over anew
    assert kube.get("Job", NS, job1)["metadata"]["annotations"][attempts.ENDED_ANNOTATION] == seen_over

    # Its process runs after all (the lock held): running, and the backoff will count from when it ends.
    source.lock_held = True
    problem = problem_of(ctx, obj_of(dot))
    assert problem.reason == status.REBUILDING and f"Job {job1} (attempt 1)" in problem.message
    assert f"({reconcile.RUNNING_PROCESS})" in problem.message
    assert attempts.ENDED_ANNOTATION not in kube.get("Job", NS, job1)["metadata"]["annotations"]
    source.lock_held = False

    # Killed (OOM): the pod says so, the status names the attempt and the next one's time.
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{job1}-x", "namespace": NS, "labels": {"job-name": job1}},
            "status": {
                "containerStatuses": [
                    {"name": "sync", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
                ]
            },
        }
    )
    end_job(kube, job1, "Failed")
    problem = problem_of(ctx, obj_of(dot))
    assert problem.message.startswith(
        f"rebuild attempt 1 failed: Job {job1} failed (BackoffLimitExceeded); its container: OOMKilled (exit code 137)"
    )
    assert not problem.stalled and len(rebuild_jobs(kube)) == 1

    # The backoff over: attempt 2.
    backdate(kube, job1, 60)
    o = obj_of(dot)
    assert problem_of(ctx, o).reason == status.REBUILDING
    job2 = jobs.rebuild_job_name(NAME, target, 2)
    assert sorted(j["metadata"]["name"] for j in rebuild_jobs(kube)) == sorted([job1, job2])
    assert [e[1] for e in events(o)] == ["Rebuilding"] and f"Job {job2} (attempt 2)" in events(o)[0][2]

    # Attempt 2's process does the rebuild (here, in this process: an empty source), its Job completes.
    with qdrant_engine.open_client(reconcile.resolve_stores(ctx, model(dot)).qdrant) as client:
        rebuild.rebuild(client, model(dot).spec, lambda into: 0, 0, owner=f"{NS}/{NAME}")
    end_job(kube, job2, "Complete")
    o = obj_of(dot)
    reconcile.reconcile(ctx, o)
    assert events(o) == [
        (
            "Normal",
            "Rebuilt",
            f"alias docs moved from {first} to {target} (0 points, count verified against the source)",
        )
    ]
    assert attempts.ANNOUNCED_ANNOTATION in kube.get("Job", NS, job2)["metadata"]["annotations"]
    o = obj_of(dot)
    reconcile.reconcile(ctx, o)
    assert events(o) == []  # once per rebuild

    # Another immutable change: the done rebuild's Jobs build a collection the spec no longer wants (deleted),
    # a new rebuild starts.
    euclid = body("Euclid")
    o = obj_of(euclid)
    assert problem_of(ctx, o).reason == status.REBUILDING
    new_target = collection.physical_name(model(euclid).spec)
    assert [j["metadata"]["name"] for j in rebuild_jobs(kube)] == [jobs.rebuild_job_name(NAME, new_target, 1)]


def test_a_refused_backfill_is_stalled_and_still_retried_after_the_backoff(
    local_ctx: Context, kube: FakeKube, source: Source
) -> None:
    reconcile.reconcile(local_ctx, obj_of(body()))
    dot = body("Dot")
    problem_of(local_ctx, obj_of(dot))
    job1 = rebuild_jobs(kube)[0]["metadata"]["name"]
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{job1}-x", "namespace": NS, "labels": {"job-name": job1}},
            "status": {
                "containerStatuses": [
                    {
                        "name": "sync",
                        "state": {
                            "terminated": {
                                "reason": "Error",
                                "exitCode": 1,
                                "message": "QdrantRefused: backfill of 'docs-x' failed: 400 Bad Request",
                            }
                        },
                    }
                ]
            },
        }
    )
    end_job(kube, job1, "Failed")
    problem = problem_of(local_ctx, obj_of(dot))
    assert (problem.reason, problem.stalled) == (rebuild.BACKFILL_FAILED, True)
    assert problem.recheck == 15.0
    assert "QdrantRefused: backfill of 'docs-x' failed: 400 Bad Request" in problem.message
    assert conds(dot, problem)["Stalled"] == ("True", rebuild.BACKFILL_FAILED)


def test_a_held_rebuild_lock_is_a_running_rebuild_even_without_a_job(
    local_ctx: Context, kube: FakeKube, source: Source
) -> None:
    reconcile.reconcile(local_ctx, obj_of(body()))
    source.lock_held = True
    problem = problem_of(local_ctx, obj_of(body("Dot")))
    assert problem.reason == status.REBUILDING and rebuild_jobs(kube) == []
    assert problem.message.startswith(f"a rebuild process holds the rebuild lock of VectorIndex {NS}/{NAME}")


def test_a_stale_rebuild_jobs_collection_is_not_pruned_while_it_may_still_be_filled(
    local_ctx: Context, kube: FakeKube, source: Source
) -> None:
    """The spec changed back while a rebuild ran: its Job is deleted, its collection left until nothing
    fills it, then pruned as a stray."""
    reconcile.reconcile(local_ctx, obj_of(body()))
    problem_of(local_ctx, obj_of(body("Dot")))
    dot_target = collection.physical_name(model(body("Dot")).spec)
    with qdrant_engine.open_client(reconcile.resolve_stores(local_ctx, model(body())).qdrant) as client:
        collection.create(client, model(body("Dot")).spec, dot_target, owner=f"{NS}/{NAME}")
    o = obj_of(body())
    reconcile.reconcile(local_ctx, o)  # back to Cosine: served already
    assert rebuild_jobs(kube) == [] and events(o) == []
    with qdrant_engine.open_client(reconcile.resolve_stores(local_ctx, model(body())).qdrant) as client:
        assert client.collection_exists(dot_target)
    o = obj_of(body())
    reconcile.reconcile(local_ctx, o)
    assert [e[1] for e in events(o)] == ["StrayCollectionsDeleted"] and dot_target in events(o)[0][2]


def test_the_termination_message_is_one_line_in_the_kubelets_file_and_nothing_is_created_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = tmp_path / "termination-log"
    monkeypatch.setenv(rebuild_cli.TERMINATION_LOG_ENV, str(absent))
    rebuild_cli.termination_message(rebuild_cli.BACKFILL_FAILED, "no pod here")
    assert not absent.exists()  # outside a pod (the e2e tests' processes) no file appears
    absent.write_text("")  # the kubelet's
    rebuild_cli.termination_message(rebuild_cli.QDRANT_REFUSED, "backfill of 'docs-2' failed:\n400 " + "x" * 5000)
    written = absent.read_bytes()
    assert written.startswith(b"QdrantRefused: backfill of 'docs-2' failed: 400 xxx") and b"\n" not in written
    assert len(written) == sync_command.MAX_TERMINATION_MESSAGE
