-- A Backup of this store, now: what `mlinfra backup NS/NAME` creates. Named <store>-<UTC time>, or
-- backup-<UTC time> for a store whose name leaves no room (a Backup's name is at most 63 characters).
local stamp = os.date("!%Y%m%d%H%M%S")
local name = "backup-" .. stamp
if #obj.metadata.name <= 48 then
  name = obj.metadata.name .. "-" .. stamp
end
local backup = {}
backup.apiVersion = "mlinfra.io/v1alpha1"
backup.kind = "Backup"
backup.metadata = {}
backup.metadata.name = name
backup.metadata.namespace = obj.metadata.namespace
backup.spec = {}
backup.spec.dataStoreRef = {}
backup.spec.dataStoreRef.name = obj.metadata.name
local impacted = {}
impacted[1] = {}
impacted[1].operation = "create"
impacted[1].resource = backup
return impacted
