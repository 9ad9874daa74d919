"""mlinfra-operator: the data infrastructure of ML platforms as Kubernetes resources.

Layers, imports flow one way only, from the Kopf wiring down to the API models::

    handlers -> stores | features | registry | vectors -> context | problems -> engines | k8s -> api

The contract (rendered from ``mlinfra.build.layers``, checked by tests/unit/build/test_layers.py; see
docs/architecture.md for how one object flows from a watch event to a status write):

    <!-- layers:begin -->
    | layer | may import | owns |
    | --- | --- | --- |
    | `api` | — | pydantic models of the four kinds: the single source of the CRDs |
    | `config` | — | the operator's settings (flags, then environment) |
    | `metrics` | — | the Prometheus metrics the operator exports |
    | `engines` | api | one database engine each: connections, probes, names, rendered Pods |
    | `k8s` | api | the Kubernetes API: objects (Kube), conditions, patches, sync Jobs |
    | `backup` | api, engines | backups of every engine: targets (S3, volume), sealed objects, the catalog, retention, take and restore |
    | `problems` | k8s | Problem, the shared reasons, parse, the kstatus summary |
    | `context` | api, config, engines, k8s | what every reconcile is given: settings, the Kube client, dev wiring; Obj, Reporter |
    | `stores` | api, backup, config, context, engines, k8s, metrics, problems | DataStore: reconcile, observe, status; Secrets, credentials, store references, sync-command support |
    | `features` | api, config, context, engines, k8s, metrics, problems, stores | FeatureView: offline schema, materialization, freshness |
    | `registry` | api, config, context, engines, k8s, metrics, problems, stores | ModelRegistry: migrations, roles, lineage |
    | `vectors` | api, config, context, engines, k8s, metrics, problems, stores | VectorIndex: collections, blue/green rebuilds, sync |
    | `backups` | api, backup, config, context, engines, k8s, metrics, problems, stores | Backup: the Job that takes one, its status read from the target, deleting it |
    | `client` | api, engines, features | the SDK apps use to read features and the registry |
    | `handlers` | api, backups, config, context, features, k8s, metrics, problems, registry, stores, vectors | Kopf wiring: one shape (kind.py), one status-write path, a file of wiring per kind |
    | `run` | config, handlers, metrics | the operator process |
    | `statusview` | — | pure rendering of `mlinfra status` |
    | `build` | api | build-time generators: CRDs, API reference, Argo CD checks, this contract |
    | `devenv` | api, backup, backups, client, context, engines, features, k8s, problems, stores, vectors | the local platform (control plane, real node, real databases): tests and the demo only |
    | `cli` | anything | the `mlinfra` command |
    | `__main__` | cli | `python -m mlinfra` |
    | `__init__` | — | this contract, rendered |
    <!-- layers:end -->
"""

__version__ = "0.1.0"
