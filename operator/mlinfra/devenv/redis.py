"""Real Redis servers (Debian ``redis-server``): a primary and live replicas on free loopback ports."""

from __future__ import annotations

import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_lib

from mlinfra.devenv import procs, secretscan, tools


@dataclass
class RedisServer:
    """One redis-server process. ``config`` holds extra redis.conf lines (e.g. a rendered config).

    With ``command`` set, that runs instead of ``redis-server <conf_text()>`` (with ``env`` added to the
    environment), e.g. a rendered entrypoint script; it must serve ``port`` with ``password``.
    """

    workdir: Path
    name: str
    password: str
    primary: RedisServer | None = None
    config: str = ""
    port: int = field(default_factory=procs.free_port)
    proc: procs.Proc | None = None
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis_lib.Redis:
        return redis_lib.Redis(
            host="127.0.0.1", port=self.port, password=self.password, decode_responses=True, socket_timeout=5
        )

    def conf_text(self) -> str:
        lines = [
            self.config,
            # Ours come last so they win over anything in a rendered config that names ports or paths.
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            'logfile ""',
            "daemonize no",
            "repl-diskless-sync-delay 0",  # replicas sync at once instead of after 5 s
            f"requirepass {self.password}",
            f"masterauth {self.password}",
        ]
        if self.primary is not None:
            lines.append(f"replicaof 127.0.0.1 {self.primary.port}")
        return "\n".join(lines) + "\n"

    def start(self, stack: procs.ProcStack) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.command is not None:
            argv = self.command
        else:
            conf = self.workdir / "redis.conf"
            conf.write_text(self.conf_text())
            conf.chmod(0o600)  # holds the password
            argv = [str(tools.which("redis-server")), str(conf)]
        self.proc = stack.add(procs.Proc(f"redis-{self.name}", argv, self.workdir / "redis.log", env=self.env))
        procs.wait_until(f"redis {self.name} to answer PING", lambda: bool(self.client().ping()), 30, self.proc)
        return self

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): a paused replica falls behind its primary for real."""
        assert self.proc is not None
        self.proc.signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGCONT)


@dataclass
class RedisCluster:
    """A primary with ``len(replicas)`` replicas that ``replicaof`` it."""

    primary: RedisServer
    replicas: list[RedisServer]

    @property
    def password(self) -> str:
        return self.primary.password


def start_redis(
    stack: procs.ProcStack, workdir: Path, replicas: int = 1, password: str | None = None, config: str = ""
) -> RedisCluster:
    password = password or secrets.token_urlsafe(24)
    secretscan.track(password)
    primary = RedisServer(workdir / "primary", "primary", password, config=config).start(stack)
    followers = [
        RedisServer(workdir / f"replica-{i}", f"replica-{i}", password, primary=primary, config=config).start(stack)
        for i in range(replicas)
    ]
    for follower in followers:
        procs.wait_until(f"redis {follower.name} to sync from the primary", _link_up(follower), 30, follower.proc)
    return RedisCluster(primary, followers)


def _link_up(server: RedisServer) -> Callable[[], bool]:
    return lambda: bool(server.client().info("replication")["master_link_status"] == "up")
