-- "Sync now": the time of the request in the mlinfra.io/sync-requested-at annotation; the operator starts a
-- one-off Job for each new value (mlinfra sync does the same).
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["mlinfra.io/sync-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
return obj
