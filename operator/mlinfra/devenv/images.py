"""The container images of the local platform's real node, built on this machine from the package registries.

The real node (kubelet + containerd, ``mlinfra.devenv.realnode``) can pull nothing from a container registry,
so every image its pods run is built here: the pod sandbox (``pause``, our own ``e2e/images/pause.c``), the
engines (``redis``, ``postgres``: Debian bookworm rootfs from ``mmdebstrap``; ``neo4j``: the same with Java 17,
plus Neo4j's jars from the tools cache and our launchers), ``python`` (the stand-in for
the Dockerfile's ``python:3.11.x-slim-bookworm`` base) and ``operator`` (our own Dockerfile, built by
``buildah`` on top of the local ``python`` image). Each one is a docker-archive tarball that
``ctr -n k8s.io images import`` accepts, tagged ``localhost/mlinfra/<name>:<version>-<key>``, where ``key``
hashes the build's inputs: a changed input gives a new reference, so pods can use the exact tag with
``imagePullPolicy: IfNotPresent`` (or ``Never``) and never run a stale image.

Callers: ``realnode`` (imports the archives into its containerd), ``tests/integration/test_images.py``, and by
hand ``python -m mlinfra.devenv.images [NAME...]`` (prints ``name ref archive`` lines). Archives are cached
in ``cache_dir()/images/<name>-<key>.tar``; a warm call of all of them takes about a second. See
docs/images.md. Building needs root (mmdebstrap's root mode, chroot, buildah), the Debian packages
``mmdebstrap``, ``gcc``/``libc6-dev`` and ``buildah``, and for ``neo4j`` the jars of ``make tools``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mlinfra.api.datastore import Engine
from mlinfra.devenv import mounts
from mlinfra.devenv.tools import cache_dir, find_tools, repo_root
from mlinfra.engines.render import PROFILES

# Bump when the way an image is built changes in a way its inputs below do not show (a new mmdebstrap option,
# another image config field, ...): every image then gets a new key, hence a new reference.
RECIPE = "2"

IMAGES: tuple[str, ...] = ("pause", "redis", "postgres", "python", "neo4j", "operator")

REGISTRY = "localhost/mlinfra"
SUITE = "bookworm"
MIRRORS: tuple[str, ...] = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a container never reads; dropping it makes the images a third smaller.
_DPKG_EXCLUDES: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
_KEY_HEX = 10
_ARCHIVE_RE = rf"-[0-9a-f]{{{_KEY_HEX}}}\.tar"

# Generous: a cold mmdebstrap takes about a minute, the operator's pip install about as long.
_MMDEBSTRAP_TIMEOUT = 1200.0
_BUILDAH_TIMEOUT = 1800.0
_SHORT_TIMEOUT = 300.0


class ImageBuildError(RuntimeError):
    """An image could not be built (a missing tool, or a failed step: the message names its log)."""


@dataclass(frozen=True)
class Image:
    name: str  # "pause", "redis", "postgres", "python", "neo4j", "operator"
    ref: str  # "localhost/mlinfra/redis:7.0.15-<10 hex>"
    archive: Path  # docker-archive tar in cache_dir()/images/


@dataclass(frozen=True)
class _Debian:
    """A Debian bookworm image: mmdebstrap's minbase plus the packages listed in e2e/images/<name>.packages."""

    version_of: str  # the package whose upstream version starts the tag
    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = "/"
    engine: Engine | None = None  # the pods run as PROFILES[engine].uid: its service user gets that uid
    service_user: str | None = None
    dirs: tuple[str, ...] = ()  # "PATH[:MODE]" owned by the service user (see e2e/images/service-user.sh)
    hook: str | None = None  # e2e/images/<hook>: more customisation, run after the service user's


@dataclass(frozen=True)
class _Neo4j(_Debian):
    """The Debian image with Java, plus Neo4j, which is no Debian package (a subclass: the other images' keys,
    which hash ``repr(spec)``, stay as they were).

    No registry reachable here serves Neo4j's distribution tarball, but ``e2e/tools/build.sh`` fetches its jars
    from Maven Central (``find_tools().neo4j_classpath``). They become ``home``/lib; ``home``/bin/neo4j and
    neo4j-admin are copies of ``e2e/images/neo4j.launcher.sh``, which starts Neo4j's own bootloader the way
    the distribution's scripts do. No package creates the service user: the build adds it with the uid.
    """

    home: str = "/var/lib/neo4j"  # NEO4J_HOME: root's, read-only to the server (but run/)
    launchers: tuple[str, ...] = ("neo4j", "neo4j-admin")
    empty_dirs: tuple[str, ...] = ("conf", "import", "plugins")  # under home, root's
    links: tuple[tuple[str, str], ...] = (("data", "/data"), ("logs", "/logs"))  # under home, as the official
    # image has them: a plain `neo4j console` with no neo4j.conf writes to the same places as the pods


_DEBIAN: Mapping[str, _Debian] = {
    "redis": _Debian(
        version_of="redis-server",
        env=(f"PATH={_DEFAULT_PATH}", "LANG=C.UTF-8"),
        cmd=("redis-server",),
        workdir="/data",
        engine="redis",
        service_user="redis",
        dirs=("/data:0750", "/var/lib/redis", "/var/log/redis", "/var/run/redis"),
    ),
    "postgres": _Debian(
        version_of="postgresql-15",
        env=(f"PATH=/usr/lib/postgresql/15/bin:{_DEFAULT_PATH}", "LANG=C.UTF-8", "PGDATA=/var/lib/postgresql/data"),
        cmd=("postgres",),
        engine="postgres",
        service_user="postgres",
        dirs=(
            "/var/lib/postgresql",
            "/var/lib/postgresql/data:0700",
            "/var/run/postgresql:2775",
            "/var/log/postgresql",
        ),
        hook="postgres.hook.sh",
    ),
    "python": _Debian(version_of="python3.11", env=(f"PATH={_DEFAULT_PATH}", "LANG=C.UTF-8"), cmd=("python3",)),
    # The pods run start.sh (docs/datastore-images.md); Cmd is for running the image by hand.
    "neo4j": _Neo4j(
        version_of="openjdk-17-jre-headless",
        env=(f"PATH=/var/lib/neo4j/bin:{_DEFAULT_PATH}", "LANG=C.UTF-8", "NEO4J_HOME=/var/lib/neo4j"),
        cmd=("neo4j", "console"),
        workdir="/var/lib/neo4j",
        engine="neo4j",
        service_user="neo4j",
        # start.sh's run directory (the pod mounts memory there), the data and logs volumes' mount points,
        # and NEO4J_HOME/run (server.directories.run when no rendered neo4j.conf says otherwise).
        dirs=("/data:0750", "/logs", "/run/mlinfra:0700", "/var/lib/neo4j/run"),
    ),
}


def images_dir() -> Path:
    return cache_dir() / "images"


def _inputs_dir() -> Path:
    return repo_root() / "e2e" / "images"


# --- the public entry point ------------------------------------------------------------------------------


def build_images(names: Sequence[str] | None = None, *, progress: Callable[[str], None] = print) -> dict[str, Image]:
    """Every requested image (all of IMAGES when ``names`` is None), building whatever is missing first.

    Images a requested one is built on (``operator`` on ``python``) are built too, but only the requested ones
    are returned. Builds by concurrent callers are serialised by a lock file in the cache.
    """
    wanted = list(IMAGES) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in IMAGES]
    if unknown:
        raise ValueError(f"unknown image(s) {unknown}: choose from {list(IMAGES)}")
    needed = set(wanted) | ({"python"} if "operator" in wanted else set())
    images_dir().mkdir(parents=True, exist_ok=True)
    built: dict[str, Image] = {}
    with _lock(progress):
        for name in IMAGES:
            if name in needed:
                built[name] = _ensure(name, built, progress)
    return {name: built[name] for name in wanted}


@contextlib.contextmanager
def _lock(progress: Callable[[str], None]) -> Iterator[None]:
    with open(images_dir() / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("images: another build holds the cache's lock: waiting")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure(name: str, built: Mapping[str, Image], progress: Callable[[str], None]) -> Image:
    key = _key(name, built)
    archive = images_dir() / f"{name}-{key}.tar"
    if archive.exists():
        ref = _archive_ref(archive)
        if ref is not None:
            progress(f"images: {name}: cached {ref}")
            return Image(name, ref, archive)
        progress(f"images: {name}: {archive} is unreadable: rebuilding it")
        archive.unlink()
    steps = _Steps(name, progress)
    work = images_dir() / "work" / name
    _remove_tree(work)  # a killed build's leftovers
    work.mkdir(parents=True)
    tmp = images_dir() / f".{name}-{key}.tar.tmp"
    try:
        if name == "pause":
            ref = _build_pause(key, work, tmp, steps)
        elif name == "operator":
            ref = _build_operator(key, built["python"], work, tmp, steps)
        else:
            ref = _build_debian(name, _DEBIAN[name], key, work, tmp, steps)
        # Only a complete archive gets the name that marks it done.
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
        _remove_tree(work)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # only when empty: another image's build may be using it
    for old in images_dir().glob(f"{name}-*.tar"):
        if old != archive and re.fullmatch(re.escape(name) + _ARCHIVE_RE, old.name):
            old.unlink()
    progress(f"images: {name}: built {ref} ({archive.stat().st_size / 2**20:.0f} MiB) in {steps.total():.0f} s")
    return Image(name, ref, archive)


# --- cache keys ------------------------------------------------------------------------------------------


def _key(name: str, built: Mapping[str, Image]) -> str:
    """A short hash of everything the image is built from, so a changed input gives a new tag."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        # Length-prefixed, so no two different input sets can concatenate to the same bytes.
        for part in (label.encode(), data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)

    add("recipe", RECIPE.encode())
    add("name", name.encode())
    add("arch", _arch().encode())
    images = _inputs_dir()
    if name == "pause":
        add("pause.c", (images / "pause.c").read_bytes())
    elif name == "operator":
        root = repo_root()
        add("base", built["python"].ref.encode())
        for rel in ("Dockerfile", ".dockerignore", "pyproject.toml", "requirements.lock", "README.md"):
            add(rel, (root / rel).read_bytes())
        for path in _operator_sources(root):
            add(path.relative_to(root).as_posix(), path.read_bytes())
    else:
        spec = _DEBIAN[name]
        add("spec", repr(spec).encode())
        add("suite", SUITE.encode())
        add("mirrors", "\n".join(MIRRORS).encode())
        add("dpkg", "\n".join(_DPKG_EXCLUDES).encode())
        add("packages", (images / f"{name}.packages").read_bytes())
        if spec.engine is not None:
            add("uid", str(PROFILES[spec.engine].uid).encode())
            add("service-user.sh", (images / "service-user.sh").read_bytes())
        if spec.hook is not None:
            add(spec.hook, (images / spec.hook).read_bytes())
        if isinstance(spec, _Neo4j):
            add("neo4j.launcher.sh", (images / "neo4j.launcher.sh").read_bytes())
            # The jars' names hold their versions; a size catches a jar rebuilt under the same name.
            add("jars", "\n".join(f"{jar.name} {jar.stat().st_size}" for jar in _neo4j_jars()[1]).encode())
    return digest.hexdigest()[:_KEY_HEX]


def _neo4j_jars() -> tuple[str, list[Path]]:
    """(Neo4j's version, its jars): the dependency directory of the tools cache's Neo4j classpath."""
    classpath = find_tools().neo4j_classpath  # never builds the tools: another run may be building them
    dirs = [Path(entry[:-2]) for entry in classpath.split(os.pathsep) if entry.endswith("/*")]
    jars = sorted(jar for d in dirs if d.is_dir() for jar in d.glob("*.jar"))
    versions = [m.group(1) for jar in jars if (m := re.fullmatch(r"neo4j-([0-9]+(?:\.[0-9]+)+)\.jar", jar.name))]
    if len(versions) != 1:
        raise ImageBuildError(
            "the neo4j image needs the Neo4j jars of the tools cache (run `make tools`, or "
            f"e2e/tools/build.sh neo4j); found {len(jars)} jars in {dirs or classpath!r}"
        )
    return versions[0], jars


def _operator_sources(root: Path) -> list[Path]:
    """The files of operator/ that the Dockerfile's context holds (.dockerignore drops caches and egg-info)."""
    found = []
    for path in sorted((root / "operator").rglob("*")):
        parts = path.relative_to(root).parts
        if (
            path.is_file()
            and "__pycache__" not in parts
            and not any(p.endswith(".egg-info") for p in parts)
            and path.suffix not in (".pyc", ".pyo", ".pyd")
        ):
            found.append(path)
    return found


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# --- the three kinds of build ----------------------------------------------------------------------------


def _build_pause(key: str, work: Path, tmp: Path, steps: _Steps) -> str:
    gcc = _require("gcc", "gcc")
    binary = work / "pause"
    with steps.step("gcc -Os -static pause.c"):
        _run(
            [str(gcc), "-Os", "-static", "-s", "-Wall", "-Wextra", "-o", str(binary), str(_inputs_dir() / "pause.c")],
            steps,
            timeout=_SHORT_TIMEOUT,
            hint="a static binary needs libc6-dev (libc.a)",
        )
    layer = work / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        info.mode = 0o755
        with binary.open("rb") as data:
            tar.addfile(info, data)
    ref = f"{REGISTRY}/pause:{key}"
    # 65535, like Kubernetes' pause image: the sandbox needs no privilege (and no passwd entry: static).
    config = {"Entrypoint": ["/pause"], "Env": [f"PATH={_DEFAULT_PATH}"], "User": "65535:65535", "WorkingDir": "/"}
    with steps.step("docker-archive"):
        _write_docker_archive(tmp, ref, layer, config)
    return ref


def _build_debian(name: str, spec: _Debian, key: str, work: Path, tmp: Path, steps: _Steps) -> str:
    mmdebstrap = _require("mmdebstrap", "mmdebstrap")
    if os.geteuid() != 0:
        raise ImageBuildError(f"building the {name} image needs root (mmdebstrap --mode=root, chroot)")
    packages = _package_list(_inputs_dir() / f"{name}.packages")
    images = _inputs_dir()
    version_file = work / "version"
    hooks: list[str] = []
    uid: int | None = None
    version: str | None = None
    if spec.engine is not None:
        if spec.service_user is None:
            raise ValueError(f"image {name}: an engine image names its service user")
        uid = PROFILES[spec.engine].uid
        if isinstance(spec, _Neo4j):
            hooks.append(_add_user_hook(spec.service_user, uid, spec.home))
        hooks.append(
            " ".join(
                [
                    "sh",
                    shlex.quote(str(images / "service-user.sh")),
                    '"$1"',
                    shlex.quote(spec.service_user),
                    str(uid),
                    *map(shlex.quote, spec.dirs),
                ]
            )
        )
    if isinstance(spec, _Neo4j):
        version, jars = _neo4j_jars()
        staged = _stage_neo4j_home(spec, jars, work / "neo4j-home")
        # sync-in: mmdebstrap's own copy into the chroot (symlinks stay links, never followed on the host).
        hooks += [
            f'chroot "$1" mkdir -p {shlex.quote(spec.home)}',
            f"sync-in {shlex.quote(str(staged))} {shlex.quote(spec.home)}",
        ]
    if spec.hook is not None:
        hooks.append(f'sh {shlex.quote(str(images / spec.hook))} "$1"')
    hooks.append(
        f"chroot \"$1\" dpkg-query -W -f='${{Version}}' {shlex.quote(spec.version_of)}"
        f" > {shlex.quote(str(version_file))}"
    )
    rootfs = work / "rootfs.tar"
    # Java's postinst registers alternatives whose man-page links live in /usr/share/man/man1, which the dpkg
    # excludes leave uncreated: update-alternatives then fails ("error creating symbolic link").
    before_packages = ['mkdir -p "$1/usr/share/man/man1"'] if isinstance(spec, _Neo4j) else []
    command = [
        str(mmdebstrap),
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        f"--include={','.join(packages)}",
        *(f"--essential-hook={hook}" for hook in before_packages),
        # The package registry may serve a snapshot whose Release files are past their Valid-Until.
        '--aptopt=Acquire::Check-Valid-Until "false"',
        # Keep what the hooks create under /run (e.g. /var/run/postgresql): mmdebstrap empties it by default,
        # and under Kubernetes /run is the image's own directory, not a tmpfs.
        "--skip=cleanup/run",
        # merged /usr set up by mmdebstrap, with the empty usr-is-merged marker package: otherwise apt meets
        # init-system-helpers' "usrmerge | usr-is-merged" with usrmerge, and Perl (45 MB) comes with it.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        *(f"--dpkgopt={rule}" for rule in _DPKG_EXCLUDES),
        *(f"--customize-hook={hook}" for hook in hooks),
        SUITE,
        str(rootfs),
        *MIRRORS,
    ]
    with steps.step(f"mmdebstrap {SUITE} minbase + {' '.join(packages)}"):
        _run(command, steps, timeout=_MMDEBSTRAP_TIMEOUT)
    if version is None:
        version = _upstream_version(version_file.read_text())
    if spec.service_user is not None and uid is not None:
        _check_passwd(rootfs, spec.service_user, uid)
    ref = f"{REGISTRY}/{name}:{version}-{key}"
    config: dict[str, Any] = {"Env": list(spec.env), "Cmd": list(spec.cmd), "WorkingDir": spec.workdir}
    if uid is not None:
        # Numeric, so runAsNonRoot can verify it; the pods set the same uid anyway.
        config["User"] = f"{uid}:{uid}"
    with steps.step("docker-archive"):
        _write_docker_archive(tmp, ref, rootfs, config)
    return ref


def _add_user_hook(user: str, uid: int, home: str) -> str:
    """A customize hook adding ``user`` and its group with ``uid`` (no package of the image creates them)."""
    q = shlex.quote
    taken = " || ".join(
        f'chroot "$1" getent {db} {q(key)} >/dev/null'
        for db, key in (("passwd", user), ("passwd", str(uid)), ("group", user), ("group", str(uid)))
    )
    return (
        f'if {taken}; then echo "{user} or id {uid} is taken in the image" >&2; exit 1; fi; '
        f'echo {q(f"{user}:x:{uid}:")} >> "$1/etc/group"; '
        f'echo {q(f"{user}:x:{uid}:{uid}:{user}:{home}:/usr/sbin/nologin")} >> "$1/etc/passwd"'
    )


def _stage_neo4j_home(spec: _Neo4j, jars: Sequence[Path], staged: Path) -> Path:
    """NEO4J_HOME as the image holds it, owned by root: lib/ (the jars), bin/ (the launchers), the empty
    directories and the links. Copied into the rootfs by mmdebstrap's sync-in."""
    lib, bin_dir = staged / "lib", staged / "bin"
    for directory in (staged, lib, bin_dir, *(staged / d for d in spec.empty_dirs)):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
    for jar in jars:
        shutil.copyfile(jar, lib / jar.name)
        (lib / jar.name).chmod(0o644)
    launcher = _inputs_dir() / "neo4j.launcher.sh"
    for name in spec.launchers:
        shutil.copyfile(launcher, bin_dir / name)
        (bin_dir / name).chmod(0o755)
    for link, target in spec.links:
        (staged / link).symlink_to(target)
    return staged


def _build_operator(key: str, python: Image, work: Path, tmp: Path, steps: _Steps) -> str:
    buildah = _require("buildah", "buildah")
    if os.geteuid() != 0:
        raise ImageBuildError("building the operator image needs root (buildah, chroot isolation)")
    root = repo_root()
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    ref = f"{REGISTRY}/operator:{version}-{key}"
    # A storage of its own, fresh every build: nothing under /var/lib/containers, and nothing (a killed
    # build's mounts, stale layers) carried from one build to the next. vfs: no overlay mounts to leak.
    store = cache_dir() / "buildah"
    _remove_tree(store)
    base = [str(buildah), "--root", str(store / "storage"), "--runroot", str(store / "run"), "--storage-driver", "vfs"]
    env = {**os.environ, "TMPDIR": str(work), "BUILDAH_ISOLATION": "chroot"}
    try:
        with steps.step(f"buildah pull {python.ref}"):
            image_id = (
                _run(
                    [*base, "pull", "--quiet", f"docker-archive:{python.archive}"],
                    steps,
                    timeout=_SHORT_TIMEOUT,
                    env=env,
                )
                .strip()
                .splitlines()[-1]
            )
            _run([*base, "tag", image_id, python.ref], steps, timeout=_SHORT_TIMEOUT, env=env)
        with steps.step("buildah bud Dockerfile (pip install from PyPI)"):
            _run(
                [
                    *base,
                    "bud",
                    "--isolation",
                    "chroot",
                    "--network",
                    "host",
                    "--pull=never",
                    "--layers=false",
                    "--format",
                    "docker",
                    "--build-arg",
                    f"BASE_IMAGE={python.ref}",
                    *_pip_access(work),
                    "-f",
                    str(root / "Dockerfile"),
                    "-t",
                    ref,
                    str(root),
                ],
                steps,
                timeout=_BUILDAH_TIMEOUT,
                env=env,
            )
        with steps.step("buildah push docker-archive"):
            _run([*base, "push", "--quiet", ref, f"docker-archive:{tmp}:{ref}"], steps, timeout=_SHORT_TIMEOUT, env=env)
    finally:
        _remove_tree(store)
    return ref


def _pip_access(work: Path) -> list[str]:
    """``buildah bud`` volumes that let pip inside the build reach PyPI the way it does on this host.

    The host may trust a CA of its own (a TLS-inspecting egress): its bundle is mounted over the image's, and
    an index configured by PIP_* variables goes into a pip.conf. Read at build time and never written into a
    committed file or the final image (the volumes exist only while RUN steps run; pip runs in the builder
    stage, which the final image does not keep).
    """
    volumes: list[str] = []
    bundle = next(
        (
            Path(p)
            for p in (
                os.environ.get("PIP_CERT"),
                os.environ.get("SSL_CERT_FILE"),
                os.environ.get("REQUESTS_CA_BUNDLE"),
                "/etc/ssl/certs/ca-certificates.crt",
            )
            if p and Path(p).is_file()
        ),
        None,
    )
    if bundle is not None:
        volumes += ["--volume", f"{bundle.resolve()}:/etc/ssl/certs/ca-certificates.crt:ro"]
    settings = {
        "index-url": os.environ.get("PIP_INDEX_URL"),
        "extra-index-url": os.environ.get("PIP_EXTRA_INDEX_URL"),
        "trusted-host": os.environ.get("PIP_TRUSTED_HOST"),
        "timeout": os.environ.get("PIP_DEFAULT_TIMEOUT"),
    }
    lines = [f"{k} = {v}" for k, v in settings.items() if v]
    if lines:
        conf = work / "pip.conf"
        conf.write_text("\n".join(["[global]", *lines]) + "\n")
        volumes += ["--volume", f"{conf}:/etc/pip.conf:ro"]
    return volumes


# --- helpers ---------------------------------------------------------------------------------------------


class _Steps:
    """Progress lines with elapsed seconds, and the log every subprocess of one image writes to."""

    def __init__(self, name: str, progress: Callable[[str], None]) -> None:
        self.name = name
        self.progress = progress
        self.started = time.monotonic()
        self.log = images_dir() / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        self.progress(f"images: {self.name}: {what} ...")
        yield
        self.progress(f"images: {self.name}: {what}: {time.monotonic() - started:.1f} s")

    def total(self) -> float:
        return time.monotonic() - self.started


def _require(tool: str, package: str) -> Path:
    found = shutil.which(tool)
    if found is None:
        raise ImageBuildError(f"{tool} not found: install the Debian package {package} (apt-get install {package})")
    return Path(found)


def _run(
    command: Sequence[str], steps: _Steps, *, timeout: float, env: Mapping[str, str] | None = None, hint: str = ""
) -> str:
    """Run ``command`` with its stderr (and stdout) appended to the image's log; return its stdout.

    Its own process group, so a timeout kills what it started too (mmdebstrap's apt, buildah's RUN steps).
    """
    with steps.log.open("a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            raise ImageBuildError(
                f"{steps.name}: {command[0]} timed out after {timeout:.0f} s (log: {steps.log})"
            ) from None
        except BaseException:  # Ctrl-C, SystemExit from SIGTERM: the group would go on building unwatched
            _stop_group(proc)
            raise
        log.write(out)
    if proc.returncode != 0:
        tail = "\n".join(steps.log.read_text().splitlines()[-25:])
        raise ImageBuildError(
            f"{steps.name}: {shlex.join(command[:3])} ... exited {proc.returncode}"
            f"{' (' + hint + ')' if hint else ''}; log {steps.log}, ending:\n{tail}"
        )
    return out


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM first: mmdebstrap and buildah then unmount what they mounted (SIGKILL would leave the mounts)."""
    for signo, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signo)
        try:
            proc.communicate(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _package_list(path: Path) -> list[str]:
    packages = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [p for p in packages if p]


def _upstream_version(debian_version: str) -> str:
    """'5:7.0.15-1~deb12u10' -> '7.0.15': no epoch, no Debian revision, only characters a tag may hold."""
    version = debian_version.strip().split(":", 1)[-1].rsplit("-", 1)[0]
    match = re.match(r"[0-9A-Za-z.]+", version)
    if match is None:
        raise ImageBuildError(f"cannot read an upstream version from {debian_version!r}")
    return match.group(0)


def _check_passwd(rootfs: Path, user: str, uid: int) -> None:
    """The service user's passwd entry in the finished rootfs has the profile's uid and gid."""
    with tarfile.open(rootfs) as tar:
        member = tar.extractfile("./etc/passwd")
        entries = member.read().decode().splitlines() if member else []
    fields = next((e.split(":") for e in entries if e.startswith(f"{user}:")), None)
    if fields is None or fields[2:4] != [str(uid), str(uid)]:
        raise ImageBuildError(f"/etc/passwd of the image has {fields} for {user}, not uid and gid {uid}")


def _write_docker_archive(dest: Path, ref: str, layer: Path, config: Mapping[str, Any]) -> None:
    """A one-layer docker-archive (``docker save`` format): manifest.json, the image config, the layer tar.

    manifest.json goes first, so reading the reference back (``_archive_ref``) stops after one header.
    """
    diff_id = _sha256_file(layer)
    image_config = {
        "architecture": _arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "mlinfra.devenv.images"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    layer_name = f"{diff_id}/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]).encode()
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "manifest.json", manifest)
        _add_bytes(tar, config_name, config_bytes)
        directory = tarfile.TarInfo(diff_id)
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        tar.addfile(directory)
        info = tarfile.TarInfo(layer_name)
        info.size = layer.stat().st_size
        info.mode = 0o644
        with layer.open("rb") as data:
            tar.addfile(info, data)
        _add_bytes(tar, "repositories", json.dumps({ref.rsplit(":", 1)[0]: {ref.rsplit(":", 1)[1]: diff_id}}).encode())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _archive_ref(archive: Path) -> str | None:
    """The RepoTags[0] of a docker-archive, or None when the file is not a readable one."""
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.name in ("manifest.json", "./manifest.json"):
                    handle: IO[bytes] | None = tar.extractfile(member)
                    manifest = json.loads(handle.read()) if handle else []
                    tags = manifest[0].get("RepoTags") or []
                    return str(tags[0]) if tags else None
    except (OSError, tarfile.TarError, ValueError, IndexError, KeyError):
        return None
    return None


def _remove_tree(path: Path) -> None:
    """rm -rf, after unmounting whatever a killed build left mounted below it (never delete through a mount)."""
    if not path.exists():
        return
    left = mounts.unmount_under(path)
    if left:
        raise ImageBuildError(f"cannot clean {path}: still mounted below it: {left}")
    shutil.rmtree(path)


def _exit_on_sigterm(signo: int, _frame: object) -> None:
    raise SystemExit(128 + signo)  # unwinds, so the cleanup in _run and _ensure runs


def main(argv: Sequence[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or None
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        images = build_images(names, progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (ImageBuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for image in images.values():
        print(image.name, image.ref, image.archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
