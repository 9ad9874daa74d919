"""Backups of every engine: where they go (S3, a volume), how each object is sealed (checksum, encryption),
the catalog of complete backups, retention, and per engine how a backup is taken and restored.

No Kopf and no Kubernetes here: the operator, the backup Jobs and the restore init containers all call in.
"""
