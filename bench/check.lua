-- POST /v1/usage/check for one of 100 customers, round robin.
local counter = 0
request = function()
  counter = counter + 1
  local body = '{"customer_id":"bench_' .. (counter % 100) .. '","feature":"ai_calls"}'
  return wrk.format("POST", "/v1/usage/check", nil, body)
end
