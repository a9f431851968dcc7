#!/usr/bin/env bash
# limiter_memory, end to end: the RSS of a running `sluice` (its mimalloc, its housekeeping task
# every 5 s, keys inserted by the worker threads) with KEYS (1,000,000) distinct client
# addresses, and after they go idle and are evicted.
#
#   benches/limiter_memory_e2e.sh            # about 3 minutes
#
# All on 127.0.0.1; everything it starts is stopped by PID on exit.
#   1. `cargo build --release` (BUILD=0 skips it), an NGINX upstream answering `return 200`;
#   2. sluice with `trusted_proxies: [127.0.0.1]` and one `client_ip` limit of 1/m, burst 1: a
#      key's bucket takes 60 s to refill, so no key becomes evictable while wrk runs (governor
#      drops a key once it has been full for one emission interval: 120 s after its only request);
#   3. one wrk run (THREADS × CONNS, DURATION s) sends a distinct X-Forwarded-For per request,
#      each thread from its own range of KEYS/THREADS addresses, then repeats them (429s, no new
#      keys): DURATION must be long enough for KEYS requests (it is checked and reported);
#   4. RSS (/proc/PID/status VmRSS) and `sluice_rate_limit_keys` at start, after wrk, and every
#      10 s until the gauge reads 0 (at most WAIT s), 10 s later, and after 5 s of traffic from a
#      single client (mimalloc gives freed memory back from inside later allocator calls).
# Knobs (defaults): KEYS=1000000 DURATION=60 (< 120 s, or the first keys become evictable)
# THREADS=2 CONNS=64 WORKERS=1 WAIT=200 UP_PORT=18297
# PROXY_PORT=18298 ADMIN_PORT=18299 BUILD=1. Needs nginx, wrk, curl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KEYS=${KEYS:-1000000}; DURATION=${DURATION:-60}; THREADS=${THREADS:-2}; CONNS=${CONNS:-64}
WORKERS=${WORKERS:-1}
WAIT=${WAIT:-200}
UP_PORT=${UP_PORT:-18297}; PROXY_PORT=${PROXY_PORT:-18298}; ADMIN_PORT=${ADMIN_PORT:-18299}
BIN=${SLUICE_BIN:-target/release/sluice}

source benches/lib.sh
require_tools limiter_memory_e2e.sh nginx wrk curl
require_free_ports limiter_memory_e2e.sh "$UP_PORT" "$PROXY_PORT" "$ADMIN_PORT"

scratch sluice-memory

build_sluice

# The upstream: NGINX, one worker, 200 "ok".
nginx_upstream "$UP_PORT"

{
  sluice_config_head "trusted_proxies: [127.0.0.1]"
  cat <<EOF
routes:
  - name: memory
    upstream: api
    rate_limits:
      - name: per-client
        key: client_ip
        rate: 1/m
        burst: 1
EOF
} >"$WORK/sluice.yaml"
start_sluice

# Each thread: addresses 11.0.0.0 + id·2^22 + (k mod KEYS/THREADS).
xff_lua "per_thread = math.floor($KEYS / $THREADS)" \
  '0x0b000000 + id * 0x400000 + (k % per_thread)' >"$WORK/xff.lua"

keys() { rate_limit_keys memory; }
rss() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$SLUICE_PID/status"; }
report() { printf '%-40s keys=%9s  RSS %7s MiB\n' "$1" "$(keys)" "$(rss)"; }

report "sluice idle"
base=$(rss)
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$WORK/xff.lua" "http://127.0.0.1:$PROXY_PORT/" >"$WORK/wrk.out"
loaded=$(date +%s)
grep -E 'requests in|Requests/sec|Non-2xx' "$WORK/wrk.out" | sed 's/^ */wrk: /'
report "after wrk (${DURATION} s)"
peak=$(rss)
n_peak=$(keys)
for _ in $(seq $((WAIT / 10))); do
  sleep 10
  report "idle $(($(date +%s) - loaded)) s"
  [[ $(keys) -eq 0 ]] && break
done
sleep 10
report "10 s after the last eviction"
idle_after=$(rss)
# mimalloc returns freed pages to the OS from inside later allocator calls on the owning thread:
# an idle process keeps them. A little traffic (one client: a few admitted, then 429s) does that.
wrk -t1 -c2 -d5s -H "X-Forwarded-For: 10.9.9.9" "http://127.0.0.1:$PROXY_PORT/" >/dev/null
sleep 1
report "after 5 s of traffic from one client"
after=$(rss)
n_after=$(keys)
[[ $n_peak -ge $KEYS ]] || echo "limiter_memory_e2e.sh: only $n_peak of $KEYS keys: raise DURATION (< 120) or CONNS" >&2
awk -v base="$base" -v peak="$peak" -v after="$after" -v idle_after="$idle_after" -v n="$n_peak" -v n_after="$n_after" 'BEGIN {
  printf "\nsluice binary (mimalloc): +%.1f MiB for %d keys (%.0f bytes/key; target < 200 MB: %s); after eviction %d keys, +%.1f MiB over idle (idle since), +%.1f MiB after a little traffic\n",
    peak - base, n, (peak - base) * 1048576 / n, (peak - base < 200) ? "met" : "MISSED", n_after, idle_after - base, after - base
}'
