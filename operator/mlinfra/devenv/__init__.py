"""The local test platform: a real Kubernetes control plane and real databases, with no Docker.

Everything here starts real processes on free loopback ports, in temporary directories, and stops them
again: etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok (fake nodes), Redis and
PostgreSQL each with a live replica, an embedded Neo4j server, and a Qdrant client (local mode, or a real
server when ``QDRANT_URL`` is set). Used by the pytest fixtures (``mlinfra.devenv.pytest_plugin``) and by
``mlinfra dev up`` (``make cluster-up``); the operator itself never imports it.
"""
