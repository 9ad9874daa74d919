"""Benchmark: Redis failover, the operator's decision and promotion against Redis Sentinel (prints figures;
asserts nothing).

Three local redis-servers (a primary and two replicas) and a writer doing one ``SET`` every 100 ms on a new
connection to "the primary" as its client finds it; the primary is SIGSTOPped (a hung server), and the largest
gap between acknowledged writes is measured, with every acknowledged write checked on the new primary. In one
run, on fresh servers each time:

(a) the operator's path: ``stores.failover.decide`` on looks at every member (``engines.replication.look``,
    0.5 s each, in parallel) every ``--interval`` seconds with ``--delay`` seconds of failover delay; its fence
    (a pod deletion in a cluster) is a SIGKILL of the stopped process here, then ``REPLICAOF NO ONE`` and the
    others re-pointed. The writer's "Service" is the primary the decision names.
(b) Redis Sentinel (the same redis-server binary in sentinel mode): three sentinels, quorum 2,
    ``down-after-milliseconds`` = ``--delay``; the writer asks a sentinel for the master before each write,
    as Sentinel clients do. Sentinel does not fence: the stopped server is left stopped.

What (a) leaves out of a cluster: the kubelet's kill (at least 2 s after SIGTERM) and the Service reaching
kube-proxy (e2e/real/test_redis_failover.py measures the whole of it on real pods).

Run: ``.venv/bin/python bench/redis_failover.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis as redis_lib

from mlinfra.devenv import procs, tools
from mlinfra.devenv.redis import RedisCluster, RedisServer, start_redis
from mlinfra.engines import connection, replication
from mlinfra.stores import failover


class Writer:
    """One SET every 100 ms on a new connection to ``where()`` (host, port); the acknowledged ones, timed."""

    def __init__(self, password: str, where: Callable[[], tuple[str, int] | None]) -> None:
        self.password, self.where = password, where
        self.acks: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # redis-cli under `timeout 1`, as the real tier's writer Pod does: a client library's own retries and
        # reconnects would measure the library, not the failover.
        env = {**os.environ, "REDISCLI_AUTH": self.password}
        n = 0
        while not self._stop.is_set():
            n += 1
            target = self.where()
            if target is not None:
                argv = ["timeout", "1", "redis-cli", "--no-auth-warning", "-h", target[0], "-p", str(target[1])]
                done = subprocess.run([*argv, "SET", f"w:{n}", str(n)], capture_output=True, text=True, env=env)
                if done.stdout.strip() == "OK":
                    self.acks.append((n, time.monotonic()))
            self._stop.wait(0.1)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def gap(self, since: float) -> float:
        """The largest gap between acknowledged writes around ``since`` (the first after it included)."""
        before = [t for _, t in self.acks if t < since]
        times = before[-1:] + [t for _, t in self.acks if t >= since]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def after(self, since: float) -> int:
        return sum(1 for _, t in self.acks if t >= since)

    def lost_on(self, server: RedisServer) -> int:
        keys = [f"w:{n}" for n, _ in self.acks]
        values = server.client().mget(keys) if keys else []
        return sum(1 for key, value in zip(keys, values, strict=True) if value is None or str(value) != key[2:])


def send(server: RedisServer, sig: int) -> None:
    assert server.proc is not None
    server.proc.signal(sig)


def members_of(cluster: RedisCluster) -> dict[str, RedisServer]:
    return {f"db-{i}": server for i, server in enumerate([cluster.primary, *cluster.replicas])}


def operator_path(work: Path, delay: float, interval: float) -> tuple[float, int, int]:
    """(largest gap, writes acknowledged, acknowledged writes lost) with the operator's decisions."""
    with procs.ProcStack() as stack:
        cluster = start_redis(stack, work / "ours", replicas=2, config='save ""')
        servers = members_of(cluster)
        conns = {
            name: connection.ConnectionInfo.for_engine("redis", "127.0.0.1", cluster.password, port=s.port)
            for name, s in servers.items()
        }
        state = failover.State("db-0")
        killed: set[str] = set()
        with Writer(cluster.password, lambda: ("127.0.0.1", servers[state.primary].port)) as writer:
            time.sleep(3)
            since = time.monotonic()
            send(servers["db-0"], signal.SIGSTOP)
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                while state.primary == "db-0" or state.fencing is not None:
                    looks = dict(zip(conns, pool.map(lambda c: replication.look(c, 0.5), conns.values()), strict=True))
                    members = [
                        failover.Member(
                            name,
                            i,
                            reachable=look.reachable,
                            role=look.role,
                            position=look.position,
                            fenced=name in killed,
                        )
                        for i, (name, look) in enumerate(looks.items())
                    ]
                    decision = failover.decide(members, state, time.time(), delay)
                    if decision.action not in ("none", "wait"):
                        print(f"  {time.monotonic() - since:5.2f} s  {decision.action}: {decision.reason}")
                    member = decision.member or ""
                    if decision.action == "fence" and member not in killed:
                        send(servers[member], signal.SIGKILL)  # the pod deletion, here
                        killed.add(member)
                    elif decision.action == "promote":
                        replication.promote(conns[member], 10)
                        new = servers[member]
                        for name in conns:
                            if name != member and name not in killed:
                                replication.follow(conns[name], "127.0.0.1", new.port, 10)
                    state = decision.state
                    if decision.action != "fence":  # a fence is followed through at once, as stores.ha does
                        time.sleep(interval)
            time.sleep(3)
        return writer.gap(since), len(writer.acks), writer.lost_on(servers[state.primary])


def sentinel_path(work: Path, delay: float) -> tuple[float, int, int]:
    """(largest gap, writes acknowledged, acknowledged writes lost) with three sentinels."""
    with procs.ProcStack() as stack:
        cluster = start_redis(stack, work / "sentinel", replicas=2, config='save ""')
        servers = members_of(cluster)
        ports = []
        for i in range(3):
            folder = work / "sentinel" / f"sentinel-{i}"
            folder.mkdir(parents=True)
            port = procs.free_port()
            (folder / "sentinel.conf").write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor m 127.0.0.1 {cluster.primary.port} 2\n"
                f'sentinel auth-pass m "{cluster.password}"\n'
                f"sentinel down-after-milliseconds m {int(delay * 1000)}\n"
                "sentinel failover-timeout m 10000\n"
            )
            stack.add(
                procs.Proc(
                    f"sentinel-{i}",
                    [str(tools.which("redis-server")), str(folder / "sentinel.conf"), "--sentinel"],
                    folder / "sentinel.log",
                )
            )
            ports.append(port)

        def master() -> tuple[str, int] | None:
            for port in ports:
                try:
                    client = redis_lib.Redis(
                        port=port, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
                    )
                    found = client.sentinel_get_master_addr_by_name("m")
                    client.close()
                    if isinstance(found, list | tuple) and len(found) == 2:
                        return str(found[0]), int(found[1])
                except (redis_lib.RedisError, OSError, TypeError):
                    continue
            return None

        procs.wait_until("the sentinels know the replicas", lambda: master() is not None, 30)
        time.sleep(3)  # the sentinels discover each other and the replicas
        with Writer(cluster.password, master) as writer:
            time.sleep(3)
            since = time.monotonic()
            old = cluster.primary.port
            send(servers["db-0"], signal.SIGSTOP)
            procs.wait_until("a sentinel failover", lambda: (master() or ("", old))[1] != old, 60)
            time.sleep(3)
        new_port = (master() or ("", 0))[1]
        new = next(s for s in servers.values() if s.port == new_port)
        lost = writer.lost_on(new)
        send(servers["db-0"], signal.SIGKILL)
        return writer.gap(since), len(writer.acks), lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--delay", type=float, default=2.0, help="failover delay / down-after, seconds")
    parser.add_argument("--interval", type=float, default=1.0, help="the operator's look interval, seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        work = Path(tmp)
        ours = operator_path(work, args.delay, args.interval)
        peer = sentinel_path(work, args.delay)
    print(f"primary SIGSTOPped; failover delay {args.delay:g} s; one SET every 100 ms on a new connection")
    print(f"{'':<44}{'largest gap':>12}{'acked':>8}{'lost':>6}")
    print(f"{'(a) operator: decide + promote (fence = kill)':<44}{ours[0]:>11.2f}s{ours[1]:>8}{ours[2]:>6}")
    print(f"{'(b) Redis Sentinel, 3 sentinels, quorum 2':<44}{peer[0]:>11.2f}s{peer[1]:>8}{peer[2]:>6}")


if __name__ == "__main__":
    main()
