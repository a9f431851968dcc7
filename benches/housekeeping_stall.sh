#!/usr/bin/env bash
# Request latency while the housekeeping pass walks a key table of 1,000,000 keys, with
# `server.workers: 1` (issue 12, item 6).
#
#   benches/housekeeping_stall.sh                          # 2-3 minutes once built
#   SLUICE_BIN=/tmp/sluice-old BUILD=0 benches/housekeeping_stall.sh   # another binary
#
# All on 127.0.0.1; everything it starts is stopped by PID on exit.
#   1. `cargo build --release --bin sluice` (BUILD=0 skips it), an NGINX upstream answering 200;
#   2. sluice, `workers: 1`, `trusted_proxies: [127.0.0.1]`, two routes:
#      - `filled` (/filled): one `client_ip` limit of 1/h, burst 1 — no key becomes evictable
#        during the run, so every housekeeping pass (every 5 s) walks all of them;
#      - `probe` (/probe): no limit, forwarded to NGINX;
#   3. the fill: wrk sends a distinct X-Forwarded-For per request to /filled (FILL s) until the
#      `sluice_rate_limit_keys` gauge reads KEYS;
#   4. the probe, open loop: two h2load runs side by side for DURATION s, each CLIENTS
#      HTTP/1.1 connections sending RPS requests per second each on a fixed schedule (a late
#      response does not delay the schedule while it is shorter than 1/RPS), the clients'
#      schedules 1 ms apart so that the requests are spread evenly:
#      - to /probe (forwarded to NGINX);
#      - to /filled with the X-Forwarded-For of one key already in the table (answered 429 by
#        sluice: this request reads the big table, so it waits while its shard is locked);
#      h2load's --log-file gives each request's start time and latency;
#   5. the report (python3): latency percentiles of all requests; of the requests started
#      around a pass (from 2 ms before it starts to 25 ms after: a pass over 1M keys takes
#      5-20 ms here); and, as the baseline, of those started in the same windows 2.5 s later.
#      When the passes are: from the log, when it has them (`RUST_LOG=info,sluice::app=debug`:
#      each pass logs its duration when done; binaries before that change do not), else from
#      the interval's schedule (the first pass when the listener comes up, per its log line, then
#      every 5 s; during the probe the worker is far from saturated, so the ticks are on time).
#      Both clocks are the wall clock (h2load's log and sluice's log). OUT=DIR keeps the logs.
# Knobs (defaults): KEYS=1000000 FILL=180 DURATION=60 CLIENTS=25 RPS=40 (per client, per run:
# 2 × 25 × 40 = 2000 req/s in all) WORKERS=1 UP_PORT=18301 PROXY_PORT=18302 ADMIN_PORT=18303
# BUILD=1 OUT=(none). Needs nginx, wrk, h2load, curl, python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KEYS=${KEYS:-1000000}; FILL=${FILL:-180}; DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-25}; RPS=${RPS:-40}; WORKERS=${WORKERS:-1}
UP_PORT=${UP_PORT:-18301}; PROXY_PORT=${PROXY_PORT:-18302}; ADMIN_PORT=${ADMIN_PORT:-18303}
BIN=${SLUICE_BIN:-target/release/sluice}

source benches/lib.sh
require_tools housekeeping_stall.sh nginx wrk h2load curl python3
require_free_ports housekeeping_stall.sh "$UP_PORT" "$PROXY_PORT" "$ADMIN_PORT"

scratch sluice-housekeeping

build_sluice

nginx_upstream "$UP_PORT"

{
  sluice_config_head "trusted_proxies: [127.0.0.1]"
  cat <<EOF
routes:
  - name: filled
    match: { path_prefix: /filled }
    upstream: api
    rate_limits:
      - name: per-client
        key: client_ip
        rate: 1/h
        burst: 1
  - name: probe
    match: { path_prefix: /probe }
    upstream: api
EOF
} >"$WORK/sluice.yaml"
RUST_LOG=${RUST_LOG:-info} start_sluice

# Run r (the script's argument), thread id: addresses 11.0.0.0 + (2r + id)·2^20 + k, k counting
# up: a 5 s run sends far fewer than 2^20 requests per thread, so no address repeats.
xff_lua 'run = tonumber(args[1]) or 0' \
  '0x0b000000 + (2 * run + id) * 0x100000 + (k % 0x100000)' >"$WORK/xff.lua"

keys() { rate_limit_keys filled; }

# The fill: wrk in steps of 5 s until the table holds KEYS keys (at most FILL s). KEYS=0 is the
# control: the same probe with an empty table.
filled=0
[[ $KEYS -gt 0 ]] && for run in $(seq 0 $((FILL / 5 - 1))); do
  wrk -t2 -c64 -d5s -s "$WORK/xff.lua" "http://127.0.0.1:$PROXY_PORT/filled" -- "$run" >/dev/null
  filled=$(keys)
  [[ $filled -ge $KEYS ]] && break
done
echo "keys in the table: $filled"
[[ $filled -ge $KEYS ]] || { echo "housekeeping_stall.sh: only $filled of $KEYS keys: raise FILL" >&2; exit 1; }
sleep 2

# The probe: both runs at once, paced. h2load's clients send on timers that start with the
# client: created 1 ms apart (-r 1 per 1 ms), CLIENTS clients at RPS each spread their requests
# evenly instead of sending them in bursts of CLIENTS (-r excludes -D: the duration is -n).
n=$((DURATION * CLIENTS * RPS))
h2load --h1 -c "$CLIENTS" --rps "$RPS" -n "$n" -r 1 --rate-period 1ms --log-file "$WORK/probe.log" \
  "http://127.0.0.1:$PROXY_PORT/probe" >"$WORK/h2load-probe.out" &
P1=$!
h2load --h1 -c "$CLIENTS" --rps "$RPS" -n "$n" -r 1 --rate-period 1ms --log-file "$WORK/filled.log" \
  -H "X-Forwarded-For: 11.0.0.1" "http://127.0.0.1:$PROXY_PORT/filled" >"$WORK/h2load-filled.out" &
P2=$!
wait "$P1" "$P2"
grep -h -E '^requests:|^status codes:' "$WORK/h2load-probe.out" "$WORK/h2load-filled.out" | sed 's/^/h2load: /'
echo "keys in the table after the probe: $(keys)"
grep -E 'housekeeping' "$WORK/sluice.log" | tail -3 || true

[[ -n ${OUT:-} ]] && mkdir -p "$OUT" && cp "$WORK/probe.log" "$WORK/filled.log" "$WORK/sluice.log" "$OUT/"
python3 - "$WORK/probe.log" "$WORK/filled.log" "$WORK/sluice.log" <<'EOF'
import datetime, re, sys

PERIOD = 5_000_000          # µs: the housekeeping interval
BEFORE, AFTER = 2_000, 25_000  # µs: the window around the start of a pass

def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                rows.append((int(parts[0]), int(parts[2]) / 1000.0))  # start µs, latency ms
    return sorted(rows)

def stamp(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e6

def pass_starts(path, first, last):
    """Start times of the passes within [first, last]: from the log's `housekeeping pass done
    took=…` lines when it has them, else the interval's schedule (first tick when the listener
    came up, then every 5 s)."""
    unit = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
    logged, up = [], None
    for line in open(path, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        m = re.match(r"(\S+Z) .*housekeeping pass done took=([0-9.]+)(ns|µs|us|ms|s)\b", line)
        if m:
            logged.append((stamp(m.group(1)) - float(m.group(2)) * unit[m.group(3)], float(m.group(2)) * unit[m.group(3)] / 1000))
        m = re.match(r"(\S+Z) .*http listener up", line)
        if m and up is None:
            up = stamp(m.group(1))
    if logged:
        inside = [(s, d) for s, d in logged if first - AFTER <= s <= last]
        return [s for s, _ in inside], [d for _, d in inside], "logged"
    k0 = int((first - up) // PERIOD)
    return [up + k * PERIOD for k in range(k0, k0 + int((last - first) // PERIOD) + 2) if first - AFTER <= up + k * PERIOD <= last], [], "scheduled"

def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, int(-(-len(values) * p // 100)) - 1))]

def inside(rows, starts, shift=0):
    return [l for s, l in rows if any(a + shift - BEFORE <= s <= a + shift + AFTER for a in starts)]

def report(name, rows, starts):
    lat = [l for _, l in rows]
    during = inside(rows, starts)
    off = inside(rows, starts, PERIOD // 2)
    print(f"{name:<8} all: n={len(lat)} p50 {pct(lat, 50):.2f} p99 {pct(lat, 99):.2f} max {max(lat):.2f} ms"
          f" | around a pass: n={len(during)} p99 {pct(during, 99):.2f} max {max(during, default=float('nan')):.2f} ms"
          f" | same windows 2.5 s later: n={len(off)} p99 {pct(off, 99):.2f} max {max(off, default=float('nan')):.2f} ms")

probe, filled = load(sys.argv[1]), load(sys.argv[2])
both = sorted(probe + filled)
starts, took, how = pass_starts(sys.argv[3], both[0][0], both[-1][0])
line = f"passes during the probe: {len(starts)} ({how})"
if took:
    t = sorted(took)
    line += f", took {t[0]:.1f}-{t[-1]:.1f} ms (median {pct(t, 50):.1f})"
print(line)
report("/probe", probe, starts)
report("/filled", filled, starts)
report("both", both, starts)
EOF
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
