"""The one place handlers put a computed status into Kopf's patch: only what changed, nothing when idle."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf

from mlinfra.k8s import patches


def write_status(body: kopf.Body, patch: kopf.Patch, new: dict[str, Any], owned: Iterable[str]) -> bool:
    """Patch the ``owned`` status fields that differ from the stored ones; False when nothing changed."""
    diff = patches.status_patch(body.get("status"), new, owned)
    for key, value in diff.items():
        patch.status[key] = value
    return bool(diff)
