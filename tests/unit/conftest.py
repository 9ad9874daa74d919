"""The fast tier's fixtures: an in-memory Kubernetes API and a context around it (see fakekube.py)."""

from __future__ import annotations

import pytest
from fakekube import FakeKube

from mlinfra.config import Settings
from mlinfra.context import Context


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def ctx(kube: FakeKube) -> Context:
    return Context(settings=Settings(job_image="example.test/mlinfra:1"), kube=kube)
