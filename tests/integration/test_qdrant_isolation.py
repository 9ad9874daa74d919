"""The Qdrant tests' isolation, tested where no server runs: a persistent local-mode directory stands in for a
shared server (it keeps what one client left for the next, as a server keeps it for the next test and run)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models

from mlinfra.devenv import qdrant as devenv_qdrant
from mlinfra.vectors import collection

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")

ROOT = Path(__file__).resolve().parents[2]
VECTORS = models.VectorParams(size=4, distance=models.Distance.COSINE)


def make(client: QdrantClient, name: str, alias: str) -> None:
    client.create_collection(name, vectors_config=VECTORS)
    client.upsert(name, points=[models.PointStruct(id=1, vector=[1.0, 0, 0, 0])], wait=True)
    collection.point_alias(client, alias, name, None)


def test_two_tests_with_the_same_logical_names_run_back_to_back_do_not_interfere(tmp_path: Path) -> None:
    path = str(tmp_path / "qdrant")
    # The first "test" fails half way, holding the alias "docs" and its collection.
    with pytest.raises(RuntimeError, match="test failed"), devenv_qdrant.space(QdrantClient(path=path)) as first:
        make(first.client, first.name("docs-v1"), first.name("docs"))
        raise RuntimeError("test failed")
    # The second one, on the same directory, makes the same logical names from scratch.
    with devenv_qdrant.space(QdrantClient(path=path)) as second:
        assert second.name("docs") != first.name("docs")
        assert devenv_qdrant.names(second.client) == (set(), set())  # the failed test left nothing
        make(second.client, second.name("docs-v1"), second.name("docs"))
        assert second.client.count(second.name("docs"), exact=True).count == 1
    with closing(QdrantClient(path=path)) as client:
        assert devenv_qdrant.names(client) == (set(), set())


def test_what_another_user_left_is_neither_assumed_absent_nor_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "qdrant")
    with closing(QdrantClient(path=path)) as client:
        make(client, "docs-theirs", "docs")  # not a test's name: somebody else's data on the shared server
    with devenv_qdrant.space(QdrantClient(path=path)) as space:
        make(space.client, space.name("docs-v1"), space.name("docs"))
    with closing(QdrantClient(path=path)) as client:
        assert devenv_qdrant.names(client) == ({"docs-theirs"}, {"docs"})
        assert collection.alias_target(client, "docs") == "docs-theirs"


def test_a_name_made_outside_the_prefix_is_reported_as_a_leak(tmp_path: Path) -> None:
    path = str(tmp_path / "qdrant")
    with (
        pytest.raises(devenv_qdrant.LeakedNames, match=r"\['docs', 'docs-v1'\] outside its prefix"),
        devenv_qdrant.space(QdrantClient(path=path)) as space,
    ):
        make(space.client, "docs-v1", "docs")
    with closing(QdrantClient(path=path)) as client:  # reported, not removed: on a server it may be somebody else's
        assert devenv_qdrant.names(client) == ({"docs-v1"}, {"docs"})


def test_an_alias_into_a_test_collection_goes_with_it(qdrant_space: devenv_qdrant.QdrantSpace) -> None:
    client = qdrant_space.client
    mine = qdrant_space.name("docs-v1")
    make(client, mine, qdrant_space.name("docs"))
    other = devenv_qdrant.TEST_PREFIX + "other-docs"  # another test's alias pointing into this test's collection
    collection.point_alias(client, other, mine, None)
    removed = devenv_qdrant.remove_prefixed(client, qdrant_space.prefix)
    assert removed == [*sorted([qdrant_space.name("docs"), other]), mine]
    assert not client.collection_exists(mine)


@pytest.mark.parametrize("prefix", ["", "docs", devenv_qdrant.TEST_PREFIX])
def test_only_a_test_prefix_is_ever_removed(qdrant: QdrantClient, prefix: str) -> None:
    with pytest.raises(ValueError, match="only a test's own prefix"):
        devenv_qdrant.remove_prefixed(qdrant, prefix)


def test_the_qdrant_suite_passes_on_a_directory_someone_else_uses_and_leaves_only_their_data(tmp_path: Path) -> None:
    """What the issue's real-server run did, with the directory in the server's place: the whole suite
    (``-m qdrant``) on state another user keeps there (a collection and an alias of the logical names the tests
    use); it passes, their data is untouched, and nothing of the tests is left. Nothing is left, so a second run
    starts from the state this one did: the run is not repeated (it took minutes)."""
    path = tmp_path / "qdrant"
    with closing(QdrantClient(path=str(path))) as client:
        make(client, "docs-theirs", "docs")
    env = {k: v for k, v in os.environ.items() if k not in (devenv_qdrant.URL_ENV, devenv_qdrant.API_KEY_ENV)}
    env[devenv_qdrant.PATH_ENV] = str(path)
    argv = [sys.executable, "-m", "pytest", "-m", "qdrant", "tests", "-q", "-p", "no:cacheprovider"]
    out = subprocess.run(
        [*argv, f"--basetemp={tmp_path / 'run'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr
    print(f"run: {summary}")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
    with closing(QdrantClient(path=str(path))) as client:
        assert devenv_qdrant.names(client) == ({"docs-theirs"}, {"docs"})
        assert collection.alias_target(client, "docs") == "docs-theirs"
        assert client.count("docs-theirs", exact=True).count == 1
