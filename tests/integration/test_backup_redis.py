"""Redis backups against real redis-servers: an RDB snapshot over the replication protocol (from the primary,
from a replica, over TLS, as an ACL user), the server destroyed, a new server seeded with it, every key compared
(type, DUMP payload, TTL). Each test that destroys a server starts its own."""

from __future__ import annotations

import json
import random
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from mlinfra.backup import rdb
from mlinfra.backup import redis as redis_backup
from mlinfra.devenv import pki, procs, secretscan
from mlinfra.devenv.redis import RedisCluster, RedisServer, start_redis
from mlinfra.engines import connection

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
# Remaining TTLs shrink by the wall time between backup and comparison; a restore that lost or reset them
# would be off by much more than this.
TTL_SLACK_MS = 120_000
DBS = (0, 1, 5)
BINARY = bytes(range(256))


@pytest.fixture(scope="module")
def stack() -> Iterator[procs.ProcStack]:
    with procs.ProcStack() as s:
        yield s


def password() -> str:
    value = secrets.token_urlsafe(24)
    secretscan.track(value)
    return value


def server(stack: procs.ProcStack, workdir: Path, name: str, pw: str, config: str = "") -> RedisServer:
    return RedisServer(workdir, name, pw, config=config).start(stack)


def info(port: int, pw: str, **extra: Any) -> connection.ConnectionInfo:
    return connection.ConnectionInfo.for_engine("redis", "127.0.0.1", pw, port=port, **extra)


def raw(port: int, pw: str, db: int = 0) -> redis_lib.Redis:
    return redis_lib.Redis(host="127.0.0.1", port=port, password=pw, db=db, socket_timeout=10)


def populate(port: int, pw: str, tag: str) -> None:
    """Every data type, keys with and without TTL, binary names and values, in several databases."""
    for db in DBS:
        r = raw(port, pw, db)
        p = f"{tag}:{db}:"
        r.set(p + "str", "hello")
        r.set(p + "int", 12345)
        r.set(p + "bin", BINARY)
        r.set(p.encode() + b"\x00\xff-binary-name", b"\x01\x02")
        r.set(p + "ttl", "expires", px=HOUR_MS)
        r.hset(p + "hash", mapping={"a": "1", "b": BINARY, "c": "x" * 300})  # c: past the listpack limits
        r.hset(p + "smallhash", mapping={"f": "v"})
        r.rpush(p + "list", *[f"item-{i}" for i in range(50)], BINARY)
        r.sadd(p + "set", "a", "b", "c", BINARY)
        r.sadd(p + "intset", 1, 2, 3)
        r.zadd(p + "zset", {"one": 1.0, "two": 2.5, "three": -3.25, BINARY: 1e300})
        r.pexpire(p + "zset", 2 * HOUR_MS)
        for i in range(5):
            r.xadd(p + "stream", {"field": f"value-{i}", "bin": BINARY})
        r.xgroup_create(p + "stream", "group", id="0")
        r.xreadgroup("group", "consumer-a", {p + "stream": ">"}, count=2)  # two entries pending
        r.xreadgroup("group", "consumer-b", {p + "stream": ">"}, count=1)
        r.close()


# Hash tables (big hashes, sets of strings) are dumped in the order of their buckets, which depends on the
# process's random hash seed: their DUMP payloads differ between two servers holding the same value. Those
# are compared by value; the others byte for byte as DUMP serializes them.
ORDERED_DUMP = {b"string", b"list", b"stream"}
Entry = tuple[bytes, Any, bytes | None, int]  # type, value, DUMP payload (ordered types only), PTTL


def value(r: redis_lib.Redis, key: bytes, kind: bytes) -> Any:
    if kind == b"string":
        return r.get(key)
    if kind == b"hash":
        return r.hgetall(key)
    if kind == b"list":
        return r.lrange(key, 0, -1)
    if kind == b"set":
        return sorted(r.smembers(key))
    if kind == b"zset":
        return r.zrange(key, 0, -1, withscores=True)
    if kind == b"stream":
        # Entries, groups, their pending entries (ids, consumers, delivery counts and times), consumers.
        return r.xinfo_stream(key, full=True)
    raise AssertionError(f"unexpected type {kind!r}")


def state(port: int, pw: str) -> dict[int, dict[bytes, Entry]]:
    """Every key of every database: (type, value, DUMP payload where stable, PTTL)."""
    out: dict[int, dict[bytes, Entry]] = {}
    for db in range(16):
        r = raw(port, pw, db)
        keys = list(r.scan_iter(count=1000))
        if keys:
            out[db] = {}
            for k in keys:
                kind = r.type(k)
                out[db][k] = (kind, value(r, k, kind), r.dump(k) if kind in ORDERED_DUMP else None, r.pttl(k))
        r.close()
    return out


def assert_same(before: dict[int, dict[bytes, Entry]], after: dict[int, dict[bytes, Entry]]) -> None:
    assert sorted(after) == sorted(before)
    for db, keys in before.items():
        assert sorted(after[db]) == sorted(keys), f"db {db}: keys differ"
        for key, (kind, content, payload, ttl) in keys.items():
            new_kind, new_content, new_payload, new_ttl = after[db][key]
            assert new_kind == kind, (db, key)
            assert new_content == content, f"db {db} key {key!r}: value differs"
            assert new_payload == payload, f"db {db} key {key!r}: DUMP payload differs"
            if ttl < 0:
                assert new_ttl == ttl, (db, key)
            else:
                assert 0 < new_ttl <= ttl and ttl - new_ttl < TTL_SLACK_MS, (db, key, ttl, new_ttl)


def destroy(target: RedisServer) -> None:
    assert target.proc is not None
    target.proc.stop()
    shutil.rmtree(target.workdir)


def restored(stack: procs.ProcStack, staging: Path, workdir: Path, pw: str, config: str = "") -> RedisServer:
    redis_backup.restore(staging, workdir, appendonly="appendonly yes" in config)
    return server(stack, workdir, "restored", pw, config)


def test_primary_backup_destroy_restore_every_key(stack: procs.ProcStack, tmp_path: Path) -> None:
    pw = password()
    source = server(stack, tmp_path / "source", "source", pw)
    populate(source.port, pw, "p")
    before = state(source.port, pw)
    meta = redis_backup.take(info(source.port, pw), tmp_path / "staging", timeout=60)

    assert meta["transfer"] == "diskless" and meta["rdbOnly"] is True  # nothing written on the server's disk
    assert not (source.workdir / "dump.rdb").exists()
    assert meta["keys"] == sum(len(keys) for keys in before.values()) == 3 * 12
    assert meta["keyspace"] == {str(db): {"keys": 12, "expires": 2} for db in DBS}
    assert meta["redisVersion"] == raw(source.port, pw).info("server")["redis_version"]
    assert meta["rdbVersion"] >= 9 and meta["checksum"].startswith("crc64:")
    assert meta["size"] == (tmp_path / "staging" / "dump.rdb").stat().st_size
    replication = raw(source.port, pw).info("replication")
    assert meta["replication"]["replid"] == replication["master_replid"]
    assert isinstance(meta["replication"]["offset"], int)
    assert pw not in json.dumps(meta)
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["dump.rdb"]  # no partial file left

    destroy(source)
    target = restored(stack, tmp_path / "staging", tmp_path / "new", pw)
    assert_same(before, state(target.port, pw))
    # The stream's consumer group and its pending entries came back (part of DUMP, checked explicitly too).
    pending = raw(target.port, pw).xpending("p:0:stream", "group")
    assert pending["pending"] == 3
    assert {c["name"]: c["pending"] for c in pending["consumers"]} == {b"consumer-a": 2, b"consumer-b": 1}


def test_disk_based_sync_and_a_large_snapshot(stack: procs.ProcStack, tmp_path: Path) -> None:
    """A server configured with repl-diskless-sync no sends a length-prefixed RDB it first saved to its disk
    (the metadata says so); megabytes of incompressible data take the checksum's fast path."""
    pw = password()
    source = server(stack, tmp_path / "source", "disk", pw, "repl-diskless-sync no")
    populate(source.port, pw, "g")
    r = raw(source.port, pw)
    for i in range(4):
        r.set(f"big-{i}", random.Random(i).randbytes(1 << 20))
    before = state(source.port, pw)
    meta = redis_backup.take(info(source.port, pw), tmp_path / "staging", timeout=120)
    assert meta["transfer"] == "disk" and meta["size"] > 4 << 20
    assert (source.workdir / "dump.rdb").exists()  # what diskless sync avoids
    destroy(source)
    target = restored(stack, tmp_path / "staging", tmp_path / "new", pw)
    assert_same(before, state(target.port, pw))


@pytest.fixture(scope="module")
def cluster(stack: procs.ProcStack, tmp_path_factory: pytest.TempPathFactory) -> RedisCluster:
    return start_redis(stack, tmp_path_factory.mktemp("backup-redis"), replicas=1)


def test_backup_from_a_replica(stack: procs.ProcStack, cluster: RedisCluster, tmp_path: Path) -> None:
    primary, replica = cluster.primary, cluster.replicas[0]
    populate(primary.port, cluster.password, "r")
    assert raw(primary.port, cluster.password).wait(1, 10_000) == 1  # the replica has every write
    # The replica's own state: Redis 7.0 does not replicate a consumer group's entries-read counter (the
    # replica reports it unknown), so the snapshot of a replica carries the replica's view of it.
    before = state(replica.port, cluster.password)
    meta = redis_backup.take(info(replica.port, cluster.password), tmp_path / "staging", timeout=60)
    assert meta["role"] == "slave" and meta["transfer"] == "diskless"
    # The replica shares the primary's history (PSYNC2): the snapshot names the primary's replication id.
    assert meta["replication"]["replid"] == raw(primary.port, cluster.password).info("replication")["master_replid"]
    assert raw(replica.port, cluster.password).info("replication")["master_link_status"] == "up"
    target = restored(stack, tmp_path / "staging", tmp_path / "new", cluster.password)
    assert_same(before, state(target.port, cluster.password))


def test_appendonly_server_ignores_a_plain_dump_rdb(stack: procs.ProcStack, tmp_path: Path) -> None:
    """Why restore() writes an AOF base for appendonly servers: Redis 7 with appendonly yes and no AOF starts
    empty, whatever dump.rdb holds."""
    pw = password()
    source = server(stack, tmp_path / "source", "source", pw)
    raw(source.port, pw).set("k", "v")
    redis_backup.take(info(source.port, pw), tmp_path / "staging", timeout=60)
    redis_backup.restore(tmp_path / "staging", tmp_path / "new", appendonly=False)
    target = server(stack, tmp_path / "new", "aof-ignores", pw, "appendonly yes")
    assert raw(target.port, pw).dbsize() == 0


def test_restore_into_an_appendonly_server(stack: procs.ProcStack, tmp_path: Path) -> None:
    pw = password()
    source = server(stack, tmp_path / "source", "source", pw)
    populate(source.port, pw, "a")
    before = state(source.port, pw)
    redis_backup.take(info(source.port, pw), tmp_path / "staging", timeout=60)
    destroy(source)
    target = restored(stack, tmp_path / "staging", tmp_path / "new", pw, "appendonly yes")
    assert not (tmp_path / "new" / "dump.rdb").exists()
    assert_same(before, state(target.port, pw))
    # The AOF is live: a write after the restore survives a restart together with the restored keys.
    raw(target.port, pw).set("after-restore", "kept")
    assert target.proc is not None
    target.proc.stop()
    again = server(stack, tmp_path / "new", "restarted", pw, "appendonly yes")
    after = state(again.port, pw)
    assert after[0].pop(b"after-restore")[0] == b"string"
    assert_same(before, after)


def test_tls_verifies_the_chain_and_the_name(stack: procs.ProcStack, tmp_path: Path) -> None:
    certs = pki.create_pki(tmp_path / "pki", {})
    other = pki.create_pki(tmp_path / "other-pki", {})
    pw = password()
    tls_port = procs.free_port()
    config = (
        f"tls-port {tls_port}\ntls-cert-file {certs.serving.cert}\ntls-key-file {certs.serving.key}\n"
        f"tls-ca-cert-file {certs.ca.cert}\ntls-auth-clients no\ntls-replication no\n"
    )
    source = server(stack, tmp_path / "source", "tls", pw, config)
    populate(source.port, pw, "t")
    before = state(source.port, pw)
    ca = certs.ca.cert.read_text()
    meta = redis_backup.take(info(tls_port, pw, tls=True, ca_cert=ca), tmp_path / "staging", timeout=60)
    assert meta["transfer"] == "diskless"
    # The certificate names 127.0.0.1 and localhost: another name, or another CA, is refused (redis-cli 7.0
    # checks the chain only).
    for wrong in ({"ca_cert": ca, "server_name": "db.elsewhere.test"}, {"ca_cert": other.ca.cert.read_text()}):
        with pytest.raises(redis_backup.RedisBackupError, match="TLS failed"):
            redis_backup.take(info(tls_port, pw, tls=True, **wrong), tmp_path / "refused", timeout=30)
        assert list((tmp_path / "refused").iterdir()) == []
    destroy(source)
    target = restored(stack, tmp_path / "staging", tmp_path / "new", pw)
    assert_same(before, state(target.port, pw))


def test_acl_user_and_refusals_never_show_the_password(stack: procs.ProcStack, tmp_path: Path) -> None:
    pw, backup_pw, weak_pw = password(), password(), password()
    config = f"user backup on >{backup_pw} +psync +replconf +info\nuser weak on >{weak_pw} +info +replconf\n"
    source = server(stack, tmp_path / "source", "acl", pw, config)
    raw(source.port, pw).set("k", "v")
    meta = redis_backup.take(info(source.port, backup_pw, username="backup"), tmp_path / "ok", timeout=60)
    assert meta["keys"] == 1
    with pytest.raises(redis_backup.RedisBackupError, match="NOPERM") as refused:
        redis_backup.take(info(source.port, weak_pw, username="weak"), tmp_path / "weak", timeout=30)
    assert weak_pw not in str(refused.value)
    wrong = password()
    with pytest.raises(redis_backup.RedisBackupError, match="WRONGPASS") as refused:
        redis_backup.take(info(source.port, wrong, username="backup"), tmp_path / "wrong", timeout=30)
    assert wrong not in str(refused.value)


def test_password_is_in_no_process_command_line(stack: procs.ProcStack, tmp_path: Path) -> None:
    pw = password()
    source = server(stack, tmp_path / "source", "argv", pw, "repl-diskless-sync-delay 2")  # a take of ~2 s
    populate(source.port, pw, "v")
    seen: list[str] = []
    scans = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal scans
        while not done.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        argv = (entry / "cmdline").read_bytes()
                    except OSError:
                        continue
                    if pw.encode() in argv:
                        seen.append(entry.name)
            scans += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        redis_backup.take(info(source.port, pw), tmp_path / "staging", timeout=60)
    finally:
        done.set()
        watcher.join()
    assert scans > 0 and seen == []


def test_a_frozen_server_meets_the_deadline(stack: procs.ProcStack, tmp_path: Path) -> None:
    pw = password()
    source = server(stack, tmp_path / "source", "frozen", pw)
    source.pause()
    try:
        with pytest.raises(connection.DeadlineExceeded):
            redis_backup.take(info(source.port, pw), tmp_path / "staging", timeout=2)
    finally:
        source.resume()
    assert not (tmp_path / "staging" / "dump.rdb").exists()


def test_restore_refuses_damage_and_existing_data(stack: procs.ProcStack, tmp_path: Path) -> None:
    pw = password()
    source = server(stack, tmp_path / "source", "damage", pw)
    populate(source.port, pw, "d")
    redis_backup.take(info(source.port, pw), tmp_path / "staging", timeout=60)
    good = (tmp_path / "staging" / "dump.rdb").read_bytes()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "dump.rdb").write_bytes(b"somebody's data")
    with pytest.raises(FileExistsError, match="never overwrites"):
        redis_backup.restore(tmp_path / "staging", occupied)
    assert (occupied / "dump.rdb").read_bytes() == b"somebody's data"

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    (tmp_path / "staging" / "dump.rdb").write_bytes(bytes(flipped))
    with pytest.raises(rdb.RdbError, match="checksum mismatch"):
        redis_backup.restore(tmp_path / "staging", tmp_path / "new")
    (tmp_path / "staging" / "dump.rdb").write_bytes(good[:-100])
    with pytest.raises(rdb.RdbError, match=r"cut off|checksum"):
        redis_backup.restore(tmp_path / "staging", tmp_path / "new")
    assert not (tmp_path / "new" / "dump.rdb").exists()
