#!/usr/bin/env bash
# The protocols bench: makes a private CA and a "localhost" certificate under
# /tmp/bench-run/certs (once), then runs run.sh on protocols.conf. Knobs as run.sh's.
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CERTS=/tmp/bench-run/certs
if [[ ! -s $CERTS/leaf.pem ]]; then
  mkdir -p "$CERTS"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=bench-ca -keyout "$CERTS/ca.key" -out "$CERTS/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$CERTS/leaf.key" -out "$CERTS/leaf.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' >"$CERTS/ext"
  openssl x509 -req -in "$CERTS/leaf.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" \
    -CAcreateserial -days 30 -extfile "$CERTS/ext" -out "$CERTS/leaf.pem" 2>/dev/null
fi
TARGETS_FILE=$BENCH/protocols.conf exec "$BENCH/run.sh" "$@"
