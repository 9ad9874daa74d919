"""Build-time generators, never imported by the running operator: the CRDs and the API reference from the
models (``mlinfra crds``), and the Argo CD health-check manifests from their Lua sources
(``python -m mlinfra.build.argocd``). Each has a ``--check`` that the unit tests run."""
