"""What the integration tests of rendered scripts and configs share: a managed DataStore, its ConfigMap's
files written to disk as a ConfigMap volume would show them, and a Redis pod run from them."""

from __future__ import annotations

from pathlib import Path

from mlinfra.api.datastore import DataStore
from mlinfra.devenv import procs
from mlinfra.devenv.redis import RedisServer

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


def redis_pod(
    stack: procs.ProcStack,
    root: Path,
    files: dict[str, Path],
    pod: str,
    password: str,
    data: Path | None = None,
    primary: RedisServer | None = None,
    named_primary: str | None = None,
) -> RedisServer:
    """One pod's container: the rendered entrypoint.sh, as the StatefulSet runs it, on a loopback port, in
    ``root/<pod>``; its data volume at ``data`` (default: a new ``root/<pod>/data``); ``named_primary``: the
    pod the store's primary record names (MLINFRA_PRIMARY; none: no record)."""
    workdir = root / pod
    if data is None:
        data = workdir / "data"
        data.mkdir(parents=True)
    port = procs.free_port()
    env = {
        "HOSTNAME": pod,
        "REDIS_PASSWORD": password,
        "REDIS_PORT": str(port),
        "REDIS_BIND": "127.0.0.1",
        "REDIS_CONF": str(files["redis.conf"]),
        "REDIS_DATA_DIR": str(data),
        "REDIS_RUN_DIR": str(workdir / "run"),
    }
    if named_primary is not None:
        env["MLINFRA_PRIMARY"] = named_primary
    if primary is not None:  # the primary's DNS name, as the replica reaches it here
        env |= {"REDIS_PRIMARY_HOST": "127.0.0.1", "REDIS_PRIMARY_PORT": str(primary.port)}
    server = RedisServer(workdir, pod, password, port=port, command=["bash", str(files["entrypoint.sh"])], env=env)
    return server.start(stack)
