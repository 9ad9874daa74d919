"""Small helpers of the e2e tests: read objects as JSON, find a condition, wait with a deadline."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mlinfra.devenv import procs
from mlinfra.devenv.controlplane import ControlPlane


def get_json(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    procs.wait_until(what, check, timeout)
