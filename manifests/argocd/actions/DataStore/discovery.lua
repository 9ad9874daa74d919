-- Argo CD actions for mlinfra.io/v1alpha1 DataStore (see manifests/argocd/README.md): "backup-now" takes a
-- Backup of the store now, with its spec.backup (offered only to a store that has one); "promote" asks the
-- operator for a switchover to the replica named by its "member" parameter (offered to a managed redis or
-- postgres store with a ready replica; the first ready replica is the default).
actions = {}
actions["backup-now"] = {["disabled"] = obj.spec == nil or obj.spec.backup == nil}
local replica = nil
local engine = obj.spec and obj.spec.engine
if obj.spec ~= nil and obj.spec.managed ~= nil and (engine == "redis" or engine == "postgres")
    and obj.status ~= nil and obj.status.members ~= nil then
  for _, member in ipairs(obj.status.members) do
    if replica == nil and member.role == "replica" and member.ready == true then
      replica = member.name
    end
  end
end
actions["promote"] = {
  ["disabled"] = replica == nil,
  ["params"] = {{["name"] = "member", ["default"] = replica or ""}},
}
return actions
