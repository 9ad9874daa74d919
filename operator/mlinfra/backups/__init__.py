"""The Backup kind: a Job in the operator's image takes the backup (``mlinfra take backup``), the status is read
from the target itself (the manifest is the proof), and deleting a Backup deletes what it stored."""
