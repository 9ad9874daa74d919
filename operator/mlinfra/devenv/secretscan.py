"""The suite's secret scan: no password the platform or the operator made may appear in a log line, an event or
a status, during the whole test run.

What is secret is collected as the run goes: the platform's own passwords (PostgreSQL, Redis, Neo4j, as their
fixtures start them) and the values of every password-like key of every Secret in a test's namespace, read just
before the namespace is deleted (:func:`audit_namespace`). Events, the mlinfra objects' statuses and, on the
real node, every container's log (the databases' own logs, the sync Jobs') are checked at that moment too (they
vanish with the namespace); the log files of the run (the servers', the control plane's, the operator's) are
scanned when the session ends. A finding names the place (file and line, or the object), never the value.

Only values of at least :data:`MIN_LENGTH` characters are tracked: generated passwords are 32; short test
strings ("wrong-password") would match innocent text.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlinfra.devenv.controlplane import ControlPlane

log = logging.getLogger(__name__)

MIN_LENGTH = 16
# Keys of Secret data whose values are secrets; other keys (username, host, port, database) are not.
SECRET_KEY_PARTS = ("password", "api-key", "apikey", "token", "secret")
LOG_SUFFIXES = (".log",)

_secrets: set[str] = set()
findings: list[str] = []


def track(value: str | None) -> None:
    """Remember ``value`` as a secret for the rest of the run."""
    if value and len(value) >= MIN_LENGTH:
        _secrets.add(value)


def tracked() -> frozenset[str]:
    return frozenset(_secrets)


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def track_secret_data(data: Mapping[str, str]) -> None:
    """Track the password-like values of a Secret's decoded data."""
    for key, value in data.items():
        if is_secret_key(key):
            track(value)


def find_in_text(text: str, secrets: Iterable[str] | None = None) -> bool:
    return any(value in text for value in (secrets if secrets is not None else _secrets))


def scan_files(root: Path, secrets: Iterable[str] | None = None) -> list[str]:
    """``path:line`` of every log line under ``root`` that carries a tracked secret."""
    values = tuple(secrets if secrets is not None else _secrets)
    if not values or not root.exists():
        return []
    hits: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(LOG_SUFFIXES)):
        try:
            with path.open("rb") as handle:
                for number, raw in enumerate(handle, 1):
                    line = raw.decode("utf-8", errors="replace")
                    if any(value in line for value in values):
                        hits.append(f"{path}:{number}")
        except OSError as exc:
            log.warning("secret scan: cannot read %s: %s", path, exc)
    return hits


def check_objects(where: str, objects: Iterable[Mapping[str, Any]], part: str) -> list[str]:
    """Record (and return) the objects whose ``part`` (``status``, or the whole object for events) carries a
    tracked secret."""
    found: list[str] = []
    for obj in objects:
        body = obj.get(part) if part != "." else obj
        if body and find_in_text(json.dumps(body, default=str)):
            meta = obj.get("metadata", {})
            found.append(f"{where}: {obj.get('kind', '?')} {meta.get('namespace', '')}/{meta.get('name', '')} {part}")
    findings.extend(found)
    return found


def audit_namespace(cp: ControlPlane, namespace: str, pod_logs: bool = False) -> list[str]:
    """Before ``namespace`` goes: track its Secrets' passwords, then check its events, the mlinfra objects'
    statuses and (``pod_logs``: Pods that really ran) every container's log, the previous run's too."""

    def items(kind: str) -> list[dict[str, Any]]:
        out = cp.kubectl("get", kind, "-n", namespace, "-o", "json", check=False)
        return list(json.loads(out.stdout)["items"]) if out.returncode == 0 else []

    for secret in items("secrets"):
        data = secret.get("data") or {}
        track_secret_data({k: base64.b64decode(v).decode("utf-8", errors="replace") for k, v in data.items()})
    found = check_objects(f"events in {namespace}", items("events"), ".")
    for kind in ("datastores", "featureviews", "modelregistries", "vectorindexes"):
        found += check_objects(f"{kind} in {namespace}", items(kind), "status")
    if pod_logs:
        found += check_pod_logs(cp, namespace)
    return found


def check_pod_logs(cp: ControlPlane, namespace: str) -> list[str]:
    """Record (and return) the containers of ``namespace`` whose log carries a tracked secret."""
    found: list[str] = []
    for pod in cp.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).stdout.split():
        for previous in ("--previous", ""):
            out = cp.kubectl("logs", "-n", namespace, pod, "--all-containers", previous, check=False, timeout=60)
            if out.returncode == 0 and find_in_text(out.stdout):
                found.append(f"logs of {namespace}/{pod}{' (previous run)' if previous else ''}")
    findings.extend(found)
    return found
