"""features.identity's decisions and what the status makes of them (pure: no stores)."""

from __future__ import annotations

import fnmatch

import pytest

from mlinfra.features import identity, layout, status

pytestmark = pytest.mark.unit

TABLE = identity.TableId("public.clicks", 16384)
KNOWN = identity.Recorded("e" * 32, "public.clicks", 16384)


def reasons(found: list[identity.Mismatch]) -> list[tuple[str, str]]:
    return [(m.run_reason, m.status_reason) for m in found]


def test_the_own_marker_and_table_are_trusted() -> None:
    assert identity.judge(KNOWN, "e" * 32, TABLE) == []


@pytest.mark.parametrize("recorded", [None, identity.Recorded()])
def test_no_run_yet_or_a_row_from_before_identity_is_not_distrusted(recorded: identity.Recorded | None) -> None:
    # Nothing to compare with: the first run (or the adopting run) records the identity.
    assert identity.judge(recorded, None, identity.TableId("public.other", 1)) == []


@pytest.mark.parametrize(
    ("marker", "says"),
    [(None, "has no materialization marker"), ("f" * 32, "holds the marker of another materialization")],
)
def test_a_missing_or_foreign_marker_is_lost_online_data(marker: str | None, says: str) -> None:
    [found] = identity.judge(KNOWN, marker, TABLE)
    assert (found.run_reason, found.status_reason) == ("OnlineStoreLost", "OnlineDataLost")
    assert says in found.message and found.message.endswith("the next materialization rewrites every key")


@pytest.mark.parametrize(
    ("table", "says"),
    [
        (identity.TableId("public.other", 16384), "taken from table public.clicks, the spec reads public.other"),
        (identity.TableId("public.clicks", 20000), "table public.clicks was dropped and created again"),
    ],
)
def test_another_offline_table_is_a_changed_table(table: identity.TableId, says: str) -> None:
    [found] = identity.judge(KNOWN, "e" * 32, table)
    assert (found.run_reason, found.status_reason) == ("OfflineTableChanged", "OfflineTableChanged")
    assert says in found.message


def test_both_at_once_are_both_said_online_first() -> None:
    found = identity.judge(KNOWN, None, identity.TableId("public.other", 1))
    assert reasons(found) == [("OnlineStoreLost", "OnlineDataLost"), ("OfflineTableChanged", "OfflineTableChanged")]


def test_epochs_are_fresh_tokens() -> None:
    assert len({identity.new_epoch() for _ in range(50)}) == 50


def test_the_marker_key_is_beside_the_entity_keys_not_under_their_pattern() -> None:
    marker = layout.marker_key("team", "clicks")
    assert marker == "fv:team:clicks"
    assert not fnmatch.fnmatchcase(marker, layout.key_pattern("team", "clicks"))
    # No entity key of any view equals it: entity keys carry one more separator.
    assert layout.online_key("team", "clicks", ["x"]).count(":") == marker.count(":") + 1


def test_status_of_lost_data_is_never_fresh_even_without_an_objective() -> None:
    [found] = identity.judge(KNOWN, None, TABLE)
    st = status.compute(
        status.Facts(generation=1, offline_table="public.clicks", online_key_pattern="fv:t:c:*", mismatches=(found,)),
        None,
    )
    cond = {c["type"]: (c["status"], c["reason"], c["message"]) for c in st["conditions"]}
    for type_ in ("Ready", "Materialized", "FreshnessSLOMet"):
        assert cond[type_] == ("False", "OnlineDataLost", found.message)
