# Shared by the benchmark scripts in this folder (sourced, not run): tool and port checks, a
# scratch directory whose processes are stopped on exit, and an NGINX `return 200` upstream.

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
