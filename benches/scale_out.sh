#!/usr/bin/env bash
# docs/scale-out.md, "Figures": global limits on one Redis and on a Redis Cluster, without and
# with a lease, against a local limit; and three instances sharing one limit.
#
#   benches/scale_out.sh            # about 3 minutes; BUILD=1 builds the release binary first
#
# What it does, all on 127.0.0.1, everything it starts stopped by PID on exit:
#   1. an NGINX upstream (`return 200`), one redis-server, and a 3-master Redis Cluster (three
#      redis-server --cluster-enabled yes + redis-cli --cluster create) in a temp dir;
#   2. latency: one sluice (`server.workers: 1`) per store, routes /local, /global, /lease with
#      the same generous limit (key: client_ip, 100000/s, burst 100000: nothing is rejected),
#      scope local, global, and global with `lease: LEASE`; per route a 2 s warm-up, then
#      `wrk -t1 -c32 -d10s --latency` and `wrk -t1 -c1 -d5s --latency`;
#   3. accuracy: three sluice instances per store, one `key: global` limit (ACC_RATE/s, burst
#      ACC_BURST) without and with `lease: ACC_LEASE`; three wrk (-t1 -c16 -d10s), one per
#      instance, at once; admitted = the increase of sluice_requests_total{outcome="forwarded"}
#      summed over the three; expected = ACC_RATE × seconds + ACC_BURST, where seconds is the
#      wall time from before the first wrk started to after the last one ended.
#
# Knobs (defaults): LEASE=100 ACC_RATE=1000 ACC_BURST=100 ACC_LEASE=20 BUILD=0
# SLUICE_BIN=target/release/sluice. Needs nginx, wrk, curl, redis-server, redis-cli, python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LEASE=${LEASE:-100}; ACC_RATE=${ACC_RATE:-1000}; ACC_BURST=${ACC_BURST:-100}
ACC_LEASE=${ACC_LEASE:-20}
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
sleep 0.5
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

# sluice_config FILE STORE HTTP_PORT ADMIN_PORT — the config of one instance.
sluice_config() {
  cat >"$1" <<EOF
server:
  listen: 127.0.0.1:$3
  workers: 1
  shutdown_grace: 1s
admin:
  listen: 127.0.0.1:$4
store:
  redis: {$2, timeout: 20ms, on_error: local}
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

# start_sluice NAME STORE — starts one instance; sets HTTP and ADMIN to its ports.
start_sluice() {
  HTTP=$(free_port); ADMIN=$(free_port)
  sluice_config "$WORK/$1.yaml" "$2" "$HTTP" "$ADMIN"
  RUST_LOG=warn "$BIN" run -c "$WORK/$1.yaml" 2>"$WORK/$1.log" &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && return
    sleep 0.1
  done
  echo "scale_out.sh: sluice $1 did not come up:" >&2; cat "$WORK/$1.log" >&2; exit 1
}

# forwarded ADMIN_PORT ROUTE — the route's forwarded count.
forwarded() {
  curl -sf "http://127.0.0.1:$1/metrics" |
    awk -v m="sluice_requests_total{route=\"$2\",outcome=\"forwarded\"}" '$1 == m { n = $2 } END { print n + 0 }'
}

summary() { grep -E "Requests/sec|^ +50%|^ +99%|Non-2xx|Socket errors" | tr -s ' ' | tr '\n' ' '; echo; }

echo "== latency (wrk against one instance, workers: 1; limits 100000/s: nothing rejected)"
for store in single cluster; do
  var=STORE_$store
  start_sluice "lat-$store" "${!var}"
  for path in local global lease; do
    wrk -t1 -c32 -d2s "http://127.0.0.1:$HTTP/$path" >/dev/null
  done
  for path in local global lease; do
    printf '%-8s %-7s c32: ' "$store" "/$path"
    wrk -t1 -c32 -d10s --latency "http://127.0.0.1:$HTTP/$path" | summary
  done
  for path in local global lease; do
    printf '%-8s %-7s c1:  ' "$store" "/$path"
    wrk -t1 -c1 -d5s --latency "http://127.0.0.1:$HTTP/$path" | summary
  done
  grep -iE "warn|error" "$WORK/lat-$store.log" || echo "$store: no warning in sluice's log"
done

echo
echo "== accuracy: 3 instances, one limit (key: global, $ACC_RATE/s, burst $ACC_BURST)"
for store in single cluster; do
  var=STORE_$store
  admins=(); https=()
  for i in 1 2 3; do
    start_sluice "acc-$store-$i" "${!var}"
    admins+=("$ADMIN"); https+=("$HTTP")
  done
  for route in acc0 acclease; do
    before=0
    for a in "${admins[@]}"; do before=$((before + $(forwarded "$a" "$route"))); done
    t0=$(date +%s.%N)
    wrks=()
    for h in "${https[@]}"; do
      wrk -t1 -c16 -d10s "http://127.0.0.1:$h/$route" >"$WORK/wrk-$store-$route-$h.out" &
      wrks+=($!)
    done
    wait "${wrks[@]}"
    t1=$(date +%s.%N)
    after=0
    for a in "${admins[@]}"; do after=$((after + $(forwarded "$a" "$route"))); done
    requests=$(cat "$WORK"/wrk-"$store"-"$route"-*.out | awk '/requests in/ { n += $1 } END { print n }')
    lease=$([[ $route == acc0 ]] && echo 0 || echo "$ACC_LEASE")
    awk -v store="$store" -v lease="$lease" -v rate="$ACC_RATE" -v burst="$ACC_BURST" \
      -v admitted=$((after - before)) -v t0="$t0" -v t1="$t1" -v requests="$requests" 'BEGIN {
      secs = t1 - t0; expected = rate * secs + burst
      printf "%-8s lease %-3d admitted %6d  expected %6.0f (%d/s x %.3f s + %d)  ratio %.4f  offered %.0f req/s\n",
        store, lease, admitted, expected, rate, secs, burst, admitted / expected, requests / secs
    }'
  done
done
