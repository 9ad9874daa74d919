"""Serve managed DataStores locally: real servers in place of the containers kwok's Pods never run.

For every managed DataStore in the cluster (redis, postgres, neo4j) the backer starts real local servers
from what the operator rendered into the cluster: the engine config from the ``<name>-config`` ConfigMap
and the password from the generated ``<name>-credentials`` Secret, one server per replica, replicas
following the primary (Redis ``replicaof``, PostgreSQL ``pg_basebackup`` + streaming). It then writes the
operator's endpoint map (``mlinfra.engines.endpoints``) so an operator running outside the cluster reaches
them.

A backup volume's server (``stores.volumeserver``) is served the same way: a real server in this process on a
directory that outlives it, as the claim outlives its pod, at the address the endpoint map gives the
Deployment's ``<namespace>/<name>``.

Qdrant has no server binary here. A managed Qdrant store with one replica is served by qdrant-client's
local mode on a directory (``localPath`` in the map; every mlinfra process opens it through
``engines.qdrant.open_client``, which serialises access), and its status says "local-mode". More replicas
would be a cluster, which local mode cannot be: such a store's entry says so and it is never Ready.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra.backup import configured
from mlinfra.backup.volume_server import VolumeServer
from mlinfra.devenv import procs, restored
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import start_postgres
from mlinfra.devenv.redis import start_redis
from mlinfra.problems import SECRET_NOT_FOUND, Problem, ProblemError
from mlinfra.stores import backupaccess, restoreplan, volumeserver

log = logging.getLogger(__name__)

QDRANT_UNSERVED = (
    "not served locally: no Qdrant server binary can be obtained on this platform and "
    "qdrant-client's local mode is a single member; set replicas: 1 to use it here"
)
# Lines of a rendered config that only make sense inside the container (paths, the container's own
# addresses); the local server's own settings replace them.
_REDIS_LOCAL_ONLY = ("dir ", "port ", "bind ", "include ", "replicaof ", "logfile ", "pidfile ", "unixsocket")
_PG_LOCAL_ONLY = (
    "data_directory",
    "hba_file",
    "ident_file",
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "external_pid_file",
    "include",
    "primary_conninfo",
)


def _filter(text: str, prefixes: tuple[str, ...]) -> str:
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith(prefixes))


@dataclass
class Backed:
    """The local servers serving one managed store."""

    key: str
    engine: str
    replicas: int
    config_hash: str
    stack: procs.ProcStack = field(default_factory=procs.ProcStack)
    entry: dict[str, Any] = field(default_factory=dict)


class Backer:
    """Polls the cluster, keeps one set of local servers per managed store, writes the endpoint map."""

    def __init__(self, control_plane: ControlPlane, workdir: Path, map_path: Path, interval: float = 1.0) -> None:
        self.cp = control_plane
        self.workdir = workdir
        self.map_path = map_path
        self.interval = interval
        self.backed: dict[str, Backed] = {}
        self.volumes: dict[str, tuple[VolumeServer, Path, str]] = {}  # <ns>/<server> -> server, directory, token
        self.errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_map()

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> Backer:
        self._thread = threading.Thread(target=self._loop, name="devenv-backer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)
        for backed in self.backed.values():
            backed.stack.close()
        self.backed.clear()
        for server, _root, _token in self.volumes.values():
            server.stop()
        self.volumes.clear()
        self._write_map()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except Exception as exc:  # keep serving what runs; report on the next pass
                log.warning("backer pass failed: %s", exc)

    # -- one pass --------------------------------------------------------------------------------------
    def _json(self, *args: str) -> Any:
        return json.loads(self.cp.kubectl(*args, "-o", "json").stdout)

    def _secret_value(self, ns: str, name: str, key: str) -> str | None:
        out = self.cp.kubectl("get", "secret", name, "-n", ns, "-o", "json", check=False)
        if out.returncode != 0:
            return None
        raw = json.loads(out.stdout).get("data", {}).get(key)
        return base64.b64decode(raw).decode() if raw else None

    def sync(self) -> None:
        stores = self._json("get", "datastores.mlinfra.io", "-A")["items"]
        wanted: dict[str, dict[str, Any]] = {}
        for ds in stores:
            spec = ds.get("spec") or {}
            if spec.get("managed") and not ds["metadata"].get("deletionTimestamp"):
                wanted[f"{ds['metadata']['namespace']}/{ds['metadata']['name']}"] = ds
        for key in list(self.backed):
            if key not in wanted:
                log.info("backer: %s is gone; stopping its servers", key)
                self.backed.pop(key).stack.close()
        changed = False
        for key, ds in wanted.items():
            try:
                changed |= self._ensure(key, ds)
                self.errors.pop(key, None)
            except Exception as exc:
                self.errors[key] = str(exc)
                log.warning("backer: cannot serve %s yet: %s", key, exc)
        changed |= self._serve_volumes()
        if changed:
            self._write_map()

    def _serve_volumes(self) -> bool:
        """What a backup volume's server pod would do (``stores.volumeserver``): a real server, in this process,
        on a directory per claim that outlives the server, as the claim outlives its pod."""
        found = self._json("get", "deployments", "-A", "-l", f"app.kubernetes.io/component={volumeserver.COMPONENT}")
        wanted: dict[str, tuple[Path, str]] = {}
        for deployment in found["items"]:
            meta = deployment["metadata"]
            claim = (meta.get("annotations") or {}).get(volumeserver.CLAIM_ANNOTATION)
            if not claim or meta.get("deletionTimestamp"):
                continue
            token = self._secret_value(meta["namespace"], configured.volume_token_secret(claim), "token")
            if not token:
                continue  # the operator writes it right after the Deployment
            digest = hashlib.sha256(f"{meta['namespace']}/{claim}".encode()).hexdigest()[:10]
            wanted[f"{meta['namespace']}/{meta['name']}"] = (self.workdir / f"volume-{digest}", token)
        changed = False
        for key in list(self.volumes):
            if wanted.get(key) != self.volumes[key][1:]:
                self.volumes.pop(key)[0].stop()
                changed = True
        for key, (root, token) in wanted.items():
            if key not in self.volumes:
                root.mkdir(parents=True, exist_ok=True)
                self.volumes[key] = (VolumeServer(root, token, host="127.0.0.1", port=0).start(), root, token)
                log.info("backer: serving backup volume %s from %s", key, root)
                changed = True
        return changed

    def _ensure(self, key: str, ds: dict[str, Any]) -> bool:
        ns, name = ds["metadata"]["namespace"], ds["metadata"]["name"]
        engine = ds["spec"]["engine"]
        replicas = int(ds["spec"]["managed"].get("replicas") or 1)
        if engine == "qdrant":
            current = self.backed.get(key)
            if current is not None and current.replicas == replicas:
                return False
            if replicas > 1:
                entry: dict[str, Any] = {"unserved": QDRANT_UNSERVED}
            else:
                # The directory outlives replica changes, like a PVC.
                path = self.workdir / f"qdrant-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
                path.mkdir(parents=True, exist_ok=True)
                entry = {
                    "localPath": str(path),
                    "members": {f"{name}-0": "local-mode"},
                    "aliases": {"local-mode": f"{name}-0"},
                }
            self.backed[key] = Backed(key, engine, replicas, "", entry=entry)
            return True
        cm = self.cp.kubectl("get", "configmap", f"{name}-config", "-n", ns, "-o", "json", check=False)
        password = self._secret_value(ns, f"{name}-credentials", "password")
        if cm.returncode != 0 or not password:
            return False  # the operator has not rendered it yet
        files: dict[str, str] = json.loads(cm.stdout).get("data") or {}
        plan = None
        if ds["spec"]["managed"].get("bootstrap"):
            # What pod 0's restore init container would do, from the plan the operator rendered into it.
            sts = self.cp.kubectl("get", "statefulset", name, "-n", ns, "-o", "json", check=False)
            plan = restoreplan.plan_in(json.loads(sts.stdout)) if sts.returncode == 0 else None
            if plan is None:
                return False  # not rendered yet (the operator checks the Backup first)
        config_hash = hashlib.sha256(json.dumps([files, password], sort_keys=True).encode()).hexdigest()[:16]
        current = self.backed.get(key)
        if current and current.replicas == replicas and current.config_hash == config_hash:
            return False
        if current:
            log.info("backer: %s changed (replicas %d -> %d); restarting its servers", key, current.replicas, replicas)
            current.stack.close()
        backed = Backed(key, engine, replicas, config_hash)
        # Short and fresh: PostgreSQL's socket path must stay under 107 bytes, and a failed earlier
        # attempt must not leave a half-initialised data directory behind.
        workdir = self.workdir / hashlib.sha256(f"{key}/{config_hash}/{replicas}".encode()).hexdigest()[:10]
        shutil.rmtree(workdir, ignore_errors=True)
        try:
            backed.entry = self._start(backed, engine, name, workdir, files, password, plan)
        except BaseException:
            backed.stack.close()
            raise
        self.backed[key] = backed
        log.info("backer: serving %s (%s, %d member(s)) at %s", key, engine, replicas, backed.entry["endpoint"])
        return True

    def _reach(self, host: str, port: int, namespace: str, service: str) -> tuple[str, int]:
        """A backup volume's server as this process reaches it: the one served here (``_serve_volumes``)."""
        found = self.volumes.get(f"{namespace}/{service}")
        return ("127.0.0.1", found[0].port) if found is not None else (host, port)

    def _secret_reader(self, ns: str) -> backupaccess.Reader:
        def read(name: str, key: str, what: str) -> bytes:
            out = self.cp.kubectl("get", "secret", name, "-n", ns, "-o", "json", check=False)
            raw = json.loads(out.stdout).get("data", {}).get(key) if out.returncode == 0 else None
            if raw is None:
                raise ProblemError(Problem(SECRET_NOT_FOUND, f"{what}: Secret {name!r} has no key {key!r}", False))
            return base64.b64decode(raw)

        return read

    def _start(
        self,
        backed: Backed,
        engine: str,
        name: str,
        workdir: Path,
        files: dict[str, str],
        password: str,
        plan: restoreplan.RestorePlan | None = None,
    ) -> dict[str, Any]:
        pods = [f"{name}-{i}" for i in range(backed.replicas)]
        read = self._secret_reader(plan.namespace) if plan is not None else None
        if engine == "redis":
            conf = _filter(files.get("redis.conf", ""), _REDIS_LOCAL_ONLY)
            if plan is not None and read is not None:
                cluster = restored.start_redis_restored(
                    backed.stack, workdir, plan, read, backed.replicas - 1, password, conf, self._reach
                )
            else:
                cluster = start_redis(
                    backed.stack, workdir, replicas=backed.replicas - 1, password=password, config=conf
                )
            servers = [cluster.primary, *cluster.replicas]
            return {
                "endpoint": f"127.0.0.1:{cluster.primary.port}",
                "members": {pod: f"127.0.0.1:{s.port}" for pod, s in zip(pods, servers, strict=True)},
            }
        if engine == "postgres":
            conf = _filter(files.get("postgresql.conf", ""), _PG_LOCAL_ONLY)
            if plan is not None and read is not None:
                pg = restored.start_postgres_restored(
                    backed.stack, workdir, plan, read, backed.replicas - 1, password, conf, self._reach
                )
            else:
                pg = start_postgres(backed.stack, workdir, standbys=backed.replicas - 1, password=password, conf=conf)
            servers_pg = [pg.primary, *pg.standbys]
            return {
                "endpoint": f"127.0.0.1:{pg.primary.port}",
                "members": {pod: f"127.0.0.1:{s.port}" for pod, s in zip(pods, servers_pg, strict=True)},
                # pg_stat_replication names standbys by application_name (= cluster_name locally).
                "aliases": {s.name: pod for pod, s in zip(pods, servers_pg, strict=True)},
            }
        if engine == "neo4j":
            server = Neo4jServer(workdir, password=password).start(backed.stack)
            return {"endpoint": f"127.0.0.1:{server.port}", "members": {pods[0]: f"127.0.0.1:{server.port}"}}
        raise ValueError(f"unknown engine {engine!r}")

    def _write_map(self) -> None:
        data = {key: b.entry for key, b in sorted(self.backed.items()) if b.entry}
        data.update({key: {"endpoint": f"127.0.0.1:{v[0].port}"} for key, v in sorted(self.volumes.items())})
        tmp = self.map_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.map_path)
