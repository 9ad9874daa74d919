-- Argo CD actions for mlinfra.io/v1alpha1 DataStore (see manifests/argocd/README.md): "backup-now" takes a
-- Backup of the store now, with its spec.backup (offered only to a store that has one).
actions = {}
actions["backup-now"] = {["disabled"] = obj.spec == nil or obj.spec.backup == nil}
return actions
