"""The engine version a managed store runs, kept with its data across operator upgrades.

The volumes hold data in the format of the major version that wrote it. ``spec.managed.version`` may be
omitted (the operator's tested default), and an operator upgrade may change that default; the CRD's rule that
the major version is fixed compares the spec with the spec, so it cannot see either. The version a store's
StatefulSet was rendered with is therefore recorded on the StatefulSet (``mlinfra.io/engine-version``; for
StatefulSets made before that annotation, read back from the engine's image tag) and decides:

- version omitted: the operator's default, unless the default has another major than the data, or is older
  than what runs (a downgrade can leave data the older server cannot read): then the recorded version stays;
- version set: a new major is refused (Stalled, ImmutableFieldChange, naming both), whatever the default.

A store the operator cannot read a version from (a custom ``spec.managed.image`` made before the
annotation) is not pinned: there is nothing to compare with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mlinfra.api import datastore as api
from mlinfra.engines import render
from mlinfra.problems import IMMUTABLE_FIELD_CHANGE, Problem, ProblemError

ANNOTATION = render.VERSION_ANNOTATION


def major(version: str) -> str:
    return version.split(".", 1)[0]


def _key(version: str) -> tuple[int, ...] | None:
    parts = version.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def older(a: str, b: str) -> bool:
    """``a`` is an older version than ``b`` (False when either is not purely numeric: not comparable)."""
    ka, kb = _key(a), _key(b)
    return ka is not None and kb is not None and ka < kb


def recorded(sts: Mapping[str, Any] | None, engine: api.Engine, images: Mapping[str, str]) -> str | None:
    """The version ``sts`` was rendered with: its annotation, else the tag of its engine container's image
    when that image follows the operator's image template (the settings' or the engine's public one)."""
    if sts is None:
        return None
    annotated = (sts.get("metadata", {}).get("annotations") or {}).get(ANNOTATION)
    if annotated:
        return str(annotated)
    containers = sts.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    templates = [t for t in (images.get(engine), render.PROFILES[engine].image) if t]
    for container in containers:
        for template in templates:
            pattern = re.escape(template).replace(re.escape("{version}"), r"(?P<version>[0-9][0-9A-Za-z.\-]*)")
            found = re.fullmatch(pattern, str(container.get("image", "")))
            if found:
                return found.group("version")
    return None


def effective(ds: api.DataStore, was: str | None) -> str:
    """The version to render for ``ds`` whose StatefulSet was rendered with ``was`` (None: new, or unknown)."""
    assert ds.spec.managed is not None
    wanted = ds.spec.managed.version
    default = render.PROFILES[ds.spec.engine].default_version
    if was is None:
        return wanted or default
    if wanted is None:
        return default if major(default) == major(was) and not older(default, was) else was
    if major(wanted) != major(was):
        raise ProblemError(
            Problem(
                IMMUTABLE_FIELD_CHANGE,
                f"spec.managed.version {wanted!r} is major version {major(wanted)}, and the data on this store's "
                f"volumes was written by {was} (major {major(was)}): a server of another major cannot open it. "
                f"Keep major {major(was)} (set spec.managed.version to {was!r} or a later {major(was)}.x), or "
                "create a new DataStore and migrate the data",
                stalled=True,
            )
        )
    return wanted


def pinned(ds: api.DataStore, version: str) -> api.DataStore:
    """``ds`` with ``version`` as its managed version (what the renderer reads)."""
    assert ds.spec.managed is not None
    managed = ds.spec.managed.model_copy(update={"version": version})
    return ds.model_copy(update={"spec": ds.spec.model_copy(update={"managed": managed})})
