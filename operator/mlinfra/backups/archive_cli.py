"""``mlinfra archive wal NAMESPACE/STORE``: continuous WAL archiving of one PostgreSQL store, as its archiver
Deployment runs it (:mod:`mlinfra.backups.archiver`).

The plan comes from ``MLINFRA_ARCHIVE_PLAN`` (put there by the operator: the pod needs no Kubernetes API
access), the Secrets from the directories it names — the same way as the backup Job
(:mod:`mlinfra.backups.access`). :class:`~mlinfra.backup.postgres.WalArchiver` runs ``pg_receivewal`` on the
store's slot into the spool (``MLINFRA_ARCHIVE_SPOOL``), restarts it with backoff when it exits, writes a mark
every ``markInterval`` seconds, and hands each completed segment, history file and mark to
:func:`mlinfra.backup.catalog.put_wal` (sealed and compressed, encrypted with the policy's key) under
``<store prefix>/wal/``.

Status: one JSON line on stdout whenever it changes (last shipped segment and when, last mark, restarts,
last error), and the same object in a small file (``MLINFRA_ARCHIVE_STATUS``, default ``status.json`` in
the spool), replaced atomically. SIGTERM (or SIGINT): one last mark and segment switch (so every commit made
before the signal is archived, when the server is there), then pg_receivewal is stopped cleanly, what is
complete is shipped, exit 0. Exit 2 when it cannot start (no plan, a Secret missing). No password is ever
in an argv, a log line or the status.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import signal
import tempfile
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from mlinfra.backup import catalog, postgres
from mlinfra.problems import ProblemError
from mlinfra.stores import backupaccess as access
from mlinfra.stores import sync_command
from mlinfra.stores import walarchiver as archiver
from mlinfra.stores.walarchiver import ArchivePlan

STATUS_INTERVAL = 1.0  # seconds between looks at the archiver's status (a change is printed at once)
START_BACKOFF_MAX = 30.0
STOP_FLUSH_TIMEOUT = 20.0  # within the pod's termination grace period, with room for stop()
UNUSABLE = "Unusable"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps({"time": _now(), **line}, sort_keys=True, default=str), flush=True)


def _write_status(path: pathlib.Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _install_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(target: str, *, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    try:
        namespace, _ = sync_command.parse_target(target)
        opened = access.open_in_pod(archiver.PLAN_ENV, ArchivePlan, namespace, "in a WAL archiver pod")
        plan, conn, store_target, enc_key = opened.plan, opened.conn, opened.target, opened.key
    except (sync_command.Unusable, ProblemError, KeyError, ValueError) as exc:
        _emit({"archiver": target, "event": "failed", "reason": UNUSABLE, "error": str(exc)})
        sync_command.termination_message(UNUSABLE, str(exc))
        return sync_command.EXIT_UNUSABLE
    if threading.current_thread() is threading.main_thread():
        _install_signals(stop)
    spool = pathlib.Path(os.environ.get(archiver.SPOOL_ENV) or pathlib.Path(tempfile.gettempdir()) / "wal-spool")
    status_path = pathlib.Path(os.environ.get(archiver.STATUS_ENV) or spool / "status.json")
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    prefix = plan.store_prefix

    def ship(path: pathlib.Path) -> None:
        # Compressed: a segment closed by a mark's switch is mostly zeros (one every markInterval, written or not).
        catalog.put_wal(store_target, prefix, path, enc_key, compress=True)

    def make() -> postgres.WalArchiver:
        return postgres.WalArchiver(conn, spool, plan.slot, ship, mark_interval=plan.mark_interval or None)

    base = {"archiver": target, "slot": plan.slot, "prefix": prefix}
    arch = _start(make, stop, lambda doc: _report(status_path, {**base, **doc}))
    if arch is None:
        return sync_command.EXIT_OK  # stopped before it could start: nothing to archive, nothing lost
    _emit({**base, "event": "started", "markInterval": plan.mark_interval})
    last: dict[str, Any] | None = None
    while not stop.wait(STATUS_INTERVAL):
        current = arch.status().to_json()
        if current != last:
            _report(status_path, {**base, "event": "status", **current})
            last = current
    _emit({**base, "event": "stopping"})
    flushed = None
    if arch.status().running:
        try:
            flushed = arch.flush(timeout=STOP_FLUSH_TIMEOUT).to_json()
        except Exception as exc:  # the server may be gone: stop anyway, the slot keeps the rest
            _emit({**base, "event": "flush-failed", "error": _scrub(str(exc), conn.password)})
    arch.stop()
    _report(status_path, {**base, "event": "stopped", "flushedMark": flushed, **arch.status().to_json()})
    return sync_command.EXIT_OK


def _scrub(text: str, password: str) -> str:
    return text.replace(password, "***") if password else text


def _report(path: pathlib.Path, doc: dict[str, Any]) -> None:
    _emit(doc)
    try:
        _write_status(path, {"time": _now(), **doc})
    except OSError as exc:  # the status file is a convenience; stdout has the same
        _emit({"event": "status-file-failed", "error": str(exc)})


def _start(
    make: Callable[[], postgres.WalArchiver], stop: threading.Event, report: Callable[[dict[str, Any]], None]
) -> postgres.WalArchiver | None:
    """Start an archiver, retrying with backoff while the server cannot be reached (the pod stays up and
    its status says why); None when stopped first."""
    backoff = 1.0
    while not stop.is_set():
        arch = make()
        try:
            return arch.start()
        except Exception as exc:  # PostgresBackupError, a deadline: the message names no password
            report({"event": "start-failed", "error": _scrub(f"{type(exc).__name__}: {exc}", arch.info.password)})
            arch.stop(timeout=5)
        stop.wait(backoff)
        backoff = min(backoff * 2, START_BACKOFF_MAX)
    return None
