"""The real node's local images (mlinfra.devenv.images) import into containerd and run under runc.

A private containerd for this module only (its own config, root, state and sockets under a tmp dir; nothing
of the host's /var/lib/containerd or /run/containerd is used): each archive goes in with
``ctr images import``, a container runs from it with ``ctr run --rm`` and shows that the image holds what the
node's pods need. At the end containerd, its shims and its mounts must all be gone.

The first run builds the images (mmdebstrap and buildah: several minutes cold, see docs/images.md); later runs
reuse the cached archives.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlinfra.devenv.images import IMAGES, Image, build_images
from mlinfra.engines.render import PROFILES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

NAMESPACE = "k8s.io"
OPERATOR_UID = 10001


class Containerd:
    """containerd with everything under ``base``, for this test module only."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        self.config = base / "config.toml"
        self.log = base / "containerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.containers: set[str] = set()

    def start(self) -> None:
        self.config.write_text(f"""\
version = 2
root = "{self.base / "root"}"
state = "{self.base / "state"}"

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  # This VM forbids a negative oom_score_adj: unclamped, runc fails with "can't get final child's PID".
  restrict_oom_score_adj = true
""")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"containerd exited: {self.log.read_text()[-2000:]}"
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"containerd did not answer in 30 s: {self.log.read_text()[-2000:]}")

    def ctr(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ctr", "-a", str(self.socket), "-n", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert proc.returncode == 0, f"ctr {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
        return proc

    def run(self, image: Image, container: str, *command: str, timeout: float = 120) -> str:
        self.containers.add(container)
        proc = self.ctr("run", "--rm", "--net-host", image.ref, container, *command, timeout=timeout)
        return proc.stdout

    def import_image(self, image: Image) -> None:
        self.ctr("images", "import", str(image.archive))
        listed = self.ctr("images", "ls", "-q").stdout.split()
        assert image.ref in listed, f"{image.ref} not in containerd after import: {listed}"

    def processes(self) -> list[tuple[int, str]]:
        """containerd and its shims: every process whose command line names this instance's paths."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.base) in cmdline:
                found.append((int(entry.name), cmdline.strip()))
        return found

    def mounts(self) -> list[str]:
        prefix = str(self.base.resolve()) + "/"
        return [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)
        ]

    def shim_sockets(self) -> list[Path]:
        """The shims' sockets: containerd 1.6 puts them in /run/containerd/s/ whatever its state dir, named by
        sha256(address/namespace/id); a shim removes its own when it exits, a killed one leaves it."""
        paths = [
            Path("/run/containerd/s") / hashlib.sha256(f"{self.socket}/{NAMESPACE}/{c}".encode()).hexdigest()
            for c in sorted(self.containers)
        ]
        return [p for p in paths if p.exists()]

    def stop(self) -> list[str]:
        """Stop containerd, kill its shims, unmount what is left; return what still remains (nothing, if well)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # The shims outlive containerd by design (they keep containers running across its restarts).
        for pid, _ in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        for mountpoint in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", mountpoint], check=False, timeout=30, capture_output=True)
        sockets = self.shim_sockets()
        for path in sockets:
            path.unlink(missing_ok=True)
        return (
            [f"process {pid}: {cmd}" for pid, cmd in self.processes()]
            + [f"mount {m}" for m in self.mounts()]
            + [f"shim socket {p}" for p in sockets]
        )


@pytest.fixture(scope="module")
def images() -> dict[str, Image]:
    for tool in ("containerd", "ctr", "runc"):
        assert shutil.which(tool), f"{tool} missing: install the Debian package (e2e/tools/debian-packages.txt)"
    return build_images()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory, images: dict[str, Image]) -> Iterator[Containerd]:
    # A short path: containerd's sockets live below it, and a unix socket's path has at most 107 bytes.
    daemon = Containerd(tmp_path_factory.mktemp("ctrd"))
    daemon.start()
    try:
        for image in images.values():
            daemon.import_image(image)
        yield daemon
    finally:
        left = daemon.stop()
        if not left:
            # The unpacked snapshots are a gigabyte: do not leave them to pytest's tmp retention.
            shutil.rmtree(daemon.base, ignore_errors=True)


def test_every_image_has_an_exact_local_reference(images: dict[str, Image]) -> None:
    assert list(images) == list(IMAGES)
    for name, image in images.items():
        assert image.ref.startswith(f"localhost/mlinfra/{name}:"), image.ref
        key = image.ref.rsplit(":", 1)[1][-10:]  # the tag ends with the inputs' hash, so does the file name
        assert image.archive.is_file()
        assert image.archive.name == f"{name}-{key}.tar"


def test_a_warm_build_reuses_the_archives(images: dict[str, Image]) -> None:
    lines: list[str] = []
    started = time.monotonic()
    again = build_images(progress=lines.append)
    assert again == images
    assert time.monotonic() - started < 30, lines
    assert all("cached" in line for line in lines), lines


def test_redis_image(containerd: Containerd, images: dict[str, Image]) -> None:
    uid = PROFILES["redis"].uid
    out = containerd.run(
        images["redis"],
        "t-redis",
        "bash",
        "-c",
        "redis-server --version; redis-cli --version; id -u; id -g; id -un; stat -c %u:%g /var/lib/redis /data",
    )
    lines = out.splitlines()
    assert lines[0].startswith("Redis server v=7."), out
    assert lines[1].startswith("redis-cli 7."), out
    assert lines[2:5] == [str(uid), str(uid), "redis"], out
    assert lines[5:7] == [f"{uid}:{uid}"] * 2, out


def test_postgres_image_runs_initdb_as_the_profile_uid(containerd: Containerd, images: dict[str, Image]) -> None:
    uid = PROFILES["postgres"].uid
    out = containerd.run(
        images["postgres"],
        "t-postgres",
        "bash",
        "-c",
        "set -e; id -u; id -un; stat -c %u:%g /var/lib/postgresql /var/lib/postgresql/data;"
        " initdb -D /tmp/pgdata > /tmp/initdb.log 2>&1 || { cat /tmp/initdb.log; exit 1; };"
        " cat /tmp/pgdata/PG_VERSION; postgres --version",
        timeout=180,
    )
    lines = out.splitlines()
    assert lines[0:2] == [str(uid), "postgres"], out
    assert lines[2:4] == [f"{uid}:{uid}"] * 2, out
    assert lines[4] == "15", out
    assert lines[5].startswith("postgres (PostgreSQL) 15."), out


def test_python_image(containerd: Containerd, images: dict[str, Image]) -> None:
    out = containerd.run(images["python"], "t-python", "python", "-c", "import sys; print(sys.version)")
    assert out.startswith("3.11."), out


def test_operator_image_runs_the_cli_as_10001(containerd: Containerd, images: dict[str, Image]) -> None:
    out = containerd.run(images["operator"], "t-operator", "sh", "-c", "id -u; id -g; mlinfra version")
    lines = out.splitlines()
    assert lines[0:2] == [str(OPERATOR_UID)] * 2, out
    assert lines[2].strip(), out


def test_pause_image_stops_on_sigterm(containerd: Containerd, images: dict[str, Image]) -> None:
    container = "t-pause"
    containerd.containers.add(container)
    runner = subprocess.Popen(
        [
            "ctr",
            "-a",
            str(containerd.socket),
            "-n",
            NAMESPACE,
            "run",
            "--rm",
            "--net-host",
            images["pause"].ref,
            container,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while "RUNNING" not in containerd.ctr("tasks", "ls", check=False).stdout:
            assert runner.poll() is None, f"pause exited early: {runner.communicate()}"
            assert time.monotonic() < deadline, "the pause container did not start in 60 s"
            time.sleep(0.2)
        time.sleep(0.5)
        assert runner.poll() is None, "pause did not keep running"
        started = time.monotonic()
        containerd.ctr("tasks", "kill", "--signal", "SIGTERM", container)
        out, err = runner.communicate(timeout=15)
        assert time.monotonic() - started < 5, "pause took more than 5 s to stop on SIGTERM"
        assert runner.returncode == 0, (out, err)
    finally:
        if runner.poll() is None:
            containerd.ctr("tasks", "kill", "--signal", "SIGKILL", container, check=False)
            runner.kill()
            runner.wait(timeout=10)


def test_containerd_stops_without_leftovers(containerd: Containerd) -> None:
    assert containerd.ctr("containers", "ls", "-q").stdout.split() == []
    assert containerd.stop() == []
