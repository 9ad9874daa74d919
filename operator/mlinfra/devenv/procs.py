"""Child processes of the test platform: started in their own process group, always stopped.

Every process is started with ``start_new_session`` (so stopping it also stops whatever it forked, e.g.
PostgreSQL's backends) and with a parent-death signal (so a SIGKILLed pytest does not leave servers
behind). Every PID ever started is recorded in ``STARTED`` so tests can assert nothing survives.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# Process-group ids of every process started by this interpreter, for leak checks, and the pids of their
# descendants seen when they were stopped (which may have left the group with setsid()).
STARTED: list[int] = []
STARTED_CHILDREN: list[int] = []

_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A platform process did not come up; the message carries the tail of its log."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec (after any setuid, which would clear the setting).
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it, never a fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_until(what: str, check: Callable[[], bool], timeout: float, proc: Proc | None = None) -> None:
    """Poll ``check`` until it is true; fail with ``what`` (and the process log) at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.running():
            raise StartupError(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}"
                f"\n--- last lines of {proc.log_path} ---\n{proc.log_tail()}"
            )
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    tail = f"\n--- last lines of {proc.log_path} ---\n{proc.log_tail()}" if proc else ""
    raise StartupError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


class Proc:
    """One started process (and its process group), logging to a file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log_path, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                user=user,
                group=group,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        STARTED.append(self.popen.pid)
        log.info("started %s (pid %d), log %s", name, self.popen.pid, log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group and to every descendant: PostgreSQL's backends each call
        setsid(), so the group alone does not reach them (a SIGSTOP would freeze only the postmaster)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)
        for pid in descendants(self.popen.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left of it."""
        tree = descendants(self.popen.pid)
        STARTED_CHILDREN.extend(tree)
        self.signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
        # The leader may be gone while group members (forked children) linger.
        self.signal(signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        deadline = time.monotonic() + 5
        while group_alive(self.popen.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _stat(pid_dir: Path) -> list[str] | None:
    try:
        # After the command name (which may contain spaces): state, ppid, pgrp, ...
        return (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry)
            if fields is not None and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    fields = _stat(Path(f"/proc/{pid}"))
    return fields is not None and fields[0] != "Z"


def group_alive(pgid: int) -> bool:
    """True while any process of the process group ``pgid`` still exists (zombies excluded)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry)
            # fields[0] is the state, fields[2] the process group id.
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def leaked(pgids: Sequence[int] | None = None) -> list[int]:
    """Process groups started here that still have live members, and stopped descendants still alive."""
    groups = [p for p in (STARTED if pgids is None else pgids) if group_alive(p)]
    children = [p for p in STARTED_CHILDREN if pid_alive(p)] if pgids is None else []
    return groups + children


class ProcStack:
    """Processes stopped in reverse start order, as a context manager; safe to close twice."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self._cleanups: list[Callable[[], None]] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def callback(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def close(self) -> None:
        while self.procs:
            proc = self.procs.pop()
            try:
                proc.stop()
            except Exception:  # keep stopping the others
                log.exception("stopping %s failed", proc.name)
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception:
                log.exception("cleanup failed")

    def __enter__(self) -> ProcStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so ``with`` blocks unwind and stop their processes."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
