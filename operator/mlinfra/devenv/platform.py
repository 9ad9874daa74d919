"""The whole local platform at once (control plane + databases), for ``mlinfra dev up`` and the demo."""

from __future__ import annotations

import logging
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane
from mlinfra.devenv.neo4j import Neo4jServer
from mlinfra.devenv.postgres import PostgresCluster, start_postgres
from mlinfra.devenv.redis import RedisCluster, start_redis

log = logging.getLogger(__name__)


@dataclass
class Platform:
    """Starts what is asked for; ``stop()`` stops all of it, in reverse order."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlinfra-dev-")))
    kube: bool = True
    databases: bool = True
    control_plane: ControlPlane | None = None
    redis: RedisCluster | None = None
    postgres: PostgresCluster | None = None
    neo4j: Neo4jServer | None = None
    _stack: procs.ProcStack = field(default_factory=procs.ProcStack)

    def start(self) -> Platform:
        try:
            if self.kube:
                log.info("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
                self.control_plane = ControlPlane(self.workdir / "kube").start()
                self._stack.callback(self.control_plane.stop)
            if self.databases:
                log.info("starting Redis (primary + replica)")
                self.redis = start_redis(self._stack, self.workdir / "redis")
                log.info("starting PostgreSQL (primary + streaming standby)")
                self.postgres = start_postgres(self._stack, self.workdir / "postgres")
                log.info("starting Neo4j (embedded, Bolt)")
                self.neo4j = Neo4jServer(self.workdir / "neo4j").start(self._stack)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stack.close()

    def env(self) -> dict[str, str]:
        """Connection settings for shells and tests. Contains passwords: written to a 0600 file only."""
        env: dict[str, str] = {}
        if self.control_plane:
            env.update(self.control_plane.env())
        if self.redis:
            env["MLINFRA_REDIS_URL"] = self.redis.primary.url
            env["MLINFRA_REDIS_REPLICA_URLS"] = " ".join(r.url for r in self.redis.replicas)
            env["MLINFRA_REDIS_PASSWORD"] = self.redis.password
        if self.postgres:
            env["MLINFRA_POSTGRES_DSN"] = self.postgres.primary.dsn()
            env["MLINFRA_POSTGRES_STANDBY_DSNS"] = " ".join(s.dsn() for s in self.postgres.standbys)
        if self.neo4j:
            env["MLINFRA_NEO4J_URI"] = self.neo4j.uri
            env["MLINFRA_NEO4J_USER"] = self.neo4j.user
            env["MLINFRA_NEO4J_PASSWORD"] = self.neo4j.password
        return env

    def write_env(self, path: Path) -> None:
        path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env().items()))
        path.chmod(0o600)

    def summary(self) -> str:
        lines = []
        if self.control_plane:
            lines.append(
                f"kube-apiserver  {self.control_plane.server} "
                f"({self.control_plane.tools.kubernetes_version}, {self.control_plane.nodes} kwok nodes)"
            )
            lines.append(f"kubectl         {self.control_plane.tools.kubectl}")
        if self.redis:
            lines.append(
                f"redis           {self.redis.primary.url} + "
                f"{len(self.redis.replicas)} replica(s) {[r.url for r in self.redis.replicas]}"
            )
        if self.postgres:
            lines.append(
                f"postgresql      {self.postgres.primary.url} + "
                f"{len(self.postgres.standbys)} standby(s) {[s.url for s in self.postgres.standbys]}"
            )
        if self.neo4j:
            lines.append(f"neo4j           {self.neo4j.uri}")
        return "\n".join(lines)

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
