"""What the fast tier's tests of the ML kinds share: a referenced DataStore (with its published connection
Secret) put into the in-memory Kubernetes API, and the Problem a step raised."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fakekube import FakeKube

from mlinfra.engines import connection, names
from mlinfra.problems import Problem, ProblemError


def put_store(
    kube: FakeKube,
    namespace: str,
    name: str,
    engine: str,
    ready: bool = True,
    *,
    host: str | None = None,
    port: int = 1,
    username: str = "u",
    password: str = "p",  # noqa: S107 - a test fixture's placeholder
    database: str | None = None,
) -> connection.ConnectionInfo:
    """An external DataStore ``name`` (Ready or not) and its ``<name>-conn`` Secret; the published connection."""
    kube.put(
        {
            "apiVersion": "mlinfra.io/v1alpha1",
            "kind": "DataStore",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"engine": engine, "external": {"endpoint": f"{name}.example:1"}},
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "reason": "Ready" if ready else "Unreachable",
                        "message": "" if ready else "connection refused",
                    }
                ]
            },
        }
    )
    info = connection.ConnectionInfo(
        engine=engine,  # type: ignore[arg-type]
        host=host or f"{name}.example",
        port=port,
        username=username,
        password=password,
        database=database or connection.DEFAULT_DATABASES[engine],  # type: ignore[index]
        tls=False,
    )
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": names.connection_secret(name), "namespace": namespace},
            "stringData": info.to_secret_data(),
        }
    )
    return info


def problem_of(call: Callable[[], Any]) -> Problem:
    """The Problem ``call`` raised (the test fails if it raised none)."""
    with pytest.raises(ProblemError) as caught:
        call()
    return caught.value.problem
