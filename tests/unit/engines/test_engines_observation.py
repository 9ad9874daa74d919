"""Observations: maximum lags from members, replication state, and errors that never carry a secret."""

from __future__ import annotations

from urllib import parse

import pytest

from mlinfra.engines import connection, observation

PASSWORD = "Tr0ub4dor&3/x@y"
QUOTED = parse.quote(PASSWORD, safe="")  # Tr0ub4dor%263%2Fx%40y
CONN = connection.ConnectionInfo.for_engine("postgres", "db.internal", PASSWORD, username="app")
Member = observation.MemberObservation


def test_observed_takes_the_maximum_lag_of_the_members_that_report_one() -> None:
    obs = observation.Observation.observed(
        version="15.18",
        members=[
            Member("primary", "primary", True),
            Member("a", "replica", True, lag_bytes=10, lag_seconds=None),
            Member("b", "replica", False, lag_bytes=3, lag_seconds=2.5),
        ],
        replication="degraded",
        capabilities=["pgvector", "pg_trgm", "pgvector"],
    )
    assert obs.reachable and obs.error is None
    assert (obs.max_lag_bytes, obs.max_lag_seconds) == (10, 2.5)
    assert obs.capabilities == ["pg_trgm", "pgvector"]
    assert obs.ready_members == 2
    assert [m.name for m in obs.replicas] == ["a", "b"]


def test_no_lag_reported_means_unknown_not_zero() -> None:
    obs = observation.Observation.observed(
        version=None, members=[Member("s", "standalone", True)], replication="not-applicable"
    )
    assert obs.max_lag_bytes is None and obs.max_lag_seconds is None


def test_unreachable_knows_nothing_else() -> None:
    obs = observation.Observation.unreachable("ConnectionError: refused")
    assert not obs.reachable
    assert (obs.version, obs.members, obs.replication, obs.capabilities) == (None, [], None, [])
    assert obs.error == "ConnectionError: refused"


@pytest.mark.parametrize(
    ("readiness", "state"),
    [
        ([], "none"),
        ([True], "streaming"),
        ([True, True], "streaming"),
        ([True, False], "degraded"),
        ([False], "degraded"),
    ],
)
def test_replication_state(readiness: list[bool], state: observation.ReplicationState) -> None:
    replicas = [Member(f"r{i}", "replica", ready) for i, ready in enumerate(readiness)]
    assert observation.replication_state(replicas) == state


@pytest.mark.parametrize(
    "text",
    [
        f"auth failed for password {PASSWORD}",
        f"connection to postgresql://app:{PASSWORD}@db.internal:5432/features failed",
        f"connection to postgresql://app:{QUOTED}@db.internal:5432/features failed",
        f"the password is {QUOTED}, url-encoded",
        f"invalid dsn: host=db.internal port=5432 user=app password={PASSWORD} dbname=features",
        f"invalid dsn: host=db.internal password='{PASSWORD}' dbname=features",
        f"config {{'api_key': '{PASSWORD}', 'url': 'http://q:6333'}}",
    ],
)
def test_error_message_scrubs_the_password_and_dsn_secrets(text: str) -> None:
    message = observation.error_message(RuntimeError(text), CONN)
    assert message.startswith("RuntimeError: ")
    assert PASSWORD not in message
    assert "Tr0ub4dor" not in message
    assert observation.REDACTED in message


def test_scrub_removes_credentials_of_any_url_and_any_password_setting() -> None:
    # Secrets the caller does not know (another DSN in the text) are removed by shape.
    text = "redis://default:other-secret@h:6379/0 and password=hunter2, pwd: 'x y'"
    scrubbed = observation.scrub(text)
    assert "other-secret" not in scrubbed and "hunter2" not in scrubbed and "x y" not in scrubbed
    assert scrubbed == "redis://default:***@h:6379/0 and password=***, pwd: ***"


def test_scrub_replaces_an_explicit_dsn_secret() -> None:
    dsn = f"host=db.internal user=app password={PASSWORD}"
    message = observation.error_message(ValueError(f"bad {dsn}"), CONN, dsn)
    assert message == "ValueError: bad ***"


def test_scrub_keeps_ordinary_messages_intact() -> None:
    text = 'FATAL: password authentication failed for user "app"'
    assert observation.scrub(text, PASSWORD) == text


def test_error_message_is_one_bounded_line() -> None:
    message = observation.error_message(OSError("line one\n  line two\t" + "x" * 2000), CONN)
    assert "\n" not in message and "\t" not in message
    assert message.startswith("OSError: line one line two x")
    assert len(message) == observation.MAX_ERROR_LENGTH


def test_error_message_names_exceptions_without_text() -> None:
    assert observation.error_message(TimeoutError(), None) == "TimeoutError: TimeoutError()"
