"""Kubernetes helpers without Kopf: the API client, server-side apply, owner references, conditions."""
