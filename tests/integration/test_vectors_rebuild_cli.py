"""``mlinfra rebuild vectorindex`` as the rebuild Job runs it: a real process, real PostgreSQL, Qdrant through a
mounted connection (local mode here, the real server at ``QDRANT_URL`` when set; the ``setup`` of the sync
command's tests). Covers a rebuild, the alias already there, a failing source (exit 1 and the termination
message), the locks (exit 2), and the rebuild lock as the operator sees it in ``pg_locks``."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_vectors_sync_cli import NS, Setup, count, setup  # noqa: F401 - setup: the fixture

from mlinfra.devenv.postgres import PostgresCluster
from mlinfra.engines import qdrant as qdrant_engine
from mlinfra.vectors import collection, rebuild_cli, runs, sync_cli
from mlinfra.vectors import sync as vsync

pytestmark = [pytest.mark.integration, pytest.mark.qdrant]


def changed_spec(s: Setup, path: Path, distance: str = "Dot") -> Path:
    """The setup's VectorIndex with another distance: an immutable change."""
    body = yaml.safe_load(s.spec_file.read_text())
    body["spec"]["vectors"]["distance"] = distance
    path.write_text(yaml.safe_dump(body))
    return path


def rebuild_run(s: Setup, spec_file: Path, termination: Path) -> tuple[int, dict[str, Any], str]:
    out = subprocess.run(
        [sys.executable, "-m", "mlinfra", "rebuild", "vectorindex", f"{NS}/{s.name}", "--file", str(spec_file)],
        env={**s.env, rebuild_cli.TERMINATION_LOG_ENV: str(termination)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout + out.stderr  # one JSON line, nothing else on stdout
    return out.returncode, json.loads(lines[0]), out.stdout + out.stderr


@pytest.fixture
def termination(tmp_path: Path) -> Path:
    """The termination log as the kubelet provides it: an empty file."""
    path = tmp_path / "termination-log"
    path.write_text("")
    return path


def test_a_rebuild_moves_the_alias_commits_the_watermark_and_a_second_run_does_nothing(
    setup: Setup,  # noqa: F811
    termination: Path,
    tmp_path: Path,
) -> None:
    setup.insert(range(1, 26), random.Random(5))
    spec_file = changed_spec(setup, tmp_path / "dot.yaml")
    spec = sync_cli.load_index(NS, setup.name, spec_file).spec
    target = collection.physical_name(spec)
    with qdrant_engine.open_client(setup.qdrant) as client:
        first = collection.alias_target(client, setup.name)
    assert first is not None and first != target

    code, summary, output = rebuild_run(setup, spec_file, termination)
    assert code == 0, output
    assert summary == {
        "vectorIndex": f"{NS}/{setup.name}",
        "outcome": "Succeeded",
        "rebuilt": True,
        "alias": setup.name,
        "active": target,
        "previous": first,
        "points": 25,
        "watermark": summary["watermark"],
    }
    assert summary["watermark"] is not None and termination.read_text() == ""
    with qdrant_engine.open_client(setup.qdrant) as client:
        assert collection.alias_target(client, setup.name) == target
        assert client.get_collection(target).config.params.vectors.distance.value == "Dot"  # type: ignore[union-attr]
        assert client.collection_exists(first)  # kept for rollback
    assert count(setup) == 25
    assert vsync.rows_behind(setup.conn, spec, NS, setup.name) == 0  # the watermark follows the backfill

    # The alias on the target already: nothing to do, nothing changed.
    code, summary, output = rebuild_run(setup, spec_file, termination)
    assert (code, summary["outcome"], summary["rebuilt"], summary["active"]) == (0, "Succeeded", False, target), output
    assert count(setup) == 25


def test_a_failing_source_exits_1_with_a_termination_message_and_leaves_the_alias(
    setup: Setup,  # noqa: F811
    termination: Path,
    tmp_path: Path,
) -> None:
    setup.conn.execute(f"ALTER TABLE {setup.table} DROP COLUMN deleted")
    with qdrant_engine.open_client(setup.qdrant) as client:
        first = collection.alias_target(client, setup.name)
    code, summary, output = rebuild_run(setup, changed_spec(setup, tmp_path / "dot.yaml"), termination)
    assert code == 1, output
    assert summary["outcome"] == "Failed" and summary["reason"] == rebuild_cli.FAILED
    assert "spec.source.deletedColumn: column 'deleted' does not exist" in summary["error"]
    message = termination.read_text()
    assert message == f"{rebuild_cli.FAILED}: {summary['error']}" and "\n" not in message
    pg_password = (Path(setup.env[sync_cli.SOURCE_DIR_ENV]) / "password").read_text()
    assert pg_password and pg_password not in output and pg_password not in message
    with qdrant_engine.open_client(setup.qdrant) as client:
        assert collection.alias_target(client, setup.name) == first


@pytest.mark.parametrize("lock", ["rebuild", "sync"])
def test_a_held_lock_exits_2_doing_nothing(
    setup: Setup,  # noqa: F811
    postgres_cluster: PostgresCluster,
    termination: Path,
    tmp_path: Path,
    lock: str,
) -> None:
    spec_file = changed_spec(setup, tmp_path / "dot.yaml")
    with qdrant_engine.open_client(setup.qdrant) as client:
        first = collection.alias_target(client, setup.name)
    held = runs.rebuilding if lock == "rebuild" else runs.exclusive
    with postgres_cluster.primary.connect() as other, held(other, NS, setup.name):
        code, summary, output = rebuild_run(setup, spec_file, termination)
    assert code == 2, output
    assert (summary["outcome"], summary["reason"]) == ("Skipped", rebuild_cli.RUN_IN_PROGRESS)
    assert f"another {lock} of VectorIndex {NS}/{setup.name} is running" in summary["error"]
    assert termination.read_text().startswith(f"{rebuild_cli.RUN_IN_PROGRESS}: another {lock}")
    with qdrant_engine.open_client(setup.qdrant) as client:
        assert collection.alias_target(client, setup.name) == first
        assert not client.collection_exists(
            collection.physical_name(sync_cli.load_index(NS, setup.name, spec_file).spec)
        )


def test_the_operator_sees_the_rebuild_lock_in_pg_locks_and_only_that_one(
    setup: Setup,  # noqa: F811
    postgres_cluster: PostgresCluster,
) -> None:
    pg = postgres_cluster.primary
    with pg.connect() as watcher:
        assert not runs.rebuild_running(watcher, NS, setup.name)
        with pg.connect() as other:
            with runs.exclusive(other, NS, setup.name):  # a sync: not a rebuild
                assert not runs.rebuild_running(watcher, NS, setup.name)
            with runs.rebuilding(other, NS, setup.name):
                assert runs.rebuild_running(watcher, NS, setup.name)
                assert not runs.rebuild_running(watcher, NS, setup.name + "-other")
                assert not runs.rebuild_running(watcher, "other", setup.name)
            assert not runs.rebuild_running(watcher, NS, setup.name)
            # Many names: the key's halves are compared as PostgreSQL stores them (negative keys included).
            for i in range(40):
                with runs.rebuilding(other, NS, f"n{i}"):
                    assert runs.rebuild_running(watcher, NS, f"n{i}"), i
