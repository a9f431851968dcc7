-- wrk script of benches/caps.sh: response counts by status, and the latency of 2xx responses
-- on their own. Needs wrk built with LuaJIT (Debian's is) for its ffi.
--
--   wrk -t2 -c256 -d10s -s benches/status_latency.lua URL
--
-- wrk's own latency histogram mixes every response, fast 503s and slow 200s alike. request()
-- stamps each request with its send time (X-Bench-Start, µs on the monotonic clock);
-- benches/slow_upstream.rs echoes it and sluice passes it back, so response() can time each 2xx
-- alone. sluice's own 503s and 429s carry no stamp; their percentiles (`non2xx_*`) come from
-- wrk's histogram of every response minus the 2xx samples (see other_percentiles). The two
-- timings start within microseconds of each other (wrk stamps its start right after request()),
-- far below the millisecond figures reported.
--
-- Defining response() makes wrk hand every response to Lua, which costs wrk some CPU; fine at
-- the rates of caps.sh, not for the accuracy run (accuracy.sh uses only a done() hook).
--
-- done() prints one line:
--   BENCH requests=… duration_us=… s2xx=… s429=… s503=… sother=… err_connect=… err_read=…
--         err_write=… err_timeout=… all_p50_us=… all_p90_us=… all_p99_us=… all_max_us=…
--         ok_n=… ok_p50_us=… ok_p90_us=… ok_p99_us=… ok_max_us=…
--         non2xx_n=… non2xx_p50_us=… non2xx_p90_us=… non2xx_p99_us=…
-- (ok_* = 2xx only, non2xx_* = every other response; -1 when there were none)

local ffi = require("ffi")
ffi.cdef [[
struct bench_timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clock_id, struct bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("struct bench_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
   return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local START = "X-Bench-Start"
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   statuses = {}
   ok_us = {}
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

-- Nearest-rank percentiles of the responses in wrk's histogram `latency` that are not in the
-- sorted array `ok` (n_all responses in the histogram). wrk's Lua API has no cumulative count,
-- only latency:percentile(p) = the smallest x with A(x) >= round(p/100 * n_all + 0.5), A(x) the
-- responses with latency <= x. The non-2xx rank r is reached at the smallest x with
-- A(x) - J(x) >= r, J(x) the 2xx samples <= x; iterating x <- A^-1(r + J(x)) from J = 0 climbs
-- to it (x never passes it, and J grows each round until it stops).
local function other_percentiles(latency, n_all, ok, ps)
   local n = n_all - #ok
   local out = {}
   for k, p in ipairs(ps) do
      if n <= 0 then
         out[k] = -1
      else
         local r = math.max(1, math.ceil(n * p / 100))
         local j, x = 0, -1
         for _ = 1, 100000 do
            local rank = math.min(r + j, n_all)
            x = latency:percentile(100 * (rank - 0.5) / n_all)
            local j2 = j
            while j2 < #ok and ok[j2 + 1] <= x do
               j2 = j2 + 1
            end
            if j2 == j or rank == n_all then
               break
            end
            j = j2
         end
         out[k] = x
      end
   end
   return math.max(n, 0), out
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
   -- wrk records a latency for every response except those past --timeout (counted as errors).
   local non2xx_n, np = other_percentiles(latency, summary.requests - e.timeout, ok, { 50, 90, 99 })
   io.write(string.format(
      "BENCH requests=%d duration_us=%d s2xx=%d s429=%d s503=%d sother=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_timeout=%d " ..
      "all_p50_us=%.0f all_p90_us=%.0f all_p99_us=%.0f all_max_us=%.0f " ..
      "ok_n=%d ok_p50_us=%.0f ok_p90_us=%.0f ok_p99_us=%.0f ok_max_us=%.0f " ..
      "non2xx_n=%d non2xx_p50_us=%.0f non2xx_p90_us=%.0f non2xx_p99_us=%.0f\n",
      summary.requests, summary.duration, s2xx, s429, s503, sother,
      e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      #ok, percentile(ok, 50), percentile(ok, 90), percentile(ok, 99),
      ok[#ok] or -1,
      non2xx_n, np[1], np[2], np[3]))
end
