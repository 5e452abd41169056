-- Argo CD health of RegistryNamespace and RegistryCredential (registry.thalassa.cloud).
-- The operator writes status only: status.observedGeneration, and conditions Ready (always),
-- Reconciling (True while it converges) and Stalled (True when only a change of the object
-- can fix it: a conflict, a grant that is not permitted, a disabled feature gate, expiry).
-- Uses only what Argo CD's Lua sandbox offers (base, table; no string library).
local hs = {status = "Progressing", message = "Waiting for the region's operator"}
local generation = obj.metadata.generation
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local ready = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Stalled" and condition.status == "True" then
    hs.status = "Degraded"
    hs.message = condition.reason .. ": " .. condition.message
    return hs
  end
  if condition.type == "Ready" then
    ready = condition
  end
end
if ready ~= nil and ready.observedGeneration == generation then
  if ready.status == "True" then
    hs.status = "Healthy"
  end
  hs.message = ready.reason .. ": " .. ready.message
end
return hs
