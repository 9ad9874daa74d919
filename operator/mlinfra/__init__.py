"""mlinfra-operator: the data infrastructure of ML platforms as Kubernetes resources.

Layers, imports flow one way only (checked by tests/unit/test_layers.py):

    handlers  ->  features | registry | vectors  ->  engines | k8s | templates  ->  api

- ``api``: pydantic models, the single source of truth for the CRDs.
- ``engines`` / ``k8s``: talk to one database engine, or to the Kubernetes API.
- ``features`` / ``registry`` / ``vectors``: the ML layer, independent of each other and of Kopf.
- ``handlers``: thin Kopf handlers.
- ``devenv``: the local test platform (control plane + real databases); used by tests and ``mlinfra dev``,
  never by the operator itself.
"""

__version__ = "0.1.0"
