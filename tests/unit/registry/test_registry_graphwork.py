"""registry.graphwork: the registry's Neo4j work in a thread of its own, waited for a bounded time, one at a
time per registry (real threads; the work is a function that ends when the test says so)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from mlinfra.registry import graphwork

pytestmark = pytest.mark.unit


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # a thread left waiting ends with the test


def test_work_that_ends_in_time_gives_its_result_or_its_exception() -> None:
    assert graphwork.run("team/a", lambda: 42, wait=5) == 42

    def fails() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        graphwork.run("team/a", fails, wait=5)
    assert graphwork.run("team/a", lambda: "again", wait=5) == "again"  # the key is free once it ended


def test_stuck_work_is_waited_for_a_bounded_time_and_not_started_again_until_it_ends(
    release: threading.Event,
) -> None:
    started: list[str] = []

    def stuck() -> str:
        started.append("stuck")
        release.wait()
        return "late"

    with pytest.raises(graphwork.StillRunning) as waited:
        graphwork.run("team/b", stuck, wait=0.05)
    assert isinstance(waited.value, TimeoutError)  # handled like every missed deadline
    assert "team/b" in str(waited.value) and "timeout 0.05 s" in str(waited.value)

    def more() -> str:
        started.append("more")
        return "more"

    with pytest.raises(graphwork.StillRunning) as busy:
        graphwork.run("team/b", more, wait=5)  # refused at once: the stuck one still runs
    assert busy.value.age >= 0.05
    assert graphwork.run("team/c", lambda: "other", wait=5) == "other"  # another registry is not held up
    assert started == ["stuck"]

    release.set()
    deadline = time.monotonic() + 10
    while True:  # the stuck one ends now; then the key is free again
        try:
            assert graphwork.run("team/b", more, wait=5) == "more"
            break
        except graphwork.StillRunning:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert started == ["stuck", "more"]
