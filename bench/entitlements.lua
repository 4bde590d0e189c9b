-- GET /v1/customers/{id}/entitlements for one of 100 customers, round robin.
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v1/customers/bench_" .. (counter % 100) .. "/entitlements")
end
