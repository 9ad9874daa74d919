"""The Debian packages a fresh machine needs: e2e/tools/debian-packages.txt, installed (as root) or asked for
(otherwise) by e2e/tools/system-deps.sh, which `make test`/`make demo` run first.

Nothing is installed here: the script's hooks (SYSTEM_DEPS_FILE, SYSTEM_DEPS_AS_ROOT, SYSTEM_DEPS_DRY_RUN) take
the install paths with a package that does not exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mlinfra.devenv import tools

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "e2e" / "tools" / "debian-packages.txt"
SCRIPT = ROOT / "e2e" / "tools" / "system-deps.sh"
FAKE = "mlinfra-no-such-package"
# The platform's needs as the issue lists them: dropping one from the file must be deliberate.
REQUIRED = {
    "redis-server",
    "postgresql",
    "postgresql-contrib",
    "openjdk-17-jdk-headless",
    "maven",
    "ca-certificates",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "mmdebstrap",
    "buildah",
    "umoci",
    "skopeo",
    "socat",
    "iptables",
    "iproute2",
    "conntrack",
    "util-linux",
    "gcc",
    "libc6-dev",
}

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian machine")


def _packages() -> dict[str, str]:
    """package -> the comment saying what needs it."""
    found: dict[str, str] = {}
    for line in PACKAGES.read_text().splitlines():
        name, _, why = line.partition("#")
        if name.strip():
            found[name.strip()] = why.strip()
    return found


def _listing(tmp_path: Path, text: str) -> str:
    path = tmp_path / "packages.txt"
    path.write_text(text)
    return str(path)


def _run(**env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEM_DEPS_")} | env
    return subprocess.run(
        ["bash", str(SCRIPT)], env=full, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_package_list_parses_one_commented_package_per_line() -> None:
    packages = _packages()
    assert set(packages) >= REQUIRED
    for name, why in packages.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name), name
        assert why, f"{name}: say what needs it"
    lines = [ln.partition("#")[0].split() for ln in PACKAGES.read_text().splitlines()]
    assert all(len(words) <= 1 for words in lines)


def test_which_names_packages_of_the_list() -> None:
    assert set(tools.DEBIAN_PACKAGE_OF.values()) <= set(_packages())


def test_which_error_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FileNotFoundError, match=r"sudo apt-get install mmdebstrap`, or `make system-deps`"):
        tools.which("mmdebstrap")


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@needs_dpkg
def test_everything_installed_exits_at_once() -> None:
    # The real list against this machine, as `make test` runs it (the platform's tests need every package).
    # As non-root the mlinfra-pg user is not needed, so the check is the whole run, wherever this runs.
    start = time.monotonic()
    result = _run(SYSTEM_DEPS_AS_ROOT="0")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"== system-deps: all {len(_packages())} Debian packages of e2e/tools/debian-packages.txt are installed"
    ]
    assert elapsed < 2  # ~0.02 s warm; generous for a loaded machine


@needs_dpkg
def test_not_root_prints_the_exact_install_command(tmp_path: Path) -> None:
    result = _run(
        SYSTEM_DEPS_AS_ROOT="0",
        SYSTEM_DEPS_FILE=_listing(tmp_path, f"ca-certificates   # installed\n{FAKE}   # a test\n"),
    )
    assert result.returncode == 1
    assert f"{FAKE} (a test)" in result.stderr
    command = f"sudo apt-get update && sudo apt-get install -y --no-install-recommends {FAKE}"
    assert command in result.stderr.splitlines()[-1]
    assert "ca-certificates" not in result.stderr


@needs_dpkg
def test_root_installs_only_what_is_missing_without_asking(tmp_path: Path) -> None:
    result = _run(
        SYSTEM_DEPS_AS_ROOT="1",
        SYSTEM_DEPS_DRY_RUN="1",
        SYSTEM_DEPS_FILE=_listing(tmp_path, f"ca-certificates\n{FAKE} # a test\n"),
    )
    assert result.returncode == 0, result.stderr
    would = [ln.split("would run: ", 1)[1] for ln in result.stdout.splitlines() if "would run: " in ln]
    assert any(cmd.startswith("apt-get ") and cmd.endswith(" update -qq") for cmd in would)
    install = [cmd for cmd in would if " install " in cmd]
    assert len(install) == 1
    assert install[0].endswith(f"install -y -qq --no-install-recommends {FAKE}")
    assert "DPkg::Lock::Timeout=" in install[0]
    assert f"{FAKE} (a test)" in result.stdout


def test_bad_list_line_is_refused(tmp_path: Path) -> None:
    result = _run(SYSTEM_DEPS_AS_ROOT="0", SYSTEM_DEPS_FILE=_listing(tmp_path, "redis-server postgresql\n"))
    assert result.returncode == 1
    assert "expected one package name" in result.stderr


def _prerequisites(target: str) -> list[str]:
    database = subprocess.run(
        ["make", "-n", "-p", "-f", str(ROOT / "Makefile"), "-C", str(ROOT), "lock"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    match = re.search(rf"^{re.escape(target)}:(.*)$", database, re.MULTILINE)
    assert match, target
    return match.group(1).split()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("target", ["test", "demo", "tools", "integration", "e2e", "cluster-up"])
def test_make_targets_check_system_packages_first(target: str) -> None:
    prerequisites = _prerequisites(target)
    if target == "tools":
        assert prerequisites == ["system-deps"]
    else:
        assert prerequisites[0] == "system-deps"
        assert prerequisites.index("system-deps") < prerequisites.index("tools")
