#!/usr/bin/env bash
# Instructions per request of sluice (or NGINX) under callgrind: repeatable on a noisy machine,
# where wall-clock benchmarks are not. Two runs of different lengths; (Ir2 - Ir1) / (N2 - N1)
# cancels start-up and shutdown.
#
#   benches/ir.sh sluice benches/peer/sluice-proxy.yaml http://127.0.0.1:18085/
#   benches/ir.sh nginx  $PWD/benches/peer/nginx-proxy.conf  http://127.0.0.1:18081/
#
# The upstream must already run on 18080, e.g. the peer bench's:
#   mkdir -p /tmp/bench-run && nginx -p /tmp/bench-run/ -c $PWD/benches/peer/nginx-upstream.conf
# Needs valgrind and wrk. SLUICE_BIN overrides target/release/sluice.
set -euo pipefail
KIND=$1; CFG=$2; URL=$3
BIN=${SLUICE_BIN:-target/release/sluice}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

run() { # seconds -> "requests Ir"
  local out=$WORK/cg.$1 pid n ir
  if [[ $KIND == nginx ]]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" nginx -p "$WORK/" -e "$WORK/err.log" -c "$CFG" \
      -g 'daemon off; master_process off;' >"$WORK/log" 2>&1 &
  else
    valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" run -c "$CFG" >"$WORK/log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 300); do curl -s -o /dev/null "$URL" && break; sleep 0.1; done
  n=$(wrk -t1 -c8 -d"$1"s "$URL" | awk '/requests in/{print $1}')
  if [[ $KIND == nginx ]]; then kill -QUIT $pid; else kill -TERM $pid; fi
  wait $pid 2>/dev/null || true
  ir=$(cat "$out"* | awk '/^summary:/{s+=$2} END{print s}')
  echo "$n $ir"
}
read -r n1 i1 < <(run 1)
read -r n2 i2 < <(run 6)
echo "$KIND $CFG: $(( (i2 - i1) / (n2 - n1) )) instructions/request ($n1 and $n2 requests)"
