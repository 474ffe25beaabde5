-- Argo CD health check for webhook-operator.io/Webhook.
-- Argo CD sets `obj` to the live object and reads {status, message} from the returned table.
local hs = {}

local function condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c.message ~= nil and c.message ~= "" then
    if c.reason ~= nil and c.reason ~= "" then
      return c.reason .. ": " .. c.message
    end
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

-- A disabled webhook is deliberately idle: neither healthy nor failing.
if obj.spec ~= nil and obj.spec.enabled == false then
  hs.status = "Suspended"
  hs.message = "Webhook is disabled (spec.enabled is false)"
  return hs
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the Webhook"
  return hs
end

-- Conditions written for an older spec say nothing about the current one.
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(obj.status.conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition of generation " .. tostring(generation)
  return hs
end

-- Stalled=True (beside Ready=False) is what kstatus, and so Flux, reports as Failed.
local stalled = condition(obj.status.conditions, "Stalled")
if ready.status == "False" or (stalled ~= nil and stalled.status == "True") then
  hs.status = "Degraded"
  hs.message = describe(ready.status == "False" and ready or stalled, "Webhook is not ready")
  return hs
end

local healthy = condition(obj.status.conditions, "Healthy")
if healthy ~= nil and healthy.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(healthy, "Deliveries are failing")
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  if healthy ~= nil and healthy.status == "True" and healthy.message ~= nil and healthy.message ~= "" then
    hs.message = healthy.message
  else
    hs.message = describe(ready, "Webhook is ready")
  end
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Ready condition is " .. tostring(ready.status))
return hs
