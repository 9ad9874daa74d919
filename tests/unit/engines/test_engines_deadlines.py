"""Every connection the engines open has deadlines: the PostgreSQL parameters (server timeouts, keepalives),
the translation of timeouts into DeadlineExceeded (a TimeoutError, still a psycopg error), Redis socket
timeouts, and the probe that answers within its timeout whatever its driver does."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from mlinfra import config
from mlinfra.context import Context
from mlinfra.engines import connection, observation, probe

PG = connection.ConnectionInfo.for_engine("postgres", "db.example", "s3cret", port=5432)


def test_operator_connections_have_statement_lock_and_idle_timeouts() -> None:
    assert connection.OPERATOR.options() == (
        "-c statement_timeout=60000 -c lock_timeout=10000 -c idle_in_transaction_session_timeout=300000"
    )
    # The client's own deadline for one call is a little longer than the server's.
    assert connection.OPERATOR.client == 60.0 + connection.CLIENT_GRACE


def test_the_operator_settings_replace_the_default_timeouts(
    connects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLINFRA_PG_STATEMENT_TIMEOUT", "12.5")
    monkeypatch.setenv("MLINFRA_PG_LOCK_TIMEOUT", "2")
    settings = config.Settings.from_env()
    assert (settings.pg_statement_timeout, settings.pg_lock_timeout) == (12.5, 2.0)
    assert settings.pg_idle_in_transaction_timeout == 300.0  # unset: the default
    monkeypatch.setattr(connection, "_operator_timeouts", connection.OPERATOR)  # restored after the test
    Context.from_settings(settings, kube=object())  # type: ignore[arg-type]  # what `mlinfra run` builds
    with pytest.raises(psycopg.OperationalError), connection.postgres(PG, "mlinfra-operator"):
        pass
    with pytest.raises(psycopg.OperationalError), connection.postgres(PG, "mlinfra-sync", timeouts=connection.JOB):
        pass
    assert connects[0]["options"] == (
        "-c statement_timeout=12500 -c lock_timeout=2000 -c idle_in_transaction_session_timeout=300000"
    )
    assert connects[1]["options"] == connection.JOB.options()


@pytest.mark.parametrize("bad", ["0", "-1", "ten", "nan", "inf", "1e12"])
def test_a_timeout_setting_that_is_not_a_limit_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("MLINFRA_PG_LOCK_TIMEOUT", bad)
    with pytest.raises(ValueError, match=r"MLINFRA_PG_LOCK_TIMEOUT: .* is not a number of seconds > 0"):
        config.Settings.from_env()


def test_sync_jobs_turn_the_server_timeouts_off() -> None:
    assert connection.JOB.options() == (
        "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0"
    )
    assert connection.JOB.client is None


def test_fractions_of_a_second_round_up_to_whole_milliseconds() -> None:
    assert "statement_timeout=1" in connection.PgTimeouts(statement=0.0001).options()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The parameters connection.postgres hands psycopg; the connection itself fails (no server)."""
    seen: list[dict[str, Any]] = []

    def refuse(**params: Any) -> None:
        seen.append(params)
        raise psycopg.OperationalError("no server in the unit tier")

    monkeypatch.setattr(connection._DeadlineConnection, "connect", staticmethod(refuse))
    yield seen


def test_postgres_sets_timeouts_and_keepalives_by_default(connects: list[dict[str, Any]]) -> None:
    with pytest.raises(psycopg.OperationalError), connection.postgres(PG, "mlinfra-operator"):
        pass
    params = connects[0]
    assert params["options"] == connection.OPERATOR.options()
    assert params["connect_timeout"] == 10
    assert {k: params[k] for k in connection.KEEPALIVES} == connection.KEEPALIVES
    assert params["keepalives"] == 1 and params["tcp_user_timeout"] > 0


def test_sync_jobs_pass_their_own_timeouts(connects: list[dict[str, Any]]) -> None:
    with pytest.raises(psycopg.OperationalError), connection.postgres(PG, timeouts=connection.JOB):
        pass
    assert connects[0]["options"] == connection.JOB.options()


def test_a_total_budget_bounds_the_connect_timeout_too(connects: list[dict[str, Any]]) -> None:
    with pytest.raises(psycopg.OperationalError), connection.postgres(PG, timeouts=connection.PgTimeouts(total=2)):
        pass
    assert connects[0]["connect_timeout"] == 2


def test_a_connection_timeout_becomes_deadline_exceeded_naming_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def slow(**_: Any) -> None:
        raise psycopg.errors.ConnectionTimeout("connection timeout expired")

    monkeypatch.setattr(connection._DeadlineConnection, "connect", staticmethod(slow))
    with pytest.raises(connection.PostgresDeadlineExceeded) as caught, connection.postgres(PG):
        pass
    err = caught.value
    # A TimeoutError for the handlers, a psycopg error for code that handles PostgreSQL's.
    assert isinstance(err, TimeoutError) and isinstance(err, psycopg.OperationalError)
    assert "db.example:5432" in str(err) and "s3cret" not in str(err)


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), "lock_timeout 10 s"),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), "statement_timeout 60 s"),
        (
            psycopg.errors.IdleInTransactionSessionTimeout("terminating connection due to idle-in-transaction"),
            "idle-in-transaction",
        ),
    ],
)
def test_server_timeouts_are_deadline_errors_that_name_the_timeout(error: psycopg.Error, says: str) -> None:
    translated = connection.deadline_error(error, connection.OPERATOR)
    assert translated is not None and says in str(translated)


def test_a_query_cancelled_by_a_user_is_not_a_deadline() -> None:
    cancelled = psycopg.errors.QueryCanceled("canceling statement due to user request")
    assert connection.deadline_error(cancelled, connection.OPERATOR) is None
    assert connection.deadline_error(psycopg.errors.UniqueViolation("duplicate key"), connection.OPERATOR) is None


def test_redis_clients_have_socket_timeouts_and_keepalives() -> None:
    info = connection.ConnectionInfo.for_engine("redis", "kv.example", "pw")
    kwargs = connection.redis_kwargs(info, 3.0)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"], kwargs["socket_keepalive"]) == (3.0, 3.0, True)
    client = connection.redis_client(info, 2.0)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 2.0


# --- the probe's backstop ---------------------------------------------------------------------------------


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # the abandoned probe thread ends with the test


def test_a_probe_whose_driver_never_answers_is_abandoned_and_reported(
    monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> None:
    def hangs(conn: connection.ConnectionInfo, timeout: float) -> observation.Observation:
        release.wait()
        return observation.Observation.unreachable("too late")

    monkeypatch.setitem(probe.PROBES, "neo4j", hangs)
    monkeypatch.setattr(probe, "GRACE", 0.05)
    conn = connection.ConnectionInfo.for_engine("neo4j", "graph.example", "pw")
    obs = probe.probe(conn, timeout=0.05)
    assert not obs.reachable
    assert obs.error == "DeadlineExceeded: neo4j at graph.example:7687 did not answer within 0.05 s (probe timeout)"


def test_a_probe_that_answers_in_time_is_returned_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = observation.Observation.unreachable("refused")
    monkeypatch.setitem(probe.PROBES, "redis", lambda conn, timeout: answer)
    assert probe.probe(connection.ConnectionInfo.for_engine("redis", "h", "pw"), timeout=5) is answer


def test_an_error_inside_a_probe_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(conn: connection.ConnectionInfo, timeout: float) -> observation.Observation:
        raise RuntimeError("a bug, not a timeout")

    monkeypatch.setitem(probe.PROBES, "qdrant", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        probe.probe(connection.ConnectionInfo.for_engine("qdrant", "h", "pw"), timeout=5)
