-- wrk script for the authgate load benchmark (scripts/bench.sh).
--
--   wrk ... -s bench/wrk/rotate.lua http://127.0.0.1:PORT/ -- COOKIES_FILE
--
-- Every request is `GET /` as a page navigation, with the Cookie header
-- rotating over the lines of COOKIES_FILE (one `name=value` a line, one per
-- signed-in user), each wrk thread starting at a different user. At the end
-- it prints one machine-readable line:
--   BENCH requests=N duration_us=D rps=R p50_us=X p99_us=Y errors=E non2xx=S

local requests = {}
local next_index = 1

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end

-- The requests are formatted once here, so that request() costs wrk almost
-- nothing and the server, not the load generator, is the bottleneck.
function init(args)
  local path = args[1]
  if path == nil then
    error("rotate.lua needs the cookies file: -- COOKIES_FILE")
  end
  for line in io.lines(path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("GET", "/", {
        ["Accept"] = "text/html",
        ["Cookie"] = line,
      })
    end
  end
  if #requests == 0 then
    error("no cookies in " .. path)
  end
  next_index = ((thread_id or 1) * 7919) % #requests + 1
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.timeout
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    errors, e.status))
end
