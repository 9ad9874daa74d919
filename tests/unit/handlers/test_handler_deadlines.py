"""A call that missed its deadline degrades the object that made it (Ready=False, DeadlineExceeded, retried)
and never escapes the handlers; /healthz fails only when handlers are stuck while objects exist."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import kopf
import pytest
from fakekube import FakeKube
from kopf._core.engines import indexing, probing

from mlinfra import problems
from mlinfra.config import Settings
from mlinfra.context import Context, Obj
from mlinfra.engines import connection
from mlinfra.handlers import featureview, kind, startup

NS = "hd"
STUCK = connection.PostgresDeadlineExceeded("PostgreSQL at pg.example:5432 did not answer within 65 s")


def body() -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "FeatureView",
            "metadata": {"name": "clicks", "namespace": NS, "uid": "u-1", "generation": 3},
            "spec": {
                "entities": [{"name": "user_id", "type": "int64"}],
                "features": [{"name": "clicks", "type": "int64"}],
                "offline": {"storeRef": {"name": "offline"}},
                "online": {"storeRef": {"name": "online"}},
            },
            "status": {"offlineTable": "public.clicks"},
        }
    )


def stuck(_ctx: Context, _obj: Obj[Any]) -> Any:
    raise STUCK


def handlers(kube: FakeKube) -> dict[str, Callable[..., Any]]:
    registry = kopf.OperatorRegistry()
    kind.register(registry, Context(kube=kube), dataclasses.replace(featureview.KIND, reconcile=stuck, observe=stuck))
    found = {h.fn.__name__: h.fn for h in registry._changing.get_all_handlers()}
    found.update({h.fn.__name__: h.fn for h in registry._spawning.get_all_handlers()})
    return found


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "warn", lambda _body, reason, message: seen.append((reason, message)))
    return seen


def conditions(patch: kopf.Patch) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch["status"]["conditions"]}


@pytest.mark.parametrize(("retries", "delay"), [(0, 15.0), (1, 30.0), (3, 120.0), (6, 600.0), (50, 600.0)])
def test_a_problem_that_keeps_coming_back_is_retried_less_and_less_often(
    kube: FakeKube, warnings: list[tuple[str, str]], retries: int, delay: float
) -> None:
    with pytest.raises(kopf.TemporaryError) as retry:
        handlers(kube)["reconcile"](body=body(), patch=kopf.Patch(), memo=kopf.Memo(), retry=retries)
    assert retry.value.delay == delay == problems.retry_delay(featureview.KIND.retry_delay, retries)
    assert len(warnings) == 1  # one Warning event per attempt: fewer attempts, fewer events


def test_a_reconcile_that_missed_a_deadline_reports_it_and_is_retried(
    kube: FakeKube, warnings: list[tuple[str, str]]
) -> None:
    patch, memo = kopf.Patch(), kopf.Memo()
    with pytest.raises(kopf.TemporaryError) as retry:
        handlers(kube)["reconcile"](body=body(), patch=patch, memo=memo)
    assert retry.value.delay == featureview.KIND.retry_delay
    conds = conditions(patch)
    assert conds["Ready"] == ("False", problems.DEADLINE_EXCEEDED)
    assert conds["Reconciling"] == ("True", problems.DEADLINE_EXCEEDED)  # not stalled: it recovers by itself
    assert conds["Stalled"][0] == "False"
    assert warnings == [(problems.DEADLINE_EXCEEDED, str(STUCK))]
    assert "offlineTable" not in patch["status"]  # where the data is: unchanged, so not rewritten


def test_an_observation_that_missed_a_deadline_writes_the_problem_and_does_not_raise(kube: FakeKube) -> None:
    patch, memo = kopf.Patch(), kopf.Memo()
    memo.mlinfra_reconciled = 3
    handlers(kube)["observe"](body=body(), patch=patch, memo=memo)
    ready = next(c for c in patch["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", problems.DEADLINE_EXCEEDED, str(STUCK))
    assert memo.mlinfra_reconciled == 3  # the timer keeps observing: it sees the store come back


def test_the_drift_timer_lets_a_deadline_go(kube: FakeKube) -> None:
    memo = kopf.Memo()
    memo.mlinfra_reconciled = 3
    handlers(kube)["correct_drift"](body=body(), memo=memo)  # the observing timer reports it


# --- liveness ---------------------------------------------------------------------------------------------


def test_liveness_passes_while_handlers_run() -> None:
    assert startup.check_live(idle=12.34, objects=40, stall_timeout=300) == 12.3


def test_an_idle_operator_without_objects_is_alive() -> None:
    assert startup.check_live(idle=86_400, objects=0, stall_timeout=300) == 86_400


def test_no_activity_while_objects_exist_is_stuck() -> None:
    with pytest.raises(startup.Stuck, match=r"no handler or timer started for 301 s .* while 2 objects exist"):
        startup.check_live(idle=301, objects=2, stall_timeout=300)


@pytest.fixture
def operator_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    startup.register(registry, Settings(stall_timeout=60))
    return registry


@pytest.fixture
def idle_for(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    def set_idle(seconds: float) -> None:
        monkeypatch.setattr(startup, "_last_activity", time.monotonic() - seconds)

    return set_idle


async def healthz(registry: kopf.OperatorRegistry, objects: int) -> tuple[int, str]:
    """/healthz as Kopf serves it, with ``objects`` DataStores in the index."""
    indexers = indexing.OperatorIndexers()
    indexers.ensure(registry._indexing.get_all_handlers())
    for i in range(objects):
        indexers["datastores_live"].replace(("ns", f"ds-{i}", f"uid-{i}"), True)
    ready = asyncio.Event()
    with socket.socket() as probe_port:  # a port the kernel picks
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    server = asyncio.create_task(
        probing.health_reporter(
            f"http://127.0.0.1:{port}/healthz",
            memo=kopf.Memo(),
            indices=indexers.indices,
            registry=registry,
            settings=kopf.OperatorSettings(),
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=10)) as resp,
        ):
            return resp.status, await resp.text()
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


def test_the_probes_are_registered_as_coroutines_that_fail_at_once(operator_registry: kopf.OperatorRegistry) -> None:
    probes = {h.id: h for h in operator_registry._activities.get_all_handlers() if h.activity.value == "probe"}
    assert set(probes) == {"objects", "lastActivitySeconds"}
    assert probes["lastActivitySeconds"].errors == kopf.ErrorsMode.PERMANENT
    assert all(asyncio.iscoroutinefunction(h.fn) for h in probes.values())
    indexed = {h.id for h in operator_registry._indexing.get_all_handlers()}
    assert indexed == {
        "datastores_live",
        "featureviews_live",
        "modelregistries_live",
        "vectorindexes_live",
        "backups_live",
    }


async def test_healthz_answers_200_with_objects_and_recent_activity(
    operator_registry: kopf.OperatorRegistry, idle_for: Callable[[float], None]
) -> None:
    idle_for(5)
    status, text = await healthz(operator_registry, objects=3)
    assert status == 200 and '"objects": 3' in text


async def test_healthz_answers_200_when_idle_without_objects(
    operator_registry: kopf.OperatorRegistry, idle_for: Callable[[float], None]
) -> None:
    idle_for(3600)
    status, _ = await healthz(operator_registry, objects=0)
    assert status == 200


async def test_healthz_answers_500_when_stuck_with_objects(
    operator_registry: kopf.OperatorRegistry, idle_for: Callable[[float], None]
) -> None:
    idle_for(3600)
    status, _ = await healthz(operator_registry, objects=1)
    assert status == 500


@pytest.fixture(autouse=True)
def _fresh_activity() -> Iterator[None]:
    yield
    startup.touch()
