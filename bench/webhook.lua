-- POST /v1/webhooks/stripe with pre-signed events, each sent once: thread N reads
-- "<prefix>.N", one "signature<TAB>body" line per event, written by bench/run.py.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local events = {}
local index = 0
function init(args)
  for line in io.lines(args[1] .. "." .. tid) do
    local signature, body = line:match("^([^\t]*)\t(.*)$")
    events[#events + 1] = wrk.format("POST", "/v1/webhooks/stripe",
      { ["Stripe-Signature"] = signature, ["Content-Type"] = "application/json" }, body)
  end
end

request = function()
  index = index % #events + 1
  return events[index]
end
