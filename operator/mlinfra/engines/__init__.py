"""Engines: everything that talks to one database engine, without Kopf and without Kubernetes.

- ``connection``: the one connection-Secret format (``<name>-conn``) every engine, mode and consumer shares.
- ``observation``: what a probe saw (reachability, version, members, lag, capabilities), and error scrubbing.
- ``redis``, ``postgres``, ``neo4j``, ``qdrant``: one synchronous ``probe(conn, timeout)`` per engine that
  reads the live server and never raises on connection failure.
- ``probe``: ``probe(conn)`` dispatching on ``conn.engine``.
- ``render``, ``names`` (separate owner): managed-mode manifests and child object names.

Callers are the ML layer and the handlers (which run the blocking probes in a thread). This package imports
``mlinfra.api`` and the database drivers only: never ``kopf`` nor ``kubernetes``. Importing the package
imports no driver; each engine module imports its own.
"""
