# Shared by the benchmark scripts in this folder (sourced, not run): tool and port checks, a
# scratch directory whose processes are stopped on exit, an NGINX `return 200` upstream, and
# sluice itself: built, configured ($PROXY_PORT, $ADMIN_PORT, $UP_PORT, $WORKERS), started and
# read (its rate-limit key count).

# require_tools NAME TOOL... — exit unless every TOOL is on the PATH.
require_tools() {
  local name=$1 tool; shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$name: $tool not found" >&2; exit 1; }
  done
}

# require_free_ports NAME PORT... — exit if any PORT already listens on this machine.
require_free_ports() {
  local name=$1 port; shift
  for port in "$@"; do
    if ss -Hltn "sport = :$port" | grep -q .; then
      echo "$name: 127.0.0.1:$port is in use (set UP_PORT/PROXY_PORT/ADMIN_PORT)" >&2; exit 1
    fi
  done
}

# scratch PREFIX — sets WORK to a new temporary directory and PIDS to an empty list; on exit,
# every PID in PIDS gets SIGTERM, is waited for, and WORK is removed.
scratch() {
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}

# nginx_upstream PORT — NGINX, one worker, answering 200 "ok" on 127.0.0.1:PORT, in $WORK/nginx.
nginx_upstream() {
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$1;
        location / { return 200 "ok\n"; }
    }
}
CONF
  nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
  PIDS+=($!)
}

# build_sluice — cargo build --release --bin sluice, unless BUILD=0 (the binary is built already).
build_sluice() {
  if [[ ${BUILD:-1} == 1 ]]; then
    cargo build --release --bin sluice
  fi
}

# sluice_config_head [SERVER_LINE]... — the start of a sluice config on stdout: the proxy on
# $PROXY_PORT with $WORKERS workers and a 1 s grace (plus each SERVER_LINE, e.g.
# "trusted_proxies: [127.0.0.1]"), the admin on $ADMIN_PORT, and upstream `api` at
# 127.0.0.1:$UP_PORT. The caller appends `routes:`.
sluice_config_head() {
  local line
  printf 'server:\n  listen: 127.0.0.1:%s\n  workers: %s\n  shutdown_grace: 1s\n' "$PROXY_PORT" "$WORKERS"
  for line in "$@"; do printf '  %s\n' "$line"; done
  printf 'admin:\n  listen: 127.0.0.1:%s\n' "$ADMIN_PORT"
  printf 'upstreams:\n  api:\n    endpoints: [http://127.0.0.1:%s]\n' "$UP_PORT"
}

# start_sluice — runs "$BIN" with $WORK/sluice.yaml (log: $WORK/sluice.log), sets SLUICE_PID,
# and waits (10 s at most) until the upstream on $UP_PORT answers and sluice's /readyz does.
start_sluice() {
  "$BIN" run -c "$WORK/sluice.yaml" 2>"$WORK/sluice.log" &
  SLUICE_PID=$!
  PIDS+=("$SLUICE_PID")
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$UP_PORT/" &&
      curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" && return
    sleep 0.1
  done
}

# rate_limit_keys ROUTE — the keys in ROUTE's rate-limit tables now (sluice's /metrics).
rate_limit_keys() {
  curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" |
    awk -v route="route=\"$1\"" '/^sluice_rate_limit_keys\{/ && index($0, route) { n = $2 } END { print n + 0 }'
}

# xff_lua INIT ADDRESS — a wrk script on stdout that sends each request from an address of its
# own in X-Forwarded-For: each thread knows its `id` (0, 1, …) and counts its requests in `k`.
# INIT: Lua run in each thread's init(args); ADDRESS: the IPv4 address as a number, a Lua
# expression of `id`, `k` and what INIT set.
xff_lua() {
  cat <<EOF
local next_id = 0
function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
end
function init(args)
   k = 0
   $1
end
function request()
   local n = $2
   k = k + 1
   local ip = string.format("%d.%d.%d.%d", math.floor(n / 16777216) % 256,
      math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
   return wrk.format(nil, nil, { ["X-Forwarded-For"] = ip })
end
EOF
}
