"""Small helpers of the e2e tests: read objects as JSON, find a condition, wait with a deadline."""

from __future__ import annotations

import copy
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


def variant(base: dict[str, Any], name: str | None = None, **spec_changes: Any) -> dict[str, Any]:
    """A copy of ``base`` (renamed when ``name``) with ``a__b`` spec paths set (``None`` removes the key)."""
    out = copy.deepcopy(base)
    if name is not None:
        out["metadata"]["name"] = name
    for dotted, value in spec_changes.items():
        *parents, leaf = dotted.split("__")
        node = out["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return out
