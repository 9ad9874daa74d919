"""What the integration tests of rendered scripts and configs share: a managed DataStore, and its ConfigMap's
files written to disk as a ConfigMap volume would show them."""

from __future__ import annotations

from pathlib import Path

from mlinfra.api.datastore import DataStore

NAME, NAMESPACE = "feats", "ml"


def store(engine: str, replicas: int, config: dict[str, str]) -> DataStore:
    return DataStore.model_validate(
        {
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"engine": engine, "managed": {"replicas": replicas, "config": config}},
        }
    )


def write_files(directory: Path, files: dict[str, str]) -> dict[str, Path]:
    """The ConfigMap's files on disk, world-readable like a ConfigMap volume."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o644)
        paths[name] = path
    return paths
