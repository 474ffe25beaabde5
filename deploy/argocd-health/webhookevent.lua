-- Argo CD health check for webhook-operator.io/WebhookEvent.
-- Argo CD sets `obj` to the live object and reads {status, message} from the returned table.
local hs = {}

local function failures(deliveries)
  local failed = {}
  if deliveries == nil then
    return failed
  end
  for _, d in ipairs(deliveries) do
    if d.outcome == "Failed" then
      local text = tostring(d.webhook)
      if d.error ~= nil and d.error ~= "" then
        text = text .. " (" .. d.error .. ")"
      end
      table.insert(failed, text)
    end
  end
  return failed
end

local function count(deliveries)
  if deliveries == nil then
    return 0
  end
  return #deliveries
end

if obj.status == nil or obj.status.phase == nil or obj.status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the event"
  return hs
end

local phase = obj.status.phase
local deliveries = obj.status.deliveries

-- The conditions, when present, decide as kstatus (and so Flux) decides: Stalled=True is
-- Degraded, Reconciling=True Progressing, Ready=True Healthy. The phase words the message,
-- and decides alone for a status written before the operator wrote conditions.
local function condition_is(wanted, value)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == wanted and c.status == value then
      return true
    end
  end
  return false
end

local decided = nil
if condition_is("Stalled", "True") then
  decided = "Degraded"
elseif condition_is("Reconciling", "True") then
  decided = "Progressing"
elseif condition_is("Ready", "True") then
  decided = "Healthy"
end

if phase == "Pending" or phase == "Delivering" then
  hs.status = decided or "Progressing"
  hs.message = phase .. ": " .. tostring(count(deliveries)) .. " subscribed webhook(s)"
  return hs
end

if phase == "Delivered" then
  hs.status = decided or "Healthy"
  hs.message = "Delivered to " .. tostring(count(deliveries)) .. " webhook(s)"
  return hs
end

if phase == "NoSubscribers" then
  hs.status = decided or "Healthy"
  hs.message = "No enabled, ready webhook subscribes to " .. tostring(obj.spec and obj.spec.event or "this event")
  return hs
end

if phase == "Failed" or phase == "PartiallyFailed" then
  local failed = failures(deliveries)
  hs.status = decided or "Degraded"
  hs.message = phase .. ": " .. tostring(#failed) .. " of " .. tostring(count(deliveries)) .. " deliveries failed"
  if #failed > 0 then
    hs.message = hs.message .. ": " .. table.concat(failed, ", ")
  end
  return hs
end

hs.status = decided or "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
