"""The API of mlinfra-operator (group ``mlinfra.io``, version ``v1alpha1``): pydantic models, one module per kind
(``backup`` holds the Backup kind and DataStore's backup policy).

These models are the single source of truth: ``mlinfra.build.crdgen`` generates the CRDs from them, and the
handlers parse custom resource bodies with them. This package imports nothing else from ``mlinfra``.
"""

from __future__ import annotations

from mlinfra.api import backup, base, datastore, featureview, modelregistry, vectorindex

# Every kind the operator serves, in the order the CRDs are generated and documented.
KINDS: tuple[type[base.Resource], ...] = (
    datastore.DataStore,
    featureview.FeatureView,
    modelregistry.ModelRegistry,
    vectorindex.VectorIndex,
    backup.Backup,
)
