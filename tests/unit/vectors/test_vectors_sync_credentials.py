"""The VectorIndex sync credentials around the role (``vectors.synccreds``) with Kubernetes in memory: the
Secret the Jobs mount (the source store as published, the role's user, a password kept only there), a role
conflict stalls without a Secret of the role, the role repaired only for an index whose reconcile made it, the
deletion that cannot reach the store says so and goes on. The PostgreSQL side (``vectors.syncrole``) is
stood in for; tests/integration/test_vectors_sync_role.py runs the real one."""

from __future__ import annotations

from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra import problems
from mlinfra.api import vectorindex as api
from mlinfra.config import Settings
from mlinfra.context import Context, Obj, Recorder
from mlinfra.engines import connection
from mlinfra.engines import names as store_names
from mlinfra.problems import ProblemError
from mlinfra.stores import connsecret
from mlinfra.vectors import synccreds, syncrole

pytestmark = pytest.mark.unit

NS, NAME, UID = "ml", "docs", "vi-uid"
SOURCE = {
    "storeRef": {"name": "pg"},
    "table": "docs",
    "idColumn": "id",
    "vectorColumn": "embedding",
    "updatedAtColumn": "updated_at",
}
# What the operator reaches (the dev endpoint map applied) and what the store publishes for pods.
REACHED = connection.ConnectionInfo.for_engine("postgres", "127.0.0.1", "admin-pw", port=15432, database="app")
PUBLISHED = connection.ConnectionInfo.for_engine("postgres", "pg.ml.svc", "admin-pw", port=5432, database="app")


def index(source: bool = True) -> Obj[api.VectorIndex]:
    body = {
        "apiVersion": "mlinfra.io/v1alpha1",
        "kind": "VectorIndex",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID},
        "spec": {
            "storeRef": {"name": "vectors"},
            "collection": "docs",
            "vectors": {"size": 4, "distance": "Cosine"},
            **({"source": SOURCE} if source else {}),
        },
    }
    return Obj(body, problems.parse(api.VectorIndex, body), Recorder())


def events(o: Obj[api.VectorIndex]) -> list[tuple[str, str, str]]:
    assert isinstance(o.report, Recorder)
    return o.report.events


class Roles:
    """The PostgreSQL side: which roles exist with whose password, and which conflict."""

    def __init__(self) -> None:
        self.made: dict[str, str] = {}  # role -> password
        self.conflicts: set[str] = set()
        self.in_place = True
        self.bookkeeping = 0

    def ensure(self, conn: Any, database: str, source: api.Source, namespace: str, name: str, password: str) -> str:
        role = syncrole.role_name(namespace, name)
        assert database == "app" and source.table == "docs"
        if role in self.conflicts:
            raise syncrole.RoleConflict(role, None, "VectorIndex")
        self.made[role] = password
        return role


@pytest.fixture
def roles(monkeypatch: pytest.MonkeyPatch) -> Roles:
    pg = Roles()
    monkeypatch.setattr(syncrole, "ensure", pg.ensure)
    monkeypatch.setattr(syncrole, "in_place", lambda conn, source, ns, name: pg.in_place)

    def bookkeeping(conn: Any) -> None:
        pg.bookkeeping += 1

    monkeypatch.setattr(syncrole, "ensure_bookkeeping", bookkeeping)
    return pg


@pytest.fixture
def ctx(kube: FakeKube) -> Context:
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pg-conn", "namespace": NS},
            "stringData": PUBLISHED.to_secret_data(),
        }
    )
    return Context(settings=Settings(), kube=kube)


def mounted(kube: FakeKube) -> connection.ConnectionInfo:
    secret = kube.get("Secret", NS, syncrole.secret_name(NAME))
    return connection.ConnectionInfo.from_secret_data(connsecret.values(secret))


def test_the_jobs_secret_is_the_published_store_with_the_roles_credentials(
    ctx: Context, kube: FakeKube, roles: Roles
) -> None:
    o = index()
    assert synccreds.ensure(ctx, o, None, REACHED) == "docs-sync-source"  # type: ignore[arg-type]
    role = syncrole.role_name(NS, NAME)
    info = mounted(kube)
    assert (info.username, info.password) == (role, roles.made[role])
    assert (info.endpoint, info.database) == (PUBLISHED.endpoint, "app")  # as pods reach it, not the operator
    assert info.password != PUBLISHED.password and len(info.password) >= 24
    secret = kube.get("Secret", NS, "docs-sync-source")
    assert [r["uid"] for r in secret["metadata"]["ownerReferences"]] == [UID]
    assert secret["metadata"]["labels"]["mlinfra.io/vectorindex"] == NAME
    assert roles.bookkeeping == 1
    # Again: the same password (kept in the Secret), nothing else changes.
    synccreds.ensure(ctx, index(), None, REACHED)  # type: ignore[arg-type]
    assert mounted(kube).password == info.password and roles.made[role] == info.password


def test_a_role_of_the_name_that_is_not_the_indexs_stalls_and_no_job_gets_its_credentials(
    ctx: Context, kube: FakeKube, roles: Roles
) -> None:
    roles.conflicts.add(syncrole.role_name(NS, NAME))
    with pytest.raises(ProblemError) as raised:
        synccreds.ensure(ctx, index(), None, REACHED)  # type: ignore[arg-type]
    problem = raised.value.problem
    assert (problem.reason, problem.stalled, problem.recheck) == (synccreds.ROLE_CONFLICT, True, 60.0)
    assert "made outside the operator" in problem.message and "rename this VectorIndex" in problem.message
    # Only the password was kept: no user name, so nothing can log in with it.
    assert "username" not in connsecret.values(kube.get("Secret", NS, "docs-sync-source"))


def test_the_repair_grants_again_only_for_an_index_whose_reconcile_made_the_role(
    ctx: Context, kube: FakeKube, roles: Roles
) -> None:
    o = index()
    roles.in_place = False
    synccreds.repair(ctx, o, None, REACHED)  # type: ignore[arg-type]
    assert roles.made == {} and events(o) == [] and roles.bookkeeping == 1  # no Secret of its own: not made
    synccreds.ensure(ctx, index(), None, REACHED)  # type: ignore[arg-type]
    roles.made.clear()
    synccreds.repair(ctx, o, None, REACHED)  # type: ignore[arg-type]
    assert list(roles.made) == [syncrole.role_name(NS, NAME)]
    assert [e[1] for e in events(o)] == [synccreds.SYNC_ROLE_REPAIRED]
    roles.in_place, roles.made = True, {}
    synccreds.repair(ctx, index(), None, REACHED)  # type: ignore[arg-type]
    assert roles.made == {}


def test_a_deletion_that_cannot_reach_the_store_keeps_the_role_and_says_so(ctx: Context, roles: Roles) -> None:
    o = index()
    synccreds.drop(ctx, o)  # the DataStore does not exist
    ((kind, reason, message),) = events(o)
    assert (kind, reason) == ("Warning", "SyncRoleKept")
    assert syncrole.role_name(NS, NAME) in message and "not found" in message
    without = index(source=False)
    synccreds.drop(ctx, without)
    assert events(without) == []


def test_the_secret_is_labelled_as_the_operators_for_the_index() -> None:
    assert synccreds.labels(NAME) == {
        "app.kubernetes.io/managed-by": store_names.MANAGED_BY,
        "mlinfra.io/vectorindex": NAME,
    }
