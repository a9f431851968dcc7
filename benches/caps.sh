#!/usr/bin/env bash
# A concurrency cap in front of a slow upstream (issue 4): with the cap, the upstream's latency
# stays at its service time and the excess load gets fast 503s; without one, every request
# queues inside the upstream and its latency grows with the load.
#
#   benches/caps.sh
#   CONNS=512 DURATION=20 benches/caps.sh
#
# The upstream is benches/slow_upstream.rs: UP_WORKERS (8) requests at once, SERVICE_MS (20) ms
# each, the rest wait inside it: 400 req/s at most. wrk (THREADS × CONNS, DURATION s, script
# benches/status_latency.lua) drives three set-ups in turn, all on 127.0.0.1:
#   direct    wrk → upstream
#   no-cap    wrk → sluice (one route, no limit, no cap) → upstream
#   cap-q16   wrk → sluice with `concurrency: {max_inflight: 8, queue: 16, queue_timeout: 500ms}`
#             on the upstream → upstream
#   cap-q0    the same cap with `queue: 0` (reject at once when all 8 slots are taken)
# For each: 2xx req/s, 2xx latency p50/p99 at the client (X-Bench-Start echoed by the upstream:
# 2xx only), the latency the upstream itself saw (arrival to response, waiting for a worker
# included; its /__stats), the most requests inside the upstream at once, the 503 count and the
# latency of the non-2xx responses (see status_latency.lua).
#
# Knobs (defaults): UP_WORKERS=8 SERVICE_MS=20 THREADS=2 CONNS=256 DURATION=10 WORKERS=1 (sluice
# workers) MAX_INFLIGHT=8 QUEUES="16 0" (one cap run per queue size) QUEUE_TIMEOUT=500ms
# SETUPS="direct no-cap cap" (which runs, in order) UP_PORT=18294 PROXY_PORT=18295 BUILD=1
# (0: reuse target/release/sluice and the last slow_upstream build; SLUICE_BIN, UPSTREAM_BIN
# override them). Needs wrk (with LuaJIT), curl, jq. Takes about 4 × (DURATION + 3) s once built.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UP_WORKERS=${UP_WORKERS:-8}; SERVICE_MS=${SERVICE_MS:-20}
THREADS=${THREADS:-2}; CONNS=${CONNS:-256}; DURATION=${DURATION:-10}; WORKERS=${WORKERS:-1}
MAX_INFLIGHT=${MAX_INFLIGHT:-8}; QUEUES=${QUEUES:-16 0}; QUEUE_TIMEOUT=${QUEUE_TIMEOUT:-500ms}
SETUPS=${SETUPS:-direct no-cap cap}
UP_PORT=${UP_PORT:-18294}; PROXY_PORT=${PROXY_PORT:-18295}; ADMIN_PORT=${ADMIN_PORT:-18296}
BIN=${SLUICE_BIN:-target/release/sluice}
LUA=benches/status_latency.lua

source benches/lib.sh
require_tools caps.sh wrk curl jq
require_free_ports caps.sh "$UP_PORT" "$PROXY_PORT" "$ADMIN_PORT"

scratch sluice-caps

if [[ ${BUILD:-1} == 1 ]]; then
  # One build for both (release profile); the executable's path comes from cargo's JSON output.
  cargo build --release --bin sluice --bench slow_upstream --message-format=json-render-diagnostics \
    >"$WORK/build.json"
  UPSTREAM_BIN=${UPSTREAM_BIN:-$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "slow_upstream") | .executable' "$WORK/build.json" | tail -1)}
  echo "$UPSTREAM_BIN" >target/release/.slow_upstream-path
else
  UPSTREAM_BIN=${UPSTREAM_BIN:-$(cat target/release/.slow_upstream-path)}
fi
[[ -x "$UPSTREAM_BIN" ]] || { echo "caps.sh: no slow_upstream executable ($UPSTREAM_BIN)" >&2; exit 1; }

wait_up() { # url
  for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "caps.sh: $1 did not come up" >&2; return 1
}

"$UPSTREAM_BIN" --listen "127.0.0.1:$UP_PORT" --workers "$UP_WORKERS" --service-ms "$SERVICE_MS" \
  --max-seconds $((4 * (DURATION + 20) + 60)) 2>"$WORK/upstream.log" &
PIDS+=($!)
wait_up "http://127.0.0.1:$UP_PORT/__stats"

sluice_config() { # file, queue size ("" = no cap)
  {
    cat <<EOF
server:
  listen: 127.0.0.1:$PROXY_PORT
  workers: $WORKERS
  shutdown_grace: 1s
admin:
  listen: 127.0.0.1:$ADMIN_PORT
upstreams:
  slow:
    endpoints: [http://127.0.0.1:$UP_PORT]
    timeout: 10s
EOF
    if [[ -n $2 ]]; then
      cat <<EOF
    concurrency:
      max_inflight: $MAX_INFLIGHT
      queue: $2
      queue_timeout: $QUEUE_TIMEOUT
EOF
    fi
    cat <<EOF
routes:
  - name: api
    match:
      path_prefix: /api
    upstream: slow
EOF
  } >"$1"
}

ROWS=()
run() { # name, url
  local name=$1 url=$2 line up
  curl -sf "http://127.0.0.1:$UP_PORT/__stats" >/dev/null # reset the upstream's stats
  echo "--- $name: wrk -t$THREADS -c$CONNS -d${DURATION}s --timeout 10s -s $LUA $url" >&2
  line=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 10s -s "$LUA" "$url" |
    tee -a "$WORK/wrk.out" | grep '^BENCH ')
  up=$(curl -sf "http://127.0.0.1:$UP_PORT/__stats")
  echo "$line" >&2
  echo "upstream: $up" >&2
  ROWS+=("$name $line $(jq -r '"up_n=\(.n) up_p50_us=\(.p50_us) up_p99_us=\(.p99_us) up_max_inside=\(.max_inside)"' <<<"$up")")
  sleep 2 # let the upstream drain what wrk left inside it
}

start_sluice() { # queue size ("" = no cap)
  sluice_config "$WORK/sluice.yaml" "$1"
  "$BIN" run -c "$WORK/sluice.yaml" 2>"$WORK/sluice.log" &
  SLUICE_PID=$!
  PIDS+=("$SLUICE_PID")
  wait_up "http://127.0.0.1:$PROXY_PORT/"
}

stop_sluice() {
  # How sluice's requests ended (forwarded, queue_full, queue_timeout, shed, …).
  curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" |
    awk '/^sluice_requests_total/ && !/shadow=/ && $2 != 0 { print "sluice: " $0 }' >&2 || true
  kill -TERM "$SLUICE_PID"
  wait "$SLUICE_PID" 2>/dev/null || true
}

for setup in $SETUPS; do
  case $setup in
    direct) run direct "http://127.0.0.1:$UP_PORT/api/work" ;;
    no-cap)
      start_sluice ""
      run no-cap "http://127.0.0.1:$PROXY_PORT/api/work"
      stop_sluice
      ;;
    cap)
      for q in $QUEUES; do
        start_sluice "$q"
        run "cap-q$q" "http://127.0.0.1:$PROXY_PORT/api/work"
        stop_sluice
      done
      ;;
    *) echo "caps.sh: unknown setup $setup (direct, no-cap, cap)" >&2; exit 1 ;;
  esac
done

echo
echo "caps: upstream ${UP_WORKERS} workers x ${SERVICE_MS} ms ($((UP_WORKERS * 1000 / SERVICE_MS)) req/s at most); wrk -t$THREADS -c$CONNS -d${DURATION}s; cap = max_inflight $MAX_INFLIGHT, queue_timeout $QUEUE_TIMEOUT"
printf '%s\n' "${ROWS[@]}" | awk '
function v(k,   i, kv) { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } return "" }
function ms(us) { return us < 0 ? "-" : sprintf("%.1f", us / 1000) }
BEGIN {
  printf "%-8s %10s %9s %9s %9s %11s %11s %11s %9s %10s %10s %6s\n", "setup", "2xx req/s", "2xx p50", "2xx p99", "2xx max", "upstr. p50", "upstr. p99", "max inside", "503", "503 p50", "503 p99", "errors"
}
{
  secs = v("duration_us") / 1e6
  errs = v("err_connect") + v("err_read") + v("err_write") + v("err_timeout") + v("sother") + v("s429")
  printf "%-8s %10.1f %9s %9s %9s %11s %11s %11s %9d %10s %10s %6d\n", $1, v("s2xx") / secs, ms(v("ok_p50_us")), ms(v("ok_p99_us")), ms(v("ok_max_us")), ms(v("up_p50_us")), ms(v("up_p99_us")), v("up_max_inside"), v("s503"), ms(v("non2xx_p50_us")), ms(v("non2xx_p99_us")), errs
}
END { print "(latencies in ms; 2xx and 503 = at the client, upstr. = inside the upstream, waiting for a worker included;\n 503 p50/p99 are over all non-2xx responses; errors = statuses other than 2xx/503 + socket errors)" }'
