#!/usr/bin/env bash
# The bypass review of issue 13: tries every spelling of `/login` (and of the host
# admin.example.com) it knows against a running sluice whose `login` route has a 1/m limit, and
# reports which got through (see benches/bypass/review.py for the method). Not a benchmark:
# it lives here with the other scripts that drive a running sluice.
#
#   benches/bypass.sh                 # debug build; about 10 s once built
#
# All on 127.0.0.1; everything it starts is stopped by PID on exit. Knobs (defaults):
# UP_PORT=18482 PROXY_PORT=18480 ADMIN_PORT=18481 BUILD=1 (cargo build --bin sluice; 0 skips
# it) SLUICE_BIN=target/debug/sluice. Needs python3 and curl (with HTTP/2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

UP_PORT=${UP_PORT:-18482}; PROXY_PORT=${PROXY_PORT:-18480}; ADMIN_PORT=${ADMIN_PORT:-18481}
BIN=${SLUICE_BIN:-target/debug/sluice}

source benches/lib.sh
require_tools bypass.sh python3 curl
require_free_ports bypass.sh "$UP_PORT" "$PROXY_PORT" "$ADMIN_PORT"
scratch sluice-bypass

if [[ ${BUILD:-1} == 1 ]]; then
  cargo build --bin sluice
fi

cat >"$WORK/sluice.yaml" <<YAML
server: { listen: 127.0.0.1:$PROXY_PORT }
admin: { listen: 127.0.0.1:$ADMIN_PORT }
upstreams: { api: { endpoints: [http://127.0.0.1:$UP_PORT] } }
routes:
  - name: admin-host
    match: { host: admin.example.com }
    upstream: api
    rate_limits: [{ name: admin-limit, key: client_ip, rate: 1/m, burst: 1 }]
  - name: login
    match: { path_prefix: /login }
    upstream: api
    rate_limits: [{ name: login-limit, key: client_ip, rate: 1/m, burst: 1 }]
  - name: catch-all
    upstream: api
    rate_limits: [{ name: catch-all-limit, key: client_ip, rate: 1000/s }]
YAML

python3 benches/bypass/upstream.py "$UP_PORT" &
PIDS+=($!)
start_sluice
python3 benches/bypass/review.py "$PROXY_PORT"
