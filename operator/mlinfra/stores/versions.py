"""The engine version a managed store runs, kept with its data across operator upgrades.

The volumes hold data in the format of the major version that wrote it. ``spec.managed.version`` may be
omitted (the operator's tested default), and an operator upgrade may change that default; the CRD's rule that
the major version is fixed compares the spec with the spec, so it cannot see either. The version a store's
StatefulSet was rendered with is therefore recorded on the StatefulSet (``mlinfra.io/engine-version``; for
StatefulSets made before that annotation, read back from the engine's image tag) and decides:

- version omitted: the operator's default, unless the default has another major than the data, or is older
  than what runs (a downgrade can leave data the older server cannot read): then the recorded version stays;
- version set: a new major is refused (Stalled, ImmutableFieldChange, naming both), whatever the default.

A custom ``spec.managed.image`` whose tag names a version (``registry.example/postgres:16.2-alpine``) is
that version: a tag of another major than the data is refused like a version, and a tag that contradicts
``spec.managed.version`` is invalid. A tag that names no version (a digest, ``stable``) cannot be checked:
the version is then ``spec.managed.version`` (or the default), which is what the user says the image runs.
A store the operator cannot read a version from (a custom image made before the annotation) is not pinned:
there is nothing to compare with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mlinfra.api import datastore as api
from mlinfra.engines import render
from mlinfra.problems import IMMUTABLE_FIELD_CHANGE, INVALID_SPEC, Problem, ProblemError

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


_TAG_VERSION = re.compile(r"v?(?P<version>[0-9]{1,4}(\.[0-9]{1,4}){0,2})(?![0-9])")


def image_version(image: str) -> str | None:
    """The version the tag of ``image`` starts with (``postgres:16.2-alpine`` -> ``16.2``); None for an image
    without a tag (a digest only) or with a tag that names no version."""
    name = image.split("@", 1)[0]
    _, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:  # no tag; or the colon was a registry's port
        return None
    found = _TAG_VERSION.match(tag)
    return found.group("version") if found else None


def _wanted(ds: api.DataStore) -> tuple[str | None, str]:
    """The version the spec asks for and the field that says it: the custom image's tag when it names
    one (it must agree with spec.managed.version), else spec.managed.version."""
    managed = ds.spec.managed
    assert managed is not None
    tagged = image_version(managed.image) if managed.image else None
    if tagged is None:
        return managed.version, f"spec.managed.version {managed.version!r}"
    if managed.version is not None and major(managed.version) != major(tagged):
        raise ProblemError(
            Problem(
                INVALID_SPEC,
                f"spec.managed.image {managed.image!r} is tagged {tagged} (major {major(tagged)}), and "
                f"spec.managed.version says {managed.version!r} (major {major(managed.version)}): make them "
                "agree, or leave spec.managed.version out",
                stalled=True,
            )
        )
    return tagged, f"spec.managed.image {managed.image!r} (tagged {tagged})"


def effective(ds: api.DataStore, was: str | None) -> str:
    """The version to render for ``ds`` whose StatefulSet was rendered with ``was`` (None: new, or unknown)."""
    wanted, field = _wanted(ds)
    default = render.PROFILES[ds.spec.engine].default_version
    if was is None:
        return wanted or default
    if wanted is None:
        return default if major(default) == major(was) and not older(default, was) else was
    if major(wanted) != major(was):
        raise ProblemError(
            Problem(
                IMMUTABLE_FIELD_CHANGE,
                f"{field} is major version {major(wanted)}, and the data on this store's "
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
