-- Argo CD health check for mlinfra.io/v1alpha1 Backup (see manifests/argocd/README.md).
-- Healthy when complete (the manifest is on the target). Progressing while the Job runs (Reconciling). Degraded:
-- Stalled (the Job ran out of retries: BackupFailed; the target refused: TargetUnreachable; the manifest vanished
-- from the target: BackupMissing).

-- BEGIN common: identical in the health.lua of every kind (tests/unit/test_argocd_health.py checks it).
-- Argo CD runs this with gopher-lua (Lua 5.1) and only the base, table and os libraries: no string
-- library, so no string methods here. The global `obj` is the live object; the chunk returns hs.

local function condition(status, ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(status, ctype)
  local c = condition(status, ctype)
  return c ~= nil and c.status == "True"
end

-- The first condition of `types` that is False with one of its listed reasons ("*": any reason).
local function false_with_reason(status, types)
  for _, entry in ipairs(types) do
    local c = condition(status, entry[1])
    if c ~= nil and c.status == "False" then
      for i = 2, #entry do
        if entry[i] == "*" or entry[i] == c.reason then
          return c
        end
      end
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.type .. ": " .. c.reason
  end
  return fallback
end

-- Ready=False reasons that resolve without a spec change: the operator retries (Progressing).
local TRANSIENT = {
  Provisioning = true, SecretNotFound = true, StoreNotFound = true, StoreNotReady = true, NeverRun = true,
}

-- kind = {slo = {{type, reason...}...}, busy = {{type, reason...}...}, suspended = function(spec) -> msg}
local function assess(o, kind)
  local hs = {}
  local st = o.status
  if st == nil or st.observedGeneration == nil then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to report status"
    return hs
  end
  local generation = o.metadata and o.metadata.generation
  if generation ~= nil and st.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to observe generation " .. generation
      .. " (status is at generation " .. st.observedGeneration .. ")"
    return hs
  end
  local ready = condition(st, "Ready")
  if is_true(st, "Stalled") then
    hs.status = "Degraded"
    hs.message = text(condition(st, "Stalled"), text(ready, "Stalled"))
    return hs
  end
  -- Before Reconciling: a failure the operator keeps retrying (a backfill) is still Degraded.
  local breached = false_with_reason(st, kind.slo or {})
  if breached ~= nil then
    hs.status = "Degraded"
    hs.message = text(breached, breached.type)
    return hs
  end
  if is_true(st, "Reconciling") then
    hs.status = "Progressing"
    hs.message = text(condition(st, "Reconciling"), text(ready, "Reconciling"))
    return hs
  end
  for _, entry in ipairs(kind.busy or {}) do
    local c = condition(st, entry[1])
    if c ~= nil and c.status == "True" then
      hs.status = "Progressing"
      hs.message = text(c, entry[1])
      return hs
    end
  end
  if ready == nil or ready.status == "Unknown" then
    hs.status = "Progressing"
    hs.message = text(ready, "Waiting for the Ready condition")
    return hs
  end
  if ready.status ~= "True" then
    if TRANSIENT[ready.reason] then
      hs.status = "Progressing"
    else
      hs.status = "Degraded"
    end
    hs.message = text(ready, "Not ready")
    return hs
  end
  local paused = kind.suspended and kind.suspended(o.spec or {})
  if paused then
    hs.status = "Suspended"
    hs.message = paused
    return hs
  end
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end
-- END common

return assess(obj, {})
