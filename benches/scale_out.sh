#!/usr/bin/env bash
# docs/scale-out.md, "Figures": global limits on one Redis and on a Redis Cluster, without and
# with a lease, against a local limit; and three instances sharing one limit.
#
#   benches/scale_out.sh            # about 3 minutes; BUILD=1 builds the release binary first
#
# What it does, all on 127.0.0.1, everything it starts stopped by PID on exit:
#   1. an NGINX upstream (`return 200`), one redis-server, and a 3-master Redis Cluster (three
#      redis-server --cluster-enabled yes + redis-cli --cluster create) in a temp dir;
#   2. latency: one sluice (`server.workers: 1`, `timeout: 20ms`, `on_error: local`) per store,
#      routes /local, /global, /lease with the same generous limit (key: client_ip, 100000/s,
#      burst 100000: nothing is rejected), scope local, global, and global with `lease: LEASE`;
#      per route a 2 s warm-up, then ROUNDS rounds of `wrk -t1 -c32 -d5s --latency` and
#      `wrk -t1 -c1 -d5s --latency` on each route in turn (interleaved, so that the load other
#      programs put on the machine falls on every route alike); the medians are printed last;
#   3. accuracy: three sluice instances per store (`timeout: 250ms`, `on_error: deny`: a slow
#      answer on a loaded machine shows as a 503, counted, instead of a local admission), one
#      `key: global` limit (ACC_RATE/s, burst ACC_BURST) without and with `lease: ACC_LEASE`;
#      three wrk (-t1 -c16 -d10s), one per instance, at once; admitted = the increase of
#      sluice_requests_total{outcome="forwarded"} summed over the three; expected = ACC_RATE ×
#      seconds + ACC_BURST, where seconds is the wall time from before the first wrk started to
#      after the last one ended.
#
# Knobs (defaults): LEASE=100 ROUNDS=3 ACC_RATE=1000 ACC_BURST=100 ACC_LEASE=20
# STORES="single cluster" PARTS="latency accuracy" BUILD=0 SLUICE_BIN=target/release/sluice. Needs nginx, wrk, curl, redis-server, redis-cli, python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LEASE=${LEASE:-100}; ROUNDS=${ROUNDS:-3}; ACC_RATE=${ACC_RATE:-1000}; ACC_BURST=${ACC_BURST:-100}
ACC_LEASE=${ACC_LEASE:-20}; STORES=${STORES:-single cluster}; PARTS=${PARTS:-latency accuracy}
BIN=${SLUICE_BIN:-target/release/sluice}

source benches/lib.sh
require_tools scale_out.sh nginx wrk curl redis-server redis-cli python3
scratch sluice-scale-out

if [[ ${BUILD:-0} == 1 ]]; then
  cargo build --release --bin sluice
fi

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

UP_PORT=$(free_port)
nginx_upstream "$UP_PORT"

# One redis-server on $1, extra arguments after it.
redis() {
  local port=$1; shift
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning \
    --daemonize no "$@" >/dev/null &
  PIDS+=($!)
}

REDIS_PORT=$(free_port)
redis "$REDIS_PORT"
mkdir -p "$WORK/cluster"
CLUSTER_PORTS=()
for _ in 1 2 3; do
  port=$(free_port)
  CLUSTER_PORTS+=("$port")
  redis "$port" --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --dir "$WORK/cluster"
done
for port in "$REDIS_PORT" "${CLUSTER_PORTS[@]}"; do
  up=0
  for _ in $(seq 100); do
    [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && { up=1; break; }
    sleep 0.1
  done
  # A free port can be taken by another program between the check and redis-server's bind.
  [[ $up == 1 ]] || { echo "scale_out.sh: redis-server on port $port did not start; run again" >&2; exit 1; }
done
redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$WORK/cluster.log"
for _ in $(seq 100); do
  ok=1
  for port in "${CLUSTER_PORTS[@]}"; do
    redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok' || ok=0
  done
  [[ $ok == 1 ]] && break
  sleep 0.1
done
[[ $ok == 1 ]] || { echo "scale_out.sh: the cluster did not become ok" >&2; exit 1; }

STORE_single="url: \"redis://127.0.0.1:$REDIS_PORT\""
seeds=$(printf '"redis://127.0.0.1:%s", ' "${CLUSTER_PORTS[@]}")
STORE_cluster="cluster: [${seeds%, }]"

# sluice_config FILE STORE HTTP_PORT ADMIN_PORT TIMEOUT ON_ERROR — the config of one instance.
sluice_config() {
  cat >"$1" <<EOF
server:
  listen: 127.0.0.1:$3
  workers: 1
  shutdown_grace: 1s
admin:
  listen: 127.0.0.1:$4
store:
  redis: {$2, timeout: $5, on_error: $6}
upstreams:
  nginx: {endpoints: [http://127.0.0.1:$UP_PORT]}
routes:
  - name: local
    match: {path_prefix: /local}
    upstream: nginx
    rate_limits: [{key: client_ip, rate: 100000/s, burst: 100000, scope: local}]
  - name: global
    match: {path_prefix: /global}
    upstream: nginx
    rate_limits: [{key: client_ip, rate: 100000/s, burst: 100000, scope: global}]
  - name: lease
    match: {path_prefix: /lease}
    upstream: nginx
    rate_limits: [{key: client_ip, rate: 100000/s, burst: 100000, scope: global, lease: $LEASE}]
  - name: acc0
    match: {path_prefix: /acc0}
    upstream: nginx
    rate_limits: [{key: global, rate: $ACC_RATE/s, burst: $ACC_BURST, scope: global}]
  - name: acclease
    match: {path_prefix: /acclease}
    upstream: nginx
    rate_limits: [{key: global, rate: $ACC_RATE/s, burst: $ACC_BURST, scope: global, lease: $ACC_LEASE}]
EOF
}

# start_sluice NAME STORE TIMEOUT ON_ERROR — starts one instance; sets HTTP and ADMIN to its ports.
start_sluice() {
  HTTP=$(free_port); ADMIN=$(free_port)
  sluice_config "$WORK/$1.yaml" "$2" "$HTTP" "$ADMIN" "$3" "$4"
  RUST_LOG=warn "$BIN" run -c "$WORK/$1.yaml" 2>"$WORK/$1.log" &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && return
    sleep 0.1
  done
  echo "scale_out.sh: sluice $1 did not come up:" >&2; cat "$WORK/$1.log" >&2; exit 1
}

# outcome ADMIN_PORT ROUTE OUTCOME — the route's count of that outcome.
outcome() {
  curl -sf "http://127.0.0.1:$1/metrics" |
    awk -v m="sluice_requests_total{route=\"$2\",outcome=\"$3\"}" '$1 == m { n = $2 } END { print n + 0 }'
}

summary() { grep -E "Requests/sec|^ +50%|^ +99%|Non-2xx|Socket errors" | tr -s ' ' | tr '\n' ' '; echo; }

if [[ " $PARTS " == *" latency "* ]]; then
echo "== latency (wrk against one instance, workers: 1; limits 100000/s: nothing rejected)"
for store in $STORES; do
  var=STORE_$store
  start_sluice "lat-$store" "${!var}" 20ms local
  for path in local global lease; do
    wrk -t1 -c32 -d2s "http://127.0.0.1:$HTTP/$path" >/dev/null
  done
  for round in $(seq "$ROUNDS"); do
    for conns in 32 1; do
      for path in local global lease; do
        printf 'LAT %s %s c%s round%s: ' "$store" "$path" "$conns" "$round"
        wrk -t1 -c"$conns" -d5s --latency "http://127.0.0.1:$HTTP/$path" | summary
      done
    done
  done | tee -a "$WORK/latency.txt"
  echo "$store: $(grep -ciE "warn|error" "$WORK/lat-$store.log" || true) warning lines in sluice's log (a Redis call over 20 ms)"
done
echo
echo "== medians of $ROUNDS rounds (p50 and p99 in ms; added = minus /local's median)"
python3 - "$WORK/latency.txt" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"LAT (\S+) (\S+) c(\d+) round\d+: +50% ([\d.]+)(us|ms|s) +99% ([\d.]+)(us|ms|s) .*?Requests/sec: ([\d.]+)", line)
    if not m:
        continue
    store, path, conns, p50, u50, p99, u99, rps = m.groups()
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    runs.setdefault((store, conns, path), []).append((float(p50) * scale[u50], float(p99) * scale[u99], float(rps)))
for (store, conns, path), values in sorted(runs.items(), key=lambda kv: (kv[0][0], -int(kv[0][1]), ["local", "global", "lease"].index(kv[0][2]))):
    p50, p99, rps = (statistics.median(v[i] for v in values) for i in range(3))
    base = runs[(store, conns, "local")]
    b50, b99, brps = (statistics.median(v[i] for v in base) for i in range(3))
    print(f"{store:8} c{conns:<3} /{path:<7} p50 {p50:7.3f}  p99 {p99:7.2f}  req/s {rps:8.0f}   added p50 {p50 - b50:+.3f}  p99 {p99 - b99:+.2f}  throughput x{rps / brps:.2f}")
PY
fi
[[ " $PARTS " == *" accuracy "* ]] || exit 0
echo
echo "== accuracy: 3 instances, one limit (key: global, $ACC_RATE/s, burst $ACC_BURST)"
for store in $STORES; do
  var=STORE_$store
  admins=(); https=()
  for i in 1 2 3; do
    start_sluice "acc-$store-$i" "${!var}" 250ms deny
    admins+=("$ADMIN"); https+=("$HTTP")
  done
  for route in acc0 acclease; do
    before=0; failed_before=0
    for a in "${admins[@]}"; do
      before=$((before + $(outcome "$a" "$route" forwarded)))
      failed_before=$((failed_before + $(outcome "$a" "$route" store_unavailable)))
    done
    t0=$(date +%s.%N)
    wrks=()
    for h in "${https[@]}"; do
      wrk -t1 -c16 -d10s "http://127.0.0.1:$h/$route" >"$WORK/wrk-$store-$route-$h.out" &
      wrks+=($!)
    done
    wait "${wrks[@]}"
    t1=$(date +%s.%N)
    after=0; failed=0
    for a in "${admins[@]}"; do
      after=$((after + $(outcome "$a" "$route" forwarded)))
      failed=$((failed + $(outcome "$a" "$route" store_unavailable)))
    done
    requests=$(cat "$WORK"/wrk-"$store"-"$route"-*.out | awk '/requests in/ { n += $1 } END { print n }')
    lease=$([[ $route == acc0 ]] && echo 0 || echo "$ACC_LEASE")
    awk -v store="$store" -v lease="$lease" -v rate="$ACC_RATE" -v burst="$ACC_BURST" \
      -v admitted=$((after - before)) -v failed=$((failed - failed_before)) -v t0="$t0" -v t1="$t1" \
      -v requests="$requests" 'BEGIN {
      secs = t1 - t0; expected = rate * secs + burst
      printf "%-8s lease %-3d admitted %6d  expected %6.0f (%d/s x %.3f s + %d)  ratio %.4f  offered %.0f req/s  503 store-unavailable %d\n",
        store, lease, admitted, expected, rate, secs, burst, admitted / expected, requests / secs, failed
    }'
  done
done
