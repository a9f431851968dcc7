-- wrk script of `cargo bench --bench loadtest` (benches/loadtest/main.rs); needs wrk built
-- with LuaJIT (Debian's is), for its ffi.
--
-- Usage: wrk -tT -cC -dD -s pace.lua URL -- <requests per second per thread>
--
-- Pacing. wrk is closed-loop: a connection sends its next request once the previous response
-- is in. delay() turns each thread's connections into a pool that sends on one schedule: one
-- request every 1/rate s, on whichever connection is free. While a connection is free the
-- offered rate is `rate` whatever the response times; when every connection is waiting, the
-- schedule slips (no catch-up burst afterwards) and fewer requests are sent. The rate wrk
-- reports (requests / duration) is what was really sent.
--
-- Latency of admitted requests. wrk's own histogram mixes every response, fast 429s and 503s
-- included. request() stamps each request with its send time (X-Loadtest-Start, µs on the
-- monotonic clock); the sample upstream echoes it, so response() can time each 2xx alone.
--
-- done() prints one line for the bench to parse:
--   LOADTEST requests=… duration_us=… s2xx=… s429=… s503=… sother=… err_*=…
--            all_p50_us=… all_p90_us=… all_p99_us=… ok_n=… ok_p50_us=… ok_p90_us=… ok_p99_us=…
-- (ok_* = 2xx only; -1 when there were none).

local ffi = require("ffi")
ffi.cdef [[
struct loadtest_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clock_id, struct loadtest_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("struct loadtest_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
   return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local START = "X-Loadtest-Start"

-- Main state: the threads, to collect their counts in done().
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

-- Thread state.
function init(args)
   interval_us = 1e6 / tonumber(args[1])
   next_us = nil
   statuses = {} -- status code -> responses
   ok_us = {}    -- latency of each 2xx response, µs
end

function delay()
   local now = now_us()
   if next_us == nil or next_us < now then
      next_us = now -- behind schedule: send now, do not burst to catch up
   end
   local wait_us = next_us - now
   next_us = next_us + interval_us
   return math.floor(wait_us / 1000 + 0.5) -- wrk takes whole milliseconds
end

function request()
   return wrk.format(nil, nil, { [START] = string.format("%.0f", now_us()) })
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status >= 200 and status < 300 then
      local start = tonumber(headers[START] or headers[START:lower()])
      if start then
         ok_us[#ok_us + 1] = now_us() - start
      end
   end
end

-- Nearest-rank percentile of a sorted array; -1 when empty.
local function percentile(sorted, p)
   local n = #sorted
   if n == 0 then
      return -1
   end
   return sorted[math.max(1, math.ceil(n * p / 100))]
end

function done(summary, latency, requests)
   local counts, ok = {}, {}
   for _, t in ipairs(threads) do
      for status, n in pairs(t:get("statuses") or {}) do
         counts[status] = (counts[status] or 0) + n
      end
      for _, us in ipairs(t:get("ok_us") or {}) do
         ok[#ok + 1] = us
      end
   end
   table.sort(ok)

   local s2xx, s429, s503, sother = 0, 0, 0, 0
   for status, n in pairs(counts) do
      if status >= 200 and status < 300 then
         s2xx = s2xx + n
      elseif status == 429 then
         s429 = s429 + n
      elseif status == 503 then
         s503 = s503 + n
      else
         sother = sother + n
      end
   end

   local e = summary.errors
   io.write(string.format(
      "LOADTEST requests=%d duration_us=%d s2xx=%d s429=%d s503=%d sother=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_timeout=%d " ..
      "all_p50_us=%.0f all_p90_us=%.0f all_p99_us=%.0f " ..
      "ok_n=%d ok_p50_us=%.0f ok_p90_us=%.0f ok_p99_us=%.0f\n",
      summary.requests, summary.duration, s2xx, s429, s503, sother,
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      #ok, percentile(ok, 50), percentile(ok, 90), percentile(ok, 99)))
end
