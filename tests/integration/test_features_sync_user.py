"""A FeatureView's ACL user on a real redis-server: it materializes its own view; another view's key and any
command a materialization does not send are refused (NOPERM); a restart loses the runtime user and ensure()
makes it again; store credentials that may not manage users are said, not faked; a user of the name made by
someone else is refused and untouched; the password reaches the server only as its hash."""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from mlinfra.api import featureview
from mlinfra.devenv import procs, secretscan
from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.devenv.redis import RedisServer
from mlinfra.features import layout, materialize, schema, syncuser
from mlinfra.stores import credentials

pytestmark = pytest.mark.integration

NS = "sync-user"
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, procs.ProcStack]]:
    """A Redis of this module's own (restarted by a test), without persistence and without an ACL file, as the
    operator's managed stores run."""
    password = secrets.token_urlsafe(24)
    secretscan.track(password)
    with procs.ProcStack() as stack:
        workdir = tmp_path_factory.mktemp("redis-acl")
        yield RedisServer(workdir, "acl", password, config='save ""\nappendonly no').start(stack), stack


@pytest.fixture
def admin(server: tuple[RedisServer, procs.ProcStack]) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=server[0].port, password=server[0].password)
    yield client
    client.close()


@pytest.fixture
def pg(postgres_cluster: PostgresCluster) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with postgres_cluster.primary.connect() as conn:
        yield conn


class User:
    def __init__(self, server: RedisServer, admin: redis.Redis) -> None:
        self.view = f"fv-{secrets.token_hex(4)}"
        self.password = credentials.new_password()
        secretscan.track(self.password)
        self.server = server
        self.name = syncuser.ensure(admin, NS, self.view, self.password)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.server.port, username=self.name, password=self.password)


def refused(client: redis.Redis, *command: Any) -> str:
    with pytest.raises(redis.exceptions.ResponseError) as caught:
        client.execute_command(*command)  # type: ignore[no-untyped-call]
    return str(caught.value)


def spec_of(table: str) -> featureview.FeatureViewSpec:
    return featureview.FeatureViewSpec.model_validate(
        {
            "entities": [{"name": "user_id", "type": "int64"}],
            "features": [{"name": "clicks", "type": "int64"}],
            "offline": {"storeRef": {"name": "pg"}, "table": table},
            "online": {"storeRef": {"name": "kv"}, "ttl": "24h"},
        }
    )


def test_the_user_materializes_its_view_and_nothing_else(
    server: tuple[RedisServer, procs.ProcStack], admin: redis.Redis, pg: psycopg.Connection[tuple[Any, ...]]
) -> None:
    user = User(server[0], admin)
    other = User(server[0], admin)
    spec = spec_of(user.view.replace("-", "_"))
    schema.ensure_bookkeeping(pg)
    schema.ensure_offline_table(pg, spec, user.view)
    pg.execute(
        sql.SQL("INSERT INTO {} (user_id, clicks, event_timestamp) VALUES (1, 10, %s), (2, 20, %s)").format(
            sql.Identifier("public", user.view.replace("-", "_"))
        ),
        (NOW, NOW),
    )
    admin.set(layout.marker_key(NS, other.view), "theirs")
    client = user.client()
    try:
        result = materialize.materialize(spec, pg, client, NS, user.view)
        assert (result.outcome, result.written) == ("Succeeded", 2)
        assert admin.hget(layout.online_key(NS, user.view, [1]), "clicks") == b"10"
        assert admin.ttl(layout.online_key(NS, user.view, [1])) > 0  # PEXPIREAT ran inside the script
        # Another view's keys, by any way in.
        for command in (
            ("GET", layout.marker_key(NS, other.view)),
            ("SET", layout.marker_key(NS, other.view), "mine"),
            ("DEL", layout.online_key(NS, other.view, [1])),
            ("EVAL", "return redis.call('DEL', KEYS[1])", 1, layout.online_key(NS, other.view, [1])),
        ):
            assert "no permissions" in refused(client, *command), command
        assert "can't access" in refused(
            client, "EVAL", f"return redis.call('GET', '{layout.marker_key(NS, other.view)}')", 0
        )
        # Commands a materialization does not send, even on its own keys.
        for command in (
            ("KEYS", "*"),
            ("SCAN", 0),
            ("FLUSHALL",),
            ("CONFIG", "GET", "requirepass"),
            ("HGETALL", layout.online_key(NS, user.view, [1])),
            ("ACL", "LIST"),
            ("EXPIRE", layout.online_key(NS, user.view, [1]), 1),
        ):
            assert "no permissions" in refused(client, *command), command
        assert "can't run this command" in refused(client, "EVAL", "return redis.call('FLUSHALL')", 0)
        assert admin.get(layout.marker_key(NS, other.view)) == b"theirs"
    finally:
        client.close()
    assert syncuser.delete(admin, NS, user.view) and syncuser.delete(admin, NS, other.view)


def test_a_restart_loses_the_user_and_ensure_makes_it_again(
    server: tuple[RedisServer, procs.ProcStack], admin: redis.Redis
) -> None:
    redis_server, stack = server
    user = User(redis_server, admin)
    assert syncuser.present(admin, NS, user.view)
    assert redis_server.proc is not None
    redis_server.proc.stop()
    redis_server.start(stack)  # same port, no ACL file: runtime users are gone
    fresh = redis.Redis(host="127.0.0.1", port=redis_server.port, password=redis_server.password)
    try:
        assert not syncuser.present(fresh, NS, user.view)
        client = user.client()
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.ping()
        client.close()
        syncuser.ensure(fresh, NS, user.view, user.password)  # what the observation does
        client = user.client()
        assert client.set(layout.marker_key(NS, user.view), "x") is True
        client.close()
        assert syncuser.delete(fresh, NS, user.view)
    finally:
        fresh.close()


def test_store_credentials_that_may_not_manage_users_are_refused_not_faked(
    server: tuple[RedisServer, procs.ProcStack], admin: redis.Redis
) -> None:
    restricted = f"restricted-{secrets.token_hex(3)}"
    password = credentials.new_password()
    secretscan.track(password)
    admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", restricted, "on", f">{password}", "~*", "+@all", "-@admin", "-@dangerous"
    )
    view = f"fv-{secrets.token_hex(4)}"
    client = redis.Redis(host="127.0.0.1", port=server[0].port, username=restricted, password=password)
    try:
        with pytest.raises(syncuser.NotPermitted, match="may not"):
            syncuser.ensure(client, NS, view, credentials.new_password())
    finally:
        client.close()
    assert not syncuser.present(admin, NS, view)
    admin.acl_deluser(restricted)


def test_a_user_of_that_name_made_by_someone_else_is_refused_and_untouched(
    server: tuple[RedisServer, procs.ProcStack], admin: redis.Redis
) -> None:
    view = f"fv-{secrets.token_hex(4)}"
    name = syncuser.user_name(NS, view)
    theirs = credentials.new_password()
    secretscan.track(theirs)
    admin.execute_command("ACL", "SETUSER", name, "on", f">{theirs}", "~*", "+@all")  # type: ignore[no-untyped-call]
    before = admin.acl_getuser(name)
    with pytest.raises(syncuser.UserConflict, match="not this FeatureView's"):
        syncuser.ensure(admin, NS, view, credentials.new_password())
    assert not syncuser.delete(admin, NS, view)
    assert admin.acl_getuser(name) == before
    admin.acl_deluser(name)


def test_the_password_reaches_the_server_only_as_its_hash(
    server: tuple[RedisServer, procs.ProcStack], admin: redis.Redis
) -> None:
    admin.config_set("slowlog-log-slower-than", 0)
    admin.slowlog_reset()
    try:
        user = User(server[0], admin)
        logged = repr(admin.slowlog_get(128))
        assert "SETUSER" in logged and user.name in logged  # the command was logged
        assert user.password not in logged
        assert user.password not in repr(admin.acl_getuser(user.name))
    finally:
        admin.config_set("slowlog-log-slower-than", 10000)
    assert syncuser.delete(admin, NS, user.view)


def test_a_user_changed_by_hand_is_put_back_and_an_unchanged_one_is_not_rewritten(
    server: tuple[RedisServer, procs.ProcStack], admin: redis.Redis
) -> None:
    user = User(server[0], admin)
    admin.execute_command("ACL", "SETUSER", user.name, "+keys", "&*")  # type: ignore[no-untyped-call]
    syncuser.ensure(admin, NS, user.view, user.password)
    client = user.client()
    try:
        assert "no permissions" in refused(client, "KEYS", "*")
    finally:
        client.close()
    admin.config_set("slowlog-log-slower-than", 0)
    admin.slowlog_reset()
    try:
        syncuser.ensure(admin, NS, user.view, user.password)
        assert "SETUSER" not in repr(admin.slowlog_get(128))
    finally:
        admin.config_set("slowlog-log-slower-than", 10000)
    assert syncuser.delete(admin, NS, user.view)
