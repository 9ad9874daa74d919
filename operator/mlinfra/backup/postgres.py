"""PostgreSQL backups over the replication protocol: base backups, continuous WAL archiving, point-in-time
restore. Independent of the database image: the client tools (``pg_basebackup``, ``pg_receivewal``) run
where this module runs and talk to the server like a standby would.

- :func:`take_base` writes one self-contained base backup (``base.tar``, ``pg_wal.tar``,
  ``backup_manifest``, and :data:`META_FILE`) into a staging directory: restorable to its end without any
  archive.
- :class:`WalArchiver` keeps ``pg_receivewal`` running on a physical replication slot (so the server keeps
  the WAL it has not received yet) and hands each completed segment, history file and mark to ``ship``.
- :func:`restore` lays a base backup out as a new data directory that recovers from the archived WAL to a
  target time or LSN (or the end of the archive) and then promotes. What can be reached is decided by
  :mod:`mlinfra.backup.pg_wal` (names only), before anything is written.

Passwords never reach an argv, an environment variable or a message: the tools read a 0600 passfile in a
private temporary directory. Every call has a deadline; the tools run in their own process group, killed
whole when it passes.

Target times: a restore to ``T`` holds exactly the transactions that committed before ``T``
(``recovery_target_inclusive = false``: recovery stops just before the first commit stamped at or after T).
The times this module reports are the server's clock (see "marks" in :mod:`mlinfra.backup.pg_wal`).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg

from mlinfra.backup import pg_wal
from mlinfra.engines import connection
from mlinfra.engines.connection import ConnectionInfo

log = logging.getLogger(__name__)

META_FILE = "mlinfra-base.json"
BASE_TAR, WAL_TAR, MANIFEST = "base.tar", "pg_wal.tar", "backup_manifest"
APPLICATION_NAME = "mlinfra-backup"
# The settings restore() writes into postgresql.auto.conf, reset by finish_restore() after the promotion:
# left there, a standby cloned from the restored primary would inherit the target and stop replaying at it.
RECOVERY_SETTINGS = (
    "restore_command",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_action",
    "recovery_target_timeline",
    "hot_standby",
)
_MARKS_DIR = ".mlinfra-marks"
_LAST_SHIPPED = ".mlinfra-last-shipped"


class PostgresBackupError(Exception):
    """A backup, archive or restore step failed: the message says which and why, never a password."""


# --- the tools: connection string, passfile, process groups with deadlines -----------------------------


def _quote_conninfo(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _passfile_line(password: str) -> str:
    # libpq's passfile: fields separated by ':', with '\' escaping ':' and '\'.
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


@contextlib.contextmanager
def _tool_env(info: ConnectionInfo, connect_timeout: float) -> Iterator[tuple[str, dict[str, str]]]:
    """(connection string without the password, environment naming a 0600 passfile) for the PostgreSQL
    client tools; the passfile and any CA file live as long as the context."""
    with (
        connection.libpq_params(info, connect_timeout, APPLICATION_NAME, **connection.KEEPALIVES) as params,
        tempfile.TemporaryDirectory(prefix="mlinfra-pg-") as private,
    ):
        password = params.pop("password", None)
        params.pop("dbname", None)  # replication connections are to the cluster, not a database
        conninfo = " ".join(
            f"{key}={_quote_conninfo(str(value))}" for key, value in params.items() if value is not None
        )
        passfile = Path(private) / "pgpass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_passfile_line(password or ""))
        # Nothing of the caller's libpq environment (a PGPASSWORD, a PGSSLMODE) overrides ours.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSFILE=str(passfile), LC_MESSAGES="C", LANG="C")
        yield conninfo, env


def _scrub(text: str, info: ConnectionInfo) -> str:
    return text.replace(info.password, "***") if info.password else text


def _tool(name: str) -> str:
    """A PostgreSQL client binary: on PATH, or where Debian keeps the versioned ones."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise PostgresBackupError(f"{name} not found: install the PostgreSQL client tools (Debian: postgresql-client)")


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _run(argv: list[str], env: dict[str, str], timeout: float, what: str, info: ConnectionInfo) -> str:
    """Run a tool in its own process group (pg_basebackup forks a WAL streamer); past ``timeout`` the whole
    group is killed. Returns stderr (the tools' verbose output); raises with its tail on failure."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise PostgresBackupError(f"{what} did not finish within {timeout:.0f} s (stopped)") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        tail = _scrub(err.strip(), info)[-1500:]
        raise PostgresBackupError(f"{what} failed (exit {proc.returncode}): {tail}")
    return err


@contextlib.contextmanager
def _sql(info: ConnectionInfo, timeout: float) -> Iterator[Any]:
    """A SQL connection with every wait bounded by ``timeout``; errors become :class:`PostgresBackupError`
    (deadlines stay :class:`~mlinfra.engines.connection.DeadlineExceeded`, a TimeoutError)."""
    timeouts = connection.PgTimeouts(statement=timeout, lock=timeout, idle_in_transaction=timeout, total=timeout)
    try:
        with connection.postgres(
            info, application_name=APPLICATION_NAME, connect_timeout=timeout, timeouts=timeouts
        ) as conn:
            yield conn
    except connection.DeadlineExceeded:
        raise
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PostgresBackupError(f"PostgreSQL at {info.endpoint}: {_scrub(first, info)}") from None


def _server_facts(info: ConnectionInfo, timeout: float) -> dict[str, Any]:
    with _sql(info, timeout) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
            " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
            " (SELECT system_identifier::text FROM pg_control_system()), clock_timestamp()"
        ).fetchone()
    return {
        "server_version": row[0],
        "server_version_num": row[1],
        "wal_segment_size": int(row[2]),
        "system_identifier": row[3],
        "clock": row[4],
    }


def write_mark(info: ConnectionInfo, timeout: float = 30.0, switch: bool = False) -> tuple[pg_wal.Mark, str | None]:
    """Write a mark (see :mod:`mlinfra.backup.pg_wal`): a transaction with a transaction id (so its commit
    is a WAL commit record) that reads the server clock before it commits. With ``switch``, then close the
    current segment (``pg_switch_wal``) so the archiver receives it now; returns the mark and the name of
    the segment that the switch completed (None without ``switch``). Needs a primary; pg_switch_wal needs
    superuser or an explicit GRANT."""
    with _sql(info, timeout) as conn:
        with conn.transaction():
            row = conn.execute("SELECT pg_current_xact_id(), clock_timestamp()").fetchone()
        clock = row[1]
        lsn_row = conn.execute(
            "SELECT pg_current_wal_insert_lsn()::text, pg_walfile_name(pg_current_wal_insert_lsn())"
        ).fetchone()
        switched = None
        if switch:
            switched = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    return pg_wal.Mark(lsn_row[1], clock, pg_wal.parse_lsn(lsn_row[0])), switched


# --- base backups -------------------------------------------------------------------------------------


def _label_fields(base_tar: Path) -> dict[str, str]:
    """The backup_label of a tar base backup (the server sends it first, so this reads only the start)."""
    with tarfile.open(base_tar) as tar:
        for member in tar:
            if member.name in ("backup_label", "./backup_label"):
                f = tar.extractfile(member)
                if f is None:
                    break
                text = f.read().decode()
                return dict(
                    (key.strip(), value.strip())
                    for key, _, value in (line.partition(":") for line in text.splitlines())
                )
    raise PostgresBackupError(f"{base_tar} has no backup_label: not a base backup")


def take_base(
    info: ConnectionInfo, staging: Path, timeout: float, backup_id: str = "", connect_timeout: float = 10.0
) -> dict[str, Any]:
    """One base backup into the empty (or new) ``staging``: ``base.tar``, ``pg_wal.tar`` (the WAL from its
    start to its end: it restores on its own), ``backup_manifest`` and :data:`META_FILE`. Returns the
    metadata (also in :data:`META_FILE`): LSNs, segments, timeline, times, server version, sizes.

    ``stop_time`` is a mark written right after the backup ended (see :func:`write_mark`): the earliest
    target time this backup serves once the WAL after it is archived. ``start_time`` is a server clock
    reading just before the backup began.
    """
    if staging.exists() and any(staging.iterdir()):
        raise PostgresBackupError(f"staging directory {staging} is not empty")
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    label = f"mlinfra-{backup_id}" if backup_id else "mlinfra"
    started = time.monotonic()
    facts = _server_facts(info, connect_timeout)
    with _tool_env(info, connect_timeout) as (conninfo, env):
        argv = [
            _tool("pg_basebackup"),
            "-d",
            conninfo,
            "-D",
            str(staging),
            "-Ft",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-password",
            "--label",
            label,
            "--no-sync",
            "--verbose",
        ]
        remaining = max(1.0, timeout - (time.monotonic() - started))
        _run(argv, env, remaining, f"pg_basebackup of {info.endpoint}", info)
    mark, _ = write_mark(info, connect_timeout)
    duration = time.monotonic() - started
    extra = sorted(p.name for p in staging.iterdir() if p.name not in (BASE_TAR, WAL_TAR, MANIFEST))
    if extra:
        # <oid>.tar per tablespace: restore() would have to relocate them; managed stores have none.
        raise PostgresBackupError(f"the server has tablespaces ({', '.join(extra)}): not supported")
    fields = _label_fields(staging / BASE_TAR)
    manifest = json.loads((staging / MANIFEST).read_text())
    ranges = manifest.get("WAL-Ranges") or []
    if not ranges:
        raise PostgresBackupError("backup_manifest has no WAL-Ranges")
    size = facts["wal_segment_size"]
    start_lsn = pg_wal.parse_lsn(fields["START WAL LOCATION"].split()[0])
    stop_lsn = pg_wal.parse_lsn(ranges[-1]["End-LSN"])
    timeline = int(ranges[-1]["Timeline"])
    start_timeline = int(fields.get("START TIMELINE", ranges[0]["Timeline"]))
    files = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
    meta: dict[str, Any] = {
        "engine": "postgres",
        "label": label,
        "timeline": timeline,
        "start_timeline": start_timeline,
        "start_lsn": pg_wal.format_lsn(start_lsn),
        "stop_lsn": pg_wal.format_lsn(stop_lsn),
        "start_segment": pg_wal.segment_name(start_timeline, pg_wal.segment_of(start_lsn, size), size),
        "stop_segment": pg_wal.segment_name(timeline, pg_wal.segment_of(stop_lsn, size), size),
        "start_time": facts["clock"].isoformat(),
        "stop_time": mark.time.isoformat(),
        "stop_mark_lsn": pg_wal.format_lsn(mark.lsn),
        "server_version": facts["server_version"],
        "server_version_num": facts["server_version_num"],
        "system_identifier": facts["system_identifier"],
        "wal_segment_size": size,
        "files": files,
        "bytes": sum(files.values()),
        "duration_seconds": round(duration, 3),
    }
    (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --- continuous WAL archiving --------------------------------------------------------------------------


def slot_name(store: str) -> str:
    """The physical replication slot of one store's archiver: ``mlinfra_<store>`` in the characters slot
    names allow (a hash keeps long or folded names apart)."""
    clean = re.sub(r"[^a-z0-9_]", "_", store.lower())
    name = f"mlinfra_{clean}"
    if len(name) > 63 or clean != store:
        name = f"{name[:54]}_{hashlib.sha256(store.encode()).hexdigest()[:8]}"
    return name


def create_slot(info: ConnectionInfo, slot: str, timeout: float = 30.0) -> None:
    """Create the physical slot unless it exists, reserving WAL from now on. Reserving matters: a slot that
    ``pg_receivewal --create-slot`` makes has no restart position until a receiver first connects, so WAL
    written in between (a segment switched before pg_receivewal was up) was neither kept nor received."""
    with _sql(info, timeout) as conn:
        conn.execute(
            "SELECT pg_create_physical_replication_slot(%s, true)"
            " WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
            (slot, slot),
        )


def drop_slot(info: ConnectionInfo, slot: str, timeout: float = 30.0) -> None:
    """Drop the archiver's slot (stop the archiver first): needed when archiving ends for good, or the
    server keeps WAL for ever."""
    with _sql(info, timeout) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        )


@dataclasses.dataclass(frozen=True)
class ArchiverStatus:
    """What the operator reports about archiving. ``last_shipped_at`` is this machine's clock when the last
    segment was handed over; ``last_mark`` is the latest archived mark: every target time up to its
    ``time`` (server clock) is recoverable."""

    running: bool
    slot: str
    last_segment: str | None
    last_shipped_at: datetime.datetime | None
    last_mark: pg_wal.Mark | None
    segments_shipped: int
    restarts: int
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "slot": self.slot,
            "lastSegment": self.last_segment,
            "lastShippedAt": self.last_shipped_at.isoformat() if self.last_shipped_at else None,
            "lastMark": self.last_mark.to_json() if self.last_mark else None,
            "segmentsShipped": self.segments_shipped,
            "restarts": self.restarts,
            "lastError": self.last_error,
        }


class WalArchiver:
    """``pg_receivewal`` on a physical slot into ``spool``, supervised: each completed segment (never a
    ``.partial``), each timeline history file and each mark is handed to ``ship(path)`` in WAL order and
    removed only after ``ship`` returned. A failing ``ship`` is retried; the spool (and the slot, on the
    server) keep the WAL meanwhile.

    ``pg_receivewal`` runs with ``--no-loop``: when the connection is lost it exits, and this class starts
    it again with backoff, so the failure shows in :meth:`status`. The last shipped segment stays in the
    spool: ``pg_receivewal`` resumes after the newest complete segment it finds there, whatever the
    server's version (a slot's restart position is only read by PostgreSQL 15 and newer).

    ``mark_interval`` (seconds): write a mark and switch segments that often, so that the archive's reach
    in time never lags more than that (like ``archive_timeout``, also when there are no writes; each
    switch costs a whole segment in the archive). Marks and :meth:`flush` need ``pg_switch_wal``
    (superuser, or GRANT EXECUTE); archiving itself and :func:`take_base` need only REPLICATION.
    """

    def __init__(
        self,
        info: ConnectionInfo,
        spool: Path,
        slot: str,
        ship: Callable[[Path], None],
        *,
        connect_timeout: float = 10.0,
        mark_interval: float | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        self.info = info
        self.spool = spool
        self.slot = slot
        self.ship = ship
        self.connect_timeout = connect_timeout
        self.mark_interval = mark_interval
        self.poll_interval = poll_interval
        self.wal_segment_size = pg_wal.DEFAULT_SEGMENT_SIZE
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._last_segment: str | None = None
        self._last_shipped_at: datetime.datetime | None = None
        self._last_mark: pg_wal.Mark | None = None
        self._shipped = 0
        self._restarts = 0
        self._error: str | None = None
        self._env_stack = contextlib.ExitStack()
        self._conninfo = ""
        self._env: dict[str, str] = {}

    # lifecycle

    def start(self) -> WalArchiver:
        """Create the slot if missing and start archiving in a background thread."""
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.spool / _MARKS_DIR).mkdir(exist_ok=True, mode=0o700)
        facts = _server_facts(self.info, self.connect_timeout)
        self.wal_segment_size = facts["wal_segment_size"]
        state = self.spool / _LAST_SHIPPED
        if state.exists():
            self._last_segment = state.read_text().strip() or None
        create_slot(self.info, self.slot, self.connect_timeout)
        self._conninfo, self._env = self._env_stack.enter_context(_tool_env(self.info, self.connect_timeout))
        self._launch()  # running when start() returns; the thread restarts it when it exits
        self._thread = threading.Thread(target=self._loop, name=f"wal-archiver-{self.slot}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """End ``pg_receivewal`` cleanly (SIGINT: it flushes what it received and exits), ship what is
        complete, and stop the thread. The slot stays (archiving resumes where it stopped)."""
        self._stopping.set()
        self._end_process(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with contextlib.suppress(Exception):
            self._ship_ready()
        self._env_stack.close()

    def __enter__(self) -> WalArchiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def status(self) -> ArchiverStatus:
        with self._lock:
            return ArchiverStatus(
                running=self.pid is not None,
                slot=self.slot,
                last_segment=self._last_segment,
                last_shipped_at=self._last_shipped_at,
                last_mark=self._last_mark,
                segments_shipped=self._shipped,
                restarts=self._restarts,
                last_error=self._error,
            )

    def flush(self, timeout: float = 60.0) -> pg_wal.Mark:
        """Write a mark, switch to a new segment and wait until the segment holding the mark has been
        shipped (with everything before it): every commit made before this call is then archived."""
        deadline = time.monotonic() + timeout
        mark = self._mark(switch=True)
        size = self.wal_segment_size
        wanted = pg_wal.parse_segment(mark.segment, size)
        while time.monotonic() < deadline:
            with self._lock:
                done = self._last_mark is not None and self._last_mark.lsn >= mark.lsn
                last = self._last_segment
            if done and last is not None and pg_wal.parse_segment(last, size) >= wanted:
                return mark
            if self._thread is None or not self._thread.is_alive():
                raise PostgresBackupError("the WAL archiver is not running")
            time.sleep(0.05)
        raise PostgresBackupError(
            f"segment {mark.segment} was not archived within {timeout:.0f} s"
            + (f" (last error: {self._error})" if self._error else "")
        )

    # internals

    def _mark(self, switch: bool) -> pg_wal.Mark:
        mark, _ = write_mark(self.info, self.connect_timeout, switch=switch)
        # The file goes first: a mark is shipped after its segment, also by an archiver restarted later.
        path = self.spool / _MARKS_DIR / mark.name
        path.write_text(json.dumps(mark.to_json()) + "\n")
        return mark

    def _loop(self) -> None:
        backoff = 1.0
        next_start = 0.0
        next_mark = time.monotonic() + self.mark_interval if self.mark_interval else None
        while not self._stopping.is_set():
            proc = self._proc
            if (proc is None or proc.poll() is not None) and time.monotonic() >= next_start:
                if proc is not None:
                    self._record_exit(proc)
                    next_start = time.monotonic() + backoff
                    backoff = min(backoff * 2, 30.0)
                    self._proc = None
                    continue
                self._launch()
            elif proc is not None and proc.poll() is None:
                backoff = 1.0
            try:
                self._ship_ready()
            except Exception as exc:  # ship() failed: keep the file, try again on the next round
                self._set_error(f"shipping failed: {_scrub(str(exc), self.info)}")
            if next_mark is not None and time.monotonic() >= next_mark and self.mark_interval:
                next_mark = time.monotonic() + self.mark_interval
                try:
                    self._mark(switch=True)
                except Exception as exc:
                    self._set_error(f"writing a mark failed: {_scrub(str(exc), self.info)}")
            self._stopping.wait(self.poll_interval)

    def _launch(self) -> None:
        if self._stopping.is_set():
            return
        argv = [
            _tool("pg_receivewal"),
            "-d",
            self._conninfo,
            "-D",
            str(self.spool),
            "--slot",
            self.slot,
            "--no-loop",
            "--no-password",
            "--verbose",
            "--status-interval=10",
        ]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._env,
            start_new_session=True,
            text=True,
        )
        proc = self._proc
        threading.Thread(target=self._read_stderr, args=(proc,), daemon=True, name="pg_receivewal-log").start()
        log.info("pg_receivewal started on slot %s (pid %d)", self.slot, proc.pid)

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            text = _scrub(line.rstrip(), self.info)
            self._stderr.append(text)
            log.info("pg_receivewal: %s", text)

    def _record_exit(self, proc: subprocess.Popen[str]) -> None:
        if self._stopping.is_set():
            return  # stop() ended it
        with self._lock:
            self._restarts += 1
            tail = " | ".join(list(self._stderr)[-3:])
            self._error = f"pg_receivewal exited with {proc.returncode}: {tail}"
        log.warning("%s; restarting", self._error)

    def _set_error(self, message: str) -> None:
        with self._lock:
            self._error = message
        log.warning("WAL archiver %s: %s", self.slot, message)

    def _end_process(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("pg_receivewal did not stop within %.0f s; killing it", timeout)
        _kill_group(proc)

    def _ship_ready(self) -> None:
        """Ship history files, then complete segments after the last shipped one in WAL order, each
        segment's marks right after it."""
        size = self.wal_segment_size
        for path in sorted(self.spool.glob("*.history")):
            if pg_wal.history_timeline(path.name) is not None:
                self.ship(path)
                path.unlink()
        last = pg_wal.parse_segment(self._last_segment, size) if self._last_segment else None
        segments = sorted(
            (pg_wal.parse_segment(p.name, size), p) for p in self.spool.iterdir() if pg_wal.is_segment_name(p.name)
        )
        for seg, path in segments:
            if last is not None and seg <= last:
                if seg < last:
                    path.unlink()  # shipped earlier; the newest shipped one stays for pg_receivewal's restart
                continue
            if path.stat().st_size != size:
                continue  # pg_receivewal renames a segment only when it is complete; be sure anyway
            self.ship(path)
            (self.spool / _LAST_SHIPPED).write_text(path.name + "\n")
            previous, last = self._last_segment, seg
            with self._lock:
                self._last_segment = path.name
                self._last_shipped_at = datetime.datetime.now(datetime.UTC)
                self._shipped += 1
                self._error = None
            if previous is not None:
                (self.spool / previous).unlink(missing_ok=True)
            self._ship_marks(last)
        if last is not None:
            self._ship_marks(last)  # marks whose segment went earlier (a failed upload, a restart)

    def _ship_marks(self, upto: pg_wal.Segment) -> None:
        size = self.wal_segment_size
        for path in sorted((self.spool / _MARKS_DIR).glob("*.mark")):
            mark = pg_wal.parse_mark(path.name)
            if mark is None:
                continue
            if pg_wal.parse_segment(mark.segment, size).segno <= upto.segno:
                self.ship(path)
                path.unlink()
                with self._lock:
                    if self._last_mark is None or mark.lsn > self._last_mark.lsn:
                        self._last_mark = mark


# --- restore -------------------------------------------------------------------------------------------


def read_meta(base_dir: Path) -> dict[str, Any]:
    path = base_dir / META_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PostgresBackupError(f"cannot read the base backup's metadata {path}: {exc}") from None
    return meta


def read_histories(wal_dir: Path) -> dict[int, str]:
    histories = {}
    for path in wal_dir.glob("*.history"):
        timeline = pg_wal.history_timeline(path.name)
        if timeline is not None:
            histories[timeline] = path.read_text()
    return histories


def _check_segment_header(path: Path, system_identifier: str, size: int) -> None:
    """A segment's first page (XLogLongPageHeaderData) names the database system and the segment size:
    WAL of another store in the archive is refused here, not by a recovery that fails half-way."""
    with open(path, "rb") as f:
        header = f.read(40)
    if len(header) < 40:
        raise PostgresBackupError(f"WAL segment {path.name} is truncated")
    sysid, seg_size = struct.unpack_from("<QI", header, 24)
    if system_identifier and str(sysid) != system_identifier:
        raise PostgresBackupError(
            f"WAL segment {path.name} belongs to another database system ({sysid}, the base backup is of "
            f"{system_identifier}): the archive mixes stores"
        )
    if seg_size != size:
        raise PostgresBackupError(f"WAL segment {path.name} has segment size {seg_size}, expected {size}")


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def restore_command(wal_dir: Path) -> str:
    """Copy a requested file from ``wal_dir``; a missing one is "not archived" (exit 1, no noise)."""
    src = shlex.quote(str(wal_dir)).replace("%", "%%") + "/%f"
    return f'test -f {src} && cp {src} "%p"'


def _extract(tar_path: Path, dest: Path) -> None:
    """Extract a base backup's tar into ``dest``, refusing what could write outside it: absolute names, ``..``,
    links leading out of ``dest``, device files and FIFOs (:class:`PostgresBackupError`)."""
    try:
        with tarfile.open(tar_path) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                _extract_checked(tar, dest, tar_path.name)
    except tarfile.TarError as exc:  # the data filter's refusals are TarErrors too
        raise PostgresBackupError(f"{tar_path.name}: {exc}") from None


def _extract_checked(tar: tarfile.TarFile, dest: Path, label: str) -> None:
    """The "data" filter's checks done here, for a Python without extraction filters (before 3.11.4: the
    operator image's Debian bookworm has 3.11.2). Each member is checked just before it is extracted, against
    the tree as it is then, so a link extracted earlier cannot carry a later member out of ``dest``."""
    root = os.path.realpath(dest)

    def inside(path: str) -> bool:
        return os.path.commonpath([os.path.realpath(path), root]) == root

    def refuse(member: tarfile.TarInfo, why: str) -> PostgresBackupError:
        return PostgresBackupError(f"{label}: refusing member {member.name!r}: {why}")

    trusted: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    for member in tar:
        name = member.name
        if name.startswith("/") or os.path.isabs(name):
            raise refuse(member, "absolute name")
        if ".." in name.split("/"):
            raise refuse(member, "'..' in its name")
        if not inside(os.path.join(root, name)):
            raise refuse(member, "outside the destination")
        if member.issym() or member.islnk():
            link = member.linkname
            if link.startswith("/") or os.path.isabs(link):
                raise refuse(member, f"link to an absolute path {link!r}")
            # A symbolic link is relative to its own directory, a hard link to the archive's root.
            base = os.path.join(root, os.path.dirname(name)) if member.issym() else root
            if not inside(os.path.join(base, link)):
                raise refuse(member, f"link {link!r} leads outside the destination")
        elif not (member.isreg() or member.isdir()):
            raise refuse(member, "a device file or FIFO")
        safe = copy.copy(member)
        mode = member.mode & 0o755  # no setuid/setgid/sticky bits, nothing writable by group or others
        safe.mode = (mode if mode & 0o100 else mode & ~0o111) | 0o600
        # The files belong to whoever extracts them (as root, tarfile would chown to the archive's owners).
        safe.uid, safe.gid, safe.uname, safe.gname = os.geteuid(), os.getegid(), "", ""
        # Directories keep the mode tarfile creates them with (0700), as with the data filter; their attributes
        # set only after their contents would need a second pass, and a read-only directory stops extraction.
        tar.extract(safe, root, set_attrs=not member.isdir(), **trusted)


def restore(
    base_dir: Path,
    wal_dir: Path,
    pgdata: Path,
    target_time: datetime.datetime | None = None,
    target_lsn: str | None = None,
    base_meta: Mapping[str, Any] | None = None,
) -> pg_wal.RestorePlan:
    """Lay out a NEW data directory ``pgdata`` (missing or empty; mode 0700) from the base backup in
    ``base_dir`` that recovers from the segments in ``wal_dir`` to ``target_time`` (exactly the
    transactions committed before it), to ``target_lsn``, or to the end of the archive, and then promotes.

    ``wal_dir`` must be readable by the server process (in the cluster, the init container downloads the
    segments the plan names into the data volume). Refused before anything is written when the target is
    before the base backup's end or after the archive's reach (a gap, or simply the end). Start the server
    on ``pgdata`` afterwards and call :func:`finish_restore`.
    """
    meta = dict(base_meta) if base_meta is not None else read_meta(base_dir)
    names = sorted(p.name for p in wal_dir.iterdir()) if wal_dir.is_dir() else []
    histories = read_histories(wal_dir) if wal_dir.is_dir() else {}
    lsn = pg_wal.parse_lsn(target_lsn) if target_lsn is not None else None
    plan = pg_wal.plan_restore(meta, names, target_time, lsn, histories)
    for name in plan.segments:
        if pg_wal.is_segment_name(name):
            _check_segment_header(wal_dir / name, plan.base.system_identifier, plan.base.wal_segment_size)
    if pgdata.exists() and any(pgdata.iterdir()):
        raise PostgresBackupError(f"{pgdata} is not empty: a restore never overwrites a data directory")
    pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
    pgdata.chmod(0o700)
    _extract(base_dir / BASE_TAR, pgdata)
    wal_tar = base_dir / WAL_TAR
    if wal_tar.exists():
        (pgdata / "pg_wal").mkdir(exist_ok=True, mode=0o700)
        _extract(wal_tar, pgdata / "pg_wal")
    pgdata.chmod(0o700)
    for stale in ("standby.signal", "postmaster.pid"):
        (pgdata / stale).unlink(missing_ok=True)
    settings = {
        "restore_command": restore_command(wal_dir),
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
        # Nobody reads from a server being restored. With hot standby on, recovery refuses to start unless
        # max_connections, max_wal_senders, max_worker_processes... are at least the source's (a restore into a
        # server configured otherwise than the source: "recovery aborted because of insufficient parameter
        # settings"); off, the checks do not apply and connections are accepted from the promotion on.
        "hot_standby": "off",
    }
    if target_time is not None:
        settings["recovery_target_time"] = target_time.isoformat(sep=" ")
        settings["recovery_target_inclusive"] = "false"
    elif lsn is not None:
        settings["recovery_target_lsn"] = pg_wal.format_lsn(lsn)
        settings["recovery_target_inclusive"] = "false"
    with open(pgdata / "postgresql.auto.conf", "a") as f:
        f.write("".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items()))
    (pgdata / "recovery.signal").touch()
    return plan


def finish_restore(info: ConnectionInfo, timeout: float = 300.0) -> None:
    """Wait until the restored server has finished recovery and promoted, then remove the recovery settings
    :func:`restore` wrote (``ALTER SYSTEM RESET``): a standby cloned from this primary must not inherit
    them. Needs superuser (ALTER SYSTEM)."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            with _sql(info, min(10.0, max(1.0, deadline - time.monotonic()))) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    for name in RECOVERY_SETTINGS:
                        conn.execute(f"ALTER SYSTEM RESET {name}")
                    conn.execute("SELECT pg_reload_conf()")
                    return
                last_error = "still in recovery"
        except Exception as exc:  # not accepting connections yet
            last_error = _scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, info)
        time.sleep(0.5)
    raise PostgresBackupError(f"{info.endpoint} did not finish recovery within {timeout:.0f} s ({last_error})")
