"""FeatureView data plane: the shared layout, the offline schema, materialization and freshness.

Called by the FeatureView handlers and by ``mlinfra sync featureview``; the client SDK imports only
:mod:`mlinfra.features.layout`. Never imports Kopf or the handlers.
"""
