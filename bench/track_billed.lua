-- POST /v1/usage/track as track.lua does, for the Pro subscribers billed_0…99 instead: every
-- unit they track is past their allowance and billed (one meter event per request).
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
local nonce = "run"
function init(args)
  nonce = args[1] or "run"
end

request = function()
  counter = counter + 1
  local body = '{"customer_id":"billed_' .. (counter % 100) .. '","feature":"ai_calls",'
    .. '"amount":1,"cost":"0.001","idempotency_key":"' .. nonce .. '-' .. tid .. '-' .. counter .. '"}'
  return wrk.format("POST", "/v1/usage/track", nil, body)
end
