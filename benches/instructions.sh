#!/usr/bin/env bash
# benches/instructions.sh: `make bench-instructions`. User-space instructions
# per proxied request, gwproxy beside nginx proxy_pass, counted by callgrind.
#
# Wall-clock and /proc CPU figures on this shared 2-core machine move by
# +-15 % between runs (and the kernel's share of loopback TCP is charged to
# whichever task happens to run); callgrind's instruction counts do not move
# for the same binary and input. They leave out the kernel, so they measure
# what each proxy's own code costs, not the whole request. (valgrind's CPU
# has no SHA extensions, so gwproxy's SHA-256 of the secret runs sha2's
# portable code here: ~3.5k of the count, a few hundred cycles on a CPU
# with SHA-NI.)
#
# One nginx (the same ~400-byte JSON upstream as benches/bench.sh) is the
# gateway. nginx proxy_pass (one process, master_process off) and gwproxy
# (one worker thread) each run under callgrind with instrumentation off; after a
# warm-up, it is switched on, h2load sends exactly REQUESTS requests
# over CONNECTIONS kept-alive HTTP/1.1 connections, and the process is
# stopped. Instructions collected / REQUESTS is the figure.
#
# Knobs (environment): REQUESTS=20000, CONNECTIONS=16, GWPROXY_BIN=path,
# RESULTS_DIR=bench-results. Everything listens on 127.0.0.1 only; every
# process started is stopped by its own PID.

set -euo pipefail

REQUESTS=${REQUESTS:-20000}
CONNECTIONS=${CONNECTIONS:-16}
GWPROXY_BIN=${GWPROXY_BIN:-}
RESULTS_DIR=${RESULTS_DIR:-bench-results}
WARMUP=500
SECRET=bench-instructions-secret
BENCH_PATH=/test-oas/get

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'instructions: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck source=benches/loopback.sh
source benches/loopback.sh

PIDS=()
WORK_DIR=$(mktemp -d /tmp/gwproxy-instructions.XXXXXX)
chmod 755 "$WORK_DIR"
trap stop_started EXIT
trap 'exit 130' INT TERM

# Debian packages for the tools, installed when missing and run as root.
PACKAGES=(valgrind nginx nghttp2-client curl)
missing=()
for tool in valgrind callgrind_control nginx h2load curl python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]} > 0)); then
  ((EUID == 0)) || die "missing ${missing[*]} (Debian: apt-get install -y ${PACKAGES[*]})"
  log "installing ${PACKAGES[*]}"
  apt-get install -y "${PACKAGES[@]}" >/dev/null ||
    { apt-get update >/dev/null && apt-get install -y "${PACKAGES[@]}" >/dev/null; }
fi
if [[ -z $GWPROXY_BIN ]]; then
  log "building gwproxy (cargo build --release --bins)"
  cargo build --release --bins >&2
  GWPROXY_BIN=target/release/gwproxy
fi

UPSTREAM_PORT=$(free_port)
NGINX_PORT=$(free_port)
GWPROXY_PORT=$(free_port)

# nginx's directives for both configs; temp paths inside this run's prefix.
nginx_conf() {
  cat <<EOF
daemon off;
master_process off;
worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi; uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;
$1
}
EOF
}

start_upstream() {
  mkdir -p "$WORK_DIR/upstream/tmp"
  nginx_conf "    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / {
            default_type application/json;
            return 200 '{\"args\":{},\"headers\":{\"Accept\":\"*/*\",\"Accept-Encoding\":\"gzip\",\"Content-Type\":\"application/json\",\"Host\":\"httpbin.org\",\"Test\":\"tyk\",\"User-Agent\":\"Go-http-client/1.1\",\"X-Amzn-Trace-Id\":\"Root=1-67642968-11206636527acf9a25d230c3\"},\"origin\":\"::1, 81.18.84.15\",\"url\":\"http://httpbin.org/get\",\"note\":\"gwproxy bench upstream\"}\n';
        }
    }" >"$WORK_DIR/upstream/nginx.conf"
  nginx -p "$WORK_DIR/upstream" -c nginx.conf 2>>"$WORK_DIR/upstream.log" &
  PIDS+=($!)
  wait_listening "$UPSTREAM_PORT"
}

# Starts "$@" under callgrind, counting nothing yet; leaves its PID in CG_PID.
start_counted() {
  local name=$1
  shift
  valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$WORK_DIR/$name.callgrind" "$@" >"$WORK_DIR/$name.log" 2>&1 &
  CG_PID=$!
  PIDS+=("$CG_PID")
}

# Stops a process under callgrind, which writes its counts on the way out:
# slower than stop_pid allows, so up to 60 s before SIGKILL.
stop_counted() {
  local pid=$1 tries=600
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((tries-- > 0)); do
    sleep 0.1
  done
  stop_pid "$pid"
}

# h2load's fixed-count load: $1 requests to $2, extra h2load arguments after.
load() {
  local count=$1 url=$2
  shift 2
  h2load --h1 -n "$count" -c "$CONNECTIONS" "$@" "$url" >"$WORK_DIR/h2load.txt" 2>&1 ||
    die "h2load failed: $(tail -n 3 "$WORK_DIR/h2load.txt")"
  grep -q "status codes: $count 2xx" "$WORK_DIR/h2load.txt" ||
    die "not every request got a 2xx: $(grep 'status codes' "$WORK_DIR/h2load.txt")"
}

# Warms $2 up, counts REQUESTS of it, stops it; prints instructions/request.
count_instructions() {
  local name=$1 url=$2
  shift 2
  load "$WARMUP" "$url" "$@"
  callgrind_control -i on "$CG_PID" >/dev/null 2>&1
  load "$REQUESTS" "$url" "$@"
  callgrind_control -i off "$CG_PID" >/dev/null 2>&1
  stop_counted "$CG_PID"
  grep -q "Collected :" "$WORK_DIR/$name.log" || die "callgrind wrote no count for $name"
  awk -v n="$REQUESTS" '/Collected :/ { gsub(/,/, "", $NF); printf "%d\n", $NF / n }' \
    "$WORK_DIR/$name.log"
}

start_upstream

log "nginx proxy_pass under callgrind on $NGINX_PORT"
mkdir -p "$WORK_DIR/nginx/tmp"
nginx_conf "    upstream gateway { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }" >"$WORK_DIR/nginx/nginx.conf"
start_counted nginx nginx -p "$WORK_DIR/nginx" -c nginx.conf
wait_listening "$NGINX_PORT"
NGINX_IR=$(count_instructions nginx "http://127.0.0.1:$NGINX_PORT$BENCH_PATH")

log "gwproxy under callgrind on $GWPROXY_PORT"
cat >"$WORK_DIR/gwproxy.json" <<EOF
{
  "listen": "127.0.0.1:$GWPROXY_PORT",
  "workers": 1,
  "users": [{ "name": "bench", "secret": "$SECRET" }],
  "gateways": [{ "url": "http://127.0.0.1:$UPSTREAM_PORT" }]
}
EOF
printf '{"method":"GET","url":"http://127.0.0.1:%s%s","headers":{"test":"tyk","Content-Type":"application/json"},"body":{"name":"New Resource","description":"Description of the resource."}}' \
  "$UPSTREAM_PORT" "$BENCH_PATH" >"$WORK_DIR/request.json"
start_counted gwproxy "$GWPROXY_BIN" --config "$WORK_DIR/gwproxy.json"
wait_listening "$GWPROXY_PORT"
GWPROXY_IR=$(count_instructions gwproxy "http://127.0.0.1:$GWPROXY_PORT/api/proxy" \
  -d "$WORK_DIR/request.json" -H "Authorization: $SECRET")

# ---------------------------------------------------------------------------
# The report, with gwproxy's costliest functions (inclusive) for a start on
# where its instructions go.

mkdir -p "$RESULTS_DIR"
REPORT=$RESULTS_DIR/instructions-$(date +%Y-%m-%d-%H%M%S).md
{
  echo "# User-space instructions per proxied request, $(date '+%Y-%m-%d %H:%M:%S %Z')"
  echo
  echo "gwproxy $(git rev-parse --short HEAD 2>/dev/null || echo '?')," \
    "$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(valgrind --version)." \
    "h2load --h1, $REQUESTS requests over $CONNECTIONS connections after $WARMUP to warm up."
  echo
  echo "| contender | instructions per request |"
  echo "| --- | ---: |"
  echo "| nginx proxy_pass (GET, streamed back) | $NGINX_IR |"
  echo "| gwproxy /api/proxy (seed's JSON request, envelope) | $GWPROXY_IR |"
  echo
  awk -v g="$GWPROXY_IR" -v n="$NGINX_IR" 'BEGIN { printf "gwproxy/nginx: %.2f\n", g / n }'
  echo
  echo "gwproxy's costliest functions, inclusive, per request:"
  echo
  echo '```'
  callgrind_annotate --inclusive=yes "$WORK_DIR/gwproxy.callgrind" 2>/dev/null |
    awk -v n="$REQUESTS" '
      /file:function/ { listing = 1; next }
      /^-- / { listing = 0 }
      listing && $1 ~ /^[0-9,]+$/ {
        ir = $1; gsub(/,/, "", ir)
        fn = $0; sub(/^.*%\)  */, "", fn); sub(/ \[.*$/, "", fn)
        sub(/^[^ ]*\.(rs|c|h|S):/, "", fn)
        # The runtime frames that hold everything are left out.
        if (fn ~ /^(main|gwproxy::main|std::|tokio::runtime::|core::ops::function)/) next
        if (fn ~ /^(\?\?\?|\(below main\))/) next
        if (!(fn in seen) && ir / n >= 1000 && shown++ < 30) printf "%8d  %s\n", ir / n, fn
        seen[fn] = 1
      }'
  echo '```'
} >"$WORK_DIR/report.md"
cp "$WORK_DIR/report.md" "$REPORT"
cat "$REPORT"
log "report written to $REPORT"
