"""The support every ``mlinfra sync ...`` command (the sync Jobs' entry points) shares: its target, its exit
codes, and how it finds the DataStores' connections — mounted Secret directories inside a Job, the
published Secrets otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic
import yaml

from mlinfra.config import Settings
from mlinfra.context import Context
from mlinfra.engines import connection
from mlinfra.k8s import objects
from mlinfra.stores import connsecret

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
TERMINATION_LOG_ENV = "MLINFRA_TERMINATION_LOG"  # tests point it at a file of their own
TERMINATION_LOG = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096  # bytes the kubelet keeps
PAUSE_ENV = "MLINFRA_SYNC_PAUSE_AFTER_BATCHES"

Model = TypeVar("Model", bound=pydantic.BaseModel)


class Unusable(Exception):
    """The run cannot start: the message says what is missing."""


def parse_target(target: str) -> tuple[str, str]:
    """``NAMESPACE/NAME`` -> ``(namespace, name)``."""
    namespace, sep, name = target.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise Unusable(f"expected NAMESPACE/NAME, got {target!r}")
    return namespace, name


def read_conn_dir(directory: pathlib.Path) -> connection.ConnectionInfo:
    """A connection Secret mounted as a directory (one file per key; ``..data`` links are skipped)."""
    data = {
        path.name: path.read_bytes() for path in directory.iterdir() if not path.name.startswith(".") and path.is_file()
    }
    return connection.ConnectionInfo.from_secret_data(data)


def resolve_connection(env: str, namespace: str, datastore: str) -> connection.ConnectionInfo:
    """The store's connection: the mounted directory named by ``env``, else its published Secret."""
    directory = os.environ.get(env)
    if directory:
        info = read_conn_dir(pathlib.Path(directory))
    else:
        found = connsecret.read_connection(objects.Kube(), namespace, datastore)
        if found is None:
            raise Unusable(f"DataStore {namespace}/{datastore} has no connection Secret yet")
        info = found
    # Development only (off unless MLINFRA_ENDPOINT_MAP is set): a managed store served on this host.
    return Context.from_settings(Settings.from_env()).reach(info, namespace, datastore)


def load_resource(
    model: type[Model], kind: str, spec_env: str, namespace: str, name: str, file: pathlib.Path | None = None
) -> Model:
    """The resource from ``file`` (YAML or JSON), from the spec the operator put in ``spec_env`` (in the
    Job, so the pod needs no Kubernetes API access), or from the Kubernetes API."""
    spec_json = os.environ.get(spec_env)
    if file is not None:
        body: Any = yaml.safe_load(file.read_text())
    elif spec_json:
        body = {"kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": json.loads(spec_json)}
    else:
        try:
            body = objects.Kube().get(kind, namespace, name)
        except objects.NotFound:
            raise Unusable(f"{kind} {namespace}/{name} not found") from None
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise Unusable(f"{kind} {namespace}/{name} is invalid: {exc.error_count()} errors: {exc}") from None


def pause_hook() -> Callable[[int, int], None] | None:
    """Test hook: with ``MLINFRA_SYNC_PAUSE_AFTER_BATCHES=N`` the run prints ``paused after batch N`` on
    stderr and sleeps after its N-th committed batch, so a test can kill it between batches."""
    after = int(os.environ.get(PAUSE_ENV) or 0)
    if after <= 0:
        return None

    def hook(batches: int, rows: int) -> None:
        if batches == after:
            print(f"paused after batch {batches} ({rows} rows)", file=sys.stderr, flush=True)
            time.sleep(3600)

    return hook


def termination_message(reason: str, message: str) -> None:
    """``<reason>: <message>`` into the termination log, when it exists and can be written (in a pod the kubelet
    creates it; elsewhere nothing is written, and nothing is created under /dev)."""
    path = pathlib.Path(os.environ.get(TERMINATION_LOG_ENV) or TERMINATION_LOG)
    if not path.is_file() or not os.access(path, os.W_OK):
        return
    line = f"{reason}: {' '.join(message.split())}".encode()[:MAX_TERMINATION_MESSAGE]
    with contextlib.suppress(OSError):  # the message is on stdout too: the pod's log has it
        path.write_bytes(line)
