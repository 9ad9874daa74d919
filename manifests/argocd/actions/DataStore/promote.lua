-- A switchover to the replica named by the "member" parameter: the annotation `mlinfra promote NS/NAME MEMBER`
-- sets. The operator waits for the member to catch up, or refuses (a lagging or unknown member); its answer
-- is the mlinfra.io/promote-result annotation and an event. An Argo CD without action parameters passes none.
local member = nil
if actionParams ~= nil then
  member = actionParams["member"]
end
if member == nil or member == "" then
  error("the member parameter is required: the replica to promote (status.members)", 0)
end
local known = false
if obj.status ~= nil and obj.status.members ~= nil then
  for _, m in ipairs(obj.status.members) do
    if m.name == member and m.role == "replica" then
      known = true
    end
  end
end
if not known then
  error(member .. " is not a replica of " .. obj.metadata.name .. " (status.members)", 0)
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["mlinfra.io/promote"] = member
return obj
