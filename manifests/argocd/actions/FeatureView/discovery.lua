-- Argo CD actions for mlinfra.io/v1alpha1 FeatureView (see manifests/argocd/README.md): "sync-now" runs its sync Job
-- once, now (the mlinfra.io/sync-requested-at annotation the operator answers with a one-off Job).
actions = {}
actions["sync-now"] = {["disabled"] = false}
return actions
