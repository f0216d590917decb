-- Argo CD health check for AtlasOrgUser and AtlasTeamMembership (atlas-access.dev).
-- Install: deploy/argocd/argocd-cm.yaml (resource.customizations.health.atlas-access.dev_<Kind>).
-- Uses only what Argo CD's Lua sandbox opens (base, table): no string library.
local hs = { status = "Progressing", message = "Waiting for the operator" }

local function condition(name)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == name then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = ""
  if c.reason ~= nil and c.reason ~= "" then
    text = c.reason
  end
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. c.message
  end
  return text
end

if obj.status == nil or obj.status.observedGeneration == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end

local ready = condition("Ready")
local stalled = condition("Stalled")
local paused = obj.metadata.annotations ~= nil and obj.metadata.annotations["atlas-access.dev/paused"] == "true"

if paused or (ready ~= nil and ready.reason == "Paused") then
  hs.status = "Suspended"
  hs.message = "Paused (annotation atlas-access.dev/paused)"
  if ready ~= nil then
    hs.message = describe(ready)
  end
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if ready ~= nil then
  hs.message = describe(ready)
end
return hs
