"""ModelRegistry: the registry schema in PostgreSQL and its lineage graph in Neo4j.

- ``migrations/NNNN_*.sql``: forward-only schema migrations (schema ``registry``), shipped as package data.
- ``migrate``: applies them in order under an advisory lock, tracked with checksums.
- ``roles``: the least-privilege writer and reader roles.
- ``lineage``: Neo4j constraints and the outbox -> graph sync.
- ``observe``: what status reports (pending events, lag, counts, applied version).
- ``sync_cli``: ``mlinfra sync modelregistry NS/NAME``.

Called by the ModelRegistry handlers and the sync CLI; never imports kopf or handlers.
"""
