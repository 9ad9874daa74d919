"""A host-path volume provisioner for the real node: PVCs of its StorageClass get a directory on the node.

Run by :mod:`mlinfra.devenv.realnode` as ``python -m mlinfra.devenv.provisioner`` (a process of the
platform, like kube-proxy). What kind's local-path-provisioner does for a one-node cluster, in one loop:

- a Pending PVC of the class gets a PersistentVolume bound to it (``claimRef``), backed by a new directory
  under ``--root`` with node affinity to the node;
- a Released PV of ours with reclaim policy ``Delete`` loses its directory, then the PV is deleted.
  ``Retain`` keeps both, as in any cluster.

Directories are world-writable (mode 0777): a hostPath volume ignores ``fsGroup``, and the engines' pods run
as their image's unprivileged user. The data they write is theirs (PostgreSQL's data directory is 0700).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

log = logging.getLogger("mlinfra.devenv.provisioner")

PROVISIONER = "mlinfra.io/real-node-hostpath"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def storage_class(name: str, default: bool) -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": name,
            "annotations": {"storageclass.kubernetes.io/is-default-class": str(default).lower()},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def volume_for(claim: dict[str, Any], path: Path, node: str, reclaim: str) -> dict[str, Any]:
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
            "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": spec["storageClassName"],
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "hostPath": {"path": str(path), "type": "Directory"},
            "claimRef": {
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
                    ]
                }
            },
        },
    }


def _items(api: client.ApiClient, listed: Any) -> list[dict[str, Any]]:
    """The API's own JSON shape (camelCase keys) of a typed list: simpler than the typed Optional fields."""
    return list(api.sanitize_for_serialization(listed)["items"])  # type: ignore[no-untyped-call]


def reconcile_once(api: client.ApiClient, class_name: str, root: Path, node: str) -> None:
    core = client.CoreV1Api(api)
    sc = client.StorageV1Api(api).read_storage_class(class_name, _request_timeout=10)
    reclaim = sc.reclaim_policy or "Delete"
    volumes = _items(api, core.list_persistent_volume(_request_timeout=10))
    bound_claims = {v["spec"]["claimRef"]["uid"] for v in volumes if v["spec"].get("claimRef")}
    for claim in _items(api, core.list_persistent_volume_claim_for_all_namespaces(_request_timeout=10)):
        meta, spec = claim["metadata"], claim["spec"]
        if (
            spec.get("storageClassName") != class_name
            or spec.get("volumeName")
            or meta["uid"] in bound_claims
            or meta.get("deletionTimestamp")
        ):
            continue
        path = root / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o777)  # noqa: S103 - see the module docstring
        body = volume_for(claim, path, node, reclaim)
        core.create_persistent_volume(body, _request_timeout=10)  # type: ignore[arg-type]  # a dict body is sent as is
        log.info("provisioned %s for %s/%s", path, meta["namespace"], meta["name"])
    for volume in volumes:
        ours = (volume["metadata"].get("annotations") or {}).get(PROVISIONED_BY) == PROVISIONER
        spec = volume["spec"]
        if (
            ours
            and volume.get("status", {}).get("phase") == "Released"
            and spec.get("persistentVolumeReclaimPolicy") == "Delete"
        ):
            path = Path(spec["hostPath"]["path"])
            if path.parent == root:
                shutil.rmtree(path, ignore_errors=True)
            core.delete_persistent_volume(volume["metadata"]["name"], _request_timeout=10)
            log.info("deleted %s and %s", volume["metadata"]["name"], path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--node", required=True)
    parser.add_argument("--storage-class", required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    api = config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
    args.root.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            reconcile_once(api, args.storage_class, args.root, args.node)
        except Exception as exc:  # keep serving: the API server may restart under a test
            log.warning("provisioner pass failed: %s", exc)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
