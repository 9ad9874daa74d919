"""The server of a volume backup target as the operator keeps it: shared by every user of the claim through
owner references on its Deployment (never a controller), its Service and token Secret owned by the
Deployment, a foreign object of one of its names never touched, and the server deleted with its last user."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra.api import backup as backup_api
from mlinfra.backup import configured
from mlinfra.context import Context
from mlinfra.problems import ProblemError
from mlinfra.stores import backupaccess, connsecret, volumeserver

pytestmark = pytest.mark.unit

NS = "ml"
CLAIM = "ml-backups"


def owner(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "mlinfra.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": NS, "uid": uid}}


def owner_uids(kube: FakeKube) -> list[str]:
    deployment = kube.get("Deployment", NS, configured.volume_server(CLAIM))
    return [ref["uid"] for ref in deployment["metadata"]["ownerReferences"]]


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("ml-backups", "backup-volume-ml-backups"),
        ("backups.v2", None),  # a dot: a Service name is a DNS label
        ("9" * 40, None),  # too long for a label once prefixed
        ("b" * 253, None),
    ],
)
def test_server_names_are_dns_labels_and_distinct(claim: str, expected: str | None) -> None:
    name = configured.volume_server(claim)
    if expected is not None:
        assert name == expected
    assert len(name) <= 63 and name.replace("-", "").isalnum() and name[0].isalpha() and name == name.lower()
    assert len(configured.volume_token_secret(claim)) <= 253
    # Two claims that sanitise alike still get two servers.
    assert configured.volume_server("backups-v2") != configured.volume_server("backups.v2")


def test_the_first_user_creates_the_server_its_service_and_a_token(ctx: Context, kube: FakeKube) -> None:
    store = owner("DataStore", "cache", "uid-store")
    volumeserver.ensure(ctx, NS, CLAIM, store)
    server = configured.volume_server(CLAIM)
    deployment = kube.get("Deployment", NS, server)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "backups", "persistentVolumeClaim": {"claimName": CLAIM}}
    assert pod["containers"][0]["image"] == "example.test/mlinfra:1"
    assert pod["containers"][0]["args"][:2] == ["backup-volume", "serve"]
    assert pod["automountServiceAccountToken"] is False
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two servers on one claim
    refs = deployment["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == ["uid-store"] and not refs[0].get("controller")
    service = kube.get("Service", NS, server)
    token = kube.get("Secret", NS, configured.volume_token_secret(CLAIM))
    policy = kube.get("NetworkPolicy", NS, server)
    # Only this namespace's pods reach it (no operator namespace is configured here).
    assert policy["spec"]["ingress"] == [
        {"from": [{"podSelector": {}}], "ports": [{"port": configured.VOLUME_PORT, "protocol": "TCP"}]}
    ]
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    for child in (service, token, policy):
        assert [r["uid"] for r in child["metadata"]["ownerReferences"]] == [deployment["metadata"]["uid"]]
    value = connsecret.values(token)[configured.VOLUME_TOKEN_KEY]
    assert len(value) >= 32
    # The token never travels in the pod spec: only the Secret's name does.
    assert value not in str(deployment)


def test_more_users_share_it_and_it_goes_with_the_last(ctx: Context, kube: FakeKube) -> None:
    store, backup = owner("DataStore", "cache", "uid-store"), owner("Backup", "first", "uid-backup")
    volumeserver.ensure(ctx, NS, CLAIM, store)
    token = connsecret.values(kube.get("Secret", NS, configured.volume_token_secret(CLAIM)))
    volumeserver.ensure(ctx, NS, CLAIM, backup)
    volumeserver.ensure(ctx, NS, CLAIM, store)  # again: listed once
    assert owner_uids(kube) == ["uid-store", "uid-backup"]
    # The token is generated once: the pods that mounted it keep working.
    assert connsecret.values(kube.get("Secret", NS, configured.volume_token_secret(CLAIM))) == token

    volumeserver.release(ctx, NS, store, keep={CLAIM})  # still used by the store: kept
    assert owner_uids(kube) == ["uid-store", "uid-backup"]
    volumeserver.release(ctx, NS, store)  # the store's policy moved elsewhere
    assert owner_uids(kube) == ["uid-backup"]
    volumeserver.release(ctx, NS, backup)
    assert kube.get_or_none("Deployment", NS, configured.volume_server(CLAIM)) is None


@pytest.mark.parametrize("kind", ["Deployment", "Service", "NetworkPolicy", "Secret"])
def test_a_foreign_object_of_a_servers_name_is_never_taken_over(ctx: Context, kube: FakeKube, kind: str) -> None:
    name = configured.volume_token_secret(CLAIM) if kind == "Secret" else configured.volume_server(CLAIM)
    api_version = {"Deployment": "apps/v1", "NetworkPolicy": "networking.k8s.io/v1"}.get(kind, "v1")
    foreign = kube.put({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": NS}})
    with pytest.raises(ProblemError) as err:
        volumeserver.ensure(ctx, NS, CLAIM, owner("DataStore", "cache", "uid-store"))
    assert err.value.problem.reason == "ChildConflict" and err.value.problem.stalled
    assert name in err.value.problem.message
    assert kube.get(kind, NS, name) == foreign
    # Nor is another claim's server released by a store that never used it.
    volumeserver.release(ctx, NS, owner("DataStore", "cache", "uid-store"))
    assert kube.get(kind, NS, name) == foreign


def test_not_ready_until_the_deployment_has_a_ready_pod(ctx: Context, kube: FakeKube) -> None:
    with pytest.raises(ProblemError) as err:
        volumeserver.wait_ready(ctx, NS, CLAIM)
    assert not err.value.problem.stalled and err.value.problem.reason == volumeserver.STARTING
    volumeserver.ensure(ctx, NS, CLAIM, owner("DataStore", "cache", "uid-store"))
    with pytest.raises(ProblemError, match="no ready pod"):
        volumeserver.wait_ready(ctx, NS, CLAIM)
    kube.merge_patch(
        "Deployment", NS, configured.volume_server(CLAIM), {"status": {"availableReplicas": 1}}, subresource="status"
    )
    volumeserver.wait_ready(ctx, NS, CLAIM)


def test_the_target_is_opened_at_the_service_with_the_token(ctx: Context, kube: FakeKube) -> None:
    volumeserver.ensure(ctx, NS, CLAIM, owner("DataStore", "cache", "uid-store"))
    spec = backup_api.Target.model_validate({"volume": {"claimName": CLAIM}})
    assert configured.secret_names(spec) == [configured.volume_token_secret(CLAIM)]
    target = backupaccess.target(spec, backupaccess.api_reader(ctx, NS), NS)
    token = connsecret.values(kube.get("Secret", NS, configured.volume_token_secret(CLAIM)))["token"]
    assert CLAIM in target.describe() and token not in target.describe() and token not in repr(target)
    backup_id = "20261130T031500Z-abc123"
    expected = f"volume://ml-backups/ml/cache/uid/backups/{backup_id}/"
    assert configured.location(spec, "ml/cache/uid", backup_id) == expected


def test_a_target_is_exactly_one_of_s3_and_volume() -> None:
    with pytest.raises(ValueError, match="exactly one of s3"):
        backup_api.Target.model_validate({})
    s3 = {"bucket": "bkt", "credentialsSecretRef": {"name": "c"}}
    with pytest.raises(ValueError, match="exactly one of s3"):
        backup_api.Target.model_validate({"s3": s3, "volume": {"claimName": CLAIM}})


def test_a_process_outside_the_cluster_reaches_the_server_where_the_endpoint_map_says(
    ctx: Context, kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runbook's `mlinfra restore` from a workstation: a port-forward named in MLINFRA_ENDPOINT_MAP."""
    volumeserver.ensure(ctx, NS, CLAIM, owner("DataStore", "cache", "uid-store"))
    read = backupaccess.api_reader(ctx, NS)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({f"{NS}/{configured.volume_server(CLAIM)}": {"endpoint": "127.0.0.1:18080"}}))
    monkeypatch.setenv("MLINFRA_ENDPOINT_MAP", str(mapping))
    backupaccess._context.cache_clear()
    try:
        forwarded = backupaccess.volume_target(CLAIM, read, NS)
        assert (forwarded.host, forwarded.port) == ("127.0.0.1", 18080)
        monkeypatch.delenv("MLINFRA_ENDPOINT_MAP")
        backupaccess._context.cache_clear()
        in_cluster = backupaccess.volume_target(CLAIM, read, NS)
        assert (in_cluster.host, in_cluster.port) == (f"{configured.volume_server(CLAIM)}.{NS}.svc", 8080)
    finally:
        backupaccess._context.cache_clear()
