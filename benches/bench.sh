#!/usr/bin/env bash
# benches/bench.sh: `make bench`. Measures gwproxy against nginx on loopback.
#
# One nginx is the upstream gateway (a fixed ~400-byte JSON answer). The same
# wrk load then goes three ways: straight at the upstream (the ceiling), through
# an nginx reverse proxy with a keep-alive upstream pool (the competitor), and
# through gwproxy's POST /api/proxy; then both proxies again terminating TLS
# with the same certificate, over kept-alive connections and with a new
# handshake for every request. For each run it records throughput,
# latency, errors, the proxy's CPU time per 1,000 requests, its peak memory
# and how well it reused upstream connections; then it measures what an idle
# client connection costs gwproxy. The Markdown report is printed and written
# to bench-results/bench-<date>.md.
#
# Knobs (environment):
#   DURATION=12s         length of each wrk run
#   ROUNDS=2             plain-HTTP runs of each contender, interleaved; the
#                        ratios compare the means (one run moves +-15 % here)
#   WORKERS=2            nginx proxy worker processes = gwproxy tokio worker threads
#   UPSTREAM_WORKERS=1   upstream nginx worker processes
#   THREADS=2            wrk threads
#   CONNECTIONS="64 512" wrk connection counts, one run per contender each
#   IDLE_CONNS=10000     idle connections for benches/idle_conns.py (0 skips it)
#   TLS_CONNECTIONS=64   wrk connections for the kept-alive TLS rows ("" skips TLS)
#   HANDSHAKE_CONNECTIONS=16  wrk connections for the new-handshake rows
#   GWPROXY_BIN=path     use this gwproxy binary instead of building one
#   RESULTS_DIR=bench-results
#
# Everything listens on 127.0.0.1 only, and every process this script starts
# is stopped by its own PID when it exits.

set -euo pipefail

DURATION=${DURATION:-12s}
ROUNDS=${ROUNDS:-2}
WORKERS=${WORKERS:-2}
UPSTREAM_WORKERS=${UPSTREAM_WORKERS:-1}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-"64 512"}
IDLE_CONNS=${IDLE_CONNS:-10000}
TLS_CONNECTIONS=${TLS_CONNECTIONS-64}
HANDSHAKE_CONNECTIONS=${HANDSHAKE_CONNECTIONS:-16}
GWPROXY_BIN=${GWPROXY_BIN:-}
RESULTS_DIR=${RESULTS_DIR:-bench-results}

# The path every contender serves; the seed's example request asks for it.
BENCH_PATH=/test-oas/get

# Work from the repository root, whatever directory make or the user ran from.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Processes this script started, so the EXIT trap can stop exactly them.

NGINX_MASTERS=()
OTHER_PIDS=()
WORK_DIR=""

# Prints the PIDs whose parent is $1, read from /proc/*/stat (nginx workers).
children_of() {
  local parent=$1 stat_file stat fields
  for stat_file in /proc/[0-9]*/stat; do
    # A process may exit between the glob and the read.
    { read -r stat <"$stat_file"; } 2>/dev/null || continue
    # The command name (field 2) may hold spaces or ")"; fields follow the last ")".
    read -r -a fields <<<"${stat##*) }"
    if [[ ${fields[1]} == "$parent" ]]; then
      stat_file=${stat_file#/proc/}
      echo "${stat_file%/stat}"
    fi
  done
}

# stop_pid, free_port, wait_listening.
# shellcheck source=benches/loopback.sh
source benches/loopback.sh

# shellcheck disable=SC2317  # the EXIT trap's handler
cleanup() {
  local pid master workers
  for pid in "${OTHER_PIDS[@]}"; do
    stop_pid "$pid"
  done
  # nginx's master stops its workers on SIGTERM; any worker it left behind
  # (master killed hard) is stopped by the PID noted before.
  for master in "${NGINX_MASTERS[@]}"; do
    workers=$(children_of "$master")
    stop_pid "$master"
    for pid in $workers; do
      stop_pid "$pid"
    done
  done
  if [[ -n $WORK_DIR ]]; then
    rm -rf "$WORK_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# Tools: install what is missing when we may, else say what to install.

ensure_tools() {
  local missing=() tool
  for tool in nginx wrk curl python3 openssl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  if ((EUID != 0)); then
    die "missing ${missing[*]}; install them (Debian: apt-get install -y ${missing[*]})"
  fi
  log "installing ${missing[*]}"
  # The nginx package may also start the system's nginx service (port 80);
  # this script never touches it and uses only the binary, on its own ports.
  apt-get install -y "${missing[@]}" >/dev/null ||
    { apt-get update >/dev/null && apt-get install -y "${missing[@]}" >/dev/null; }
}

# Many connections need many descriptors: c512 through a proxy is 1,000+, the
# idle-connection test 10,000+. Root may lift the hard limit; others get theirs.
raise_fd_limit() {
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  log "open-file limit: $(ulimit -n)"
}

# Prints $1 free loopback TCP ports. The kernel picks them; they are released
# just before use, which is racy only against another process doing the same.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Waits until something accepts TCP on 127.0.0.1:$1, or fails after 10 s.
wait_port() {
  local port=$1 tries=100
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    ((tries-- > 0)) || return 1
    sleep 0.1
  done
}

# ---------------------------------------------------------------------------
# Contenders.

build_gwproxy() {
  if [[ -n $GWPROXY_BIN ]]; then
    [[ -x $GWPROXY_BIN ]] || die "GWPROXY_BIN=$GWPROXY_BIN is not an executable"
    return
  fi
  log "building gwproxy (cargo build --release --bins)"
  cargo build --release --bins
  GWPROXY_BIN=target/release/gwproxy
}

# Writes the directives both nginx configs share. Temp paths are set because
# Debian compiles absolute ones under /var/lib/nginx, which a non-root run
# cannot use; relative paths land in this nginx's own prefix.
nginx_common() {
  local workers=$1
  cat <<EOF
daemon off;
worker_processes $workers;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 20000; }
EOF
}

nginx_temp_paths() {
  cat <<'EOF'
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    access_log off;
EOF
}

# The upstream answers every request with the same JSON, shaped like the
# httpbin answer in the OpenAPI seed's example, so gwproxy parses and embeds a
# realistic body. keepalive_requests is raised so the upstream never closes a
# pooled connection itself: every new connection counted is the proxy's doing.
write_upstream_conf() {
  nginx_common "$UPSTREAM_WORKERS"
  cat <<EOF
http {
$(nginx_temp_paths)
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / {
            default_type application/json;
            return 200 '{"args":{},"headers":{"Accept":"*/*","Accept-Encoding":"gzip","Accept-Language":"en-GB,en;q=0.9","Content-Length":"83","Content-Type":"application/json","Host":"httpbin.org","Test":"tyk","X-Forwarded-Proto":"http","User-Agent":"Go-http-client/1.1","X-Amzn-Trace-Id":"Root=1-67642968-11206636527acf9a25d230c3"},"origin":"::1, 81.18.84.15","url":"http://httpbin.org/get","note":"gwproxy bench upstream"}\n';
        }
    }
    # Separate port, so status reads never mix with the benchmark's traffic.
    server {
        listen 127.0.0.1:$STATUS_PORT;
        location / { stub_status; }
    }
}
EOF
}

# The fair competitor: nginx's reverse proxy with HTTP/1.1 keep-alive to the
# upstream (the Connection header cleared, an idle pool of 256 per worker),
# and no cap on requests per pooled connection, as gwproxy has none.
write_proxy_conf() {
  nginx_common "$WORKERS"
  cat <<EOF
http {
$(nginx_temp_paths)
    keepalive_requests 1000000;
    upstream upstream_pool {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://upstream_pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    # The same proxy terminating TLS with gwproxy's certificate, protocols
    # and resumption (a session cache and tickets, as rustls has).
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl;
        ssl_certificate $WORK_DIR/server.pem;
        ssl_certificate_key $WORK_DIR/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:10m;
        location / {
            proxy_pass http://upstream_pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# One ECDSA P-256 certificate for localhost that both TLS listeners serve,
# made for this run only.
make_certificate() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK_DIR/server.key" -out "$WORK_DIR/server.pem" 2>/dev/null
}

# Starts an nginx in its own prefix directory $1 with config $2, $3 workers
# and port $4, as a background job of this shell ("daemon off"), so $! is its
# master's PID; leaves that PID in STARTED_PID.
start_nginx() {
  local prefix=$1 conf=$2 workers=$3 port=$4 master tries=100
  mkdir -p "$prefix/tmp"
  nginx -p "$prefix/" -c "$conf" -e "$prefix/error.log" >"$prefix/stderr.log" 2>&1 &
  master=$!
  NGINX_MASTERS+=("$master")
  # Ready once every worker has forked and the port accepts.
  until (($(children_of "$master" | wc -l) >= workers)); do
    if ! kill -0 "$master" 2>/dev/null || ((tries-- <= 0)); then
      cat "$prefix/stderr.log" "$prefix/error.log" >&2
      die "nginx in $prefix did not start"
    fi
    sleep 0.1
  done
  wait_port "$port" || die "nginx in $prefix is not listening on $port"
  STARTED_PID=$master
}

# Starts gwproxy on port $1 in front of the upstream, terminating TLS with
# the run's certificate when $2 is "tls"; leaves its PID in STARTED_PID.
start_gwproxy() {
  local port=$1 conf=$WORK_DIR/gwproxy-$1.json log=$WORK_DIR/gwproxy-$1.log tries=100 pid
  local tls=""
  if [[ ${2:-} == tls ]]; then
    tls="\"tls\": { \"cert_file\": \"$WORK_DIR/server.pem\", \"key_file\": \"$WORK_DIR/server.key\" },"
  fi
  # Idle client connections must outlive the idle-connection test, and
  # max_connections must admit all of them.
  cat >"$conf" <<EOF
{
  "listen": "127.0.0.1:$port",
  "workers": $WORKERS,
  $tls
  "users": [{ "name": "bench", "secret": "$SECRET" }],
  "gateways": [{ "url": "http://127.0.0.1:$UPSTREAM_PORT" }],
  "limits": { "max_concurrent_requests": 4096, "max_connections": $((IDLE_CONNS + 20000)) },
  "timeouts": { "idle_ms": 120000 },
  "pool": { "max_idle_per_gateway": 1024 }
}
EOF
  "$GWPROXY_BIN" --config "$conf" >"$log" 2>&1 &
  pid=$!
  OTHER_PIDS+=("$pid")
  until grep -q "gwproxy listening" "$log"; do
    if ! kill -0 "$pid" 2>/dev/null || ((tries-- <= 0)); then
      cat "$log" >&2
      die "gwproxy did not start"
    fi
    sleep 0.1
  done
  STARTED_PID=$pid
}

# wrk counts only HTTP statuses >= 400 as errors, and gwproxy answers 200 even
# when the gateway failed, so check each path's answer once before timing it.
check_answers() {
  local direct via_nginx via_gwproxy
  direct=$(curl -fsS "http://127.0.0.1:$UPSTREAM_PORT$BENCH_PATH")
  via_nginx=$(curl -fsS "http://127.0.0.1:$NGINX_PORT$BENCH_PATH")
  [[ $via_nginx == "$direct" ]] || die "nginx proxy answered: $via_nginx"
  via_gwproxy=$(curl -fsS "http://127.0.0.1:$GWPROXY_PORT/api/proxy" \
    -H "Authorization: $SECRET" -H 'Content-Type: application/json' \
    --data "$(proxy_request_body)")
  [[ $via_gwproxy =~ \"status_code\":\ ?200 && $via_gwproxy == *httpbin.org* ]] ||
    die "gwproxy answered: $via_gwproxy"
}

# Both TLS listeners serve the run's certificate and answer as in plain HTTP.
check_tls_answers() {
  local via_nginx via_gwproxy tls=(--cacert "$WORK_DIR/server.pem")
  via_nginx=$(curl -fsS "${tls[@]}" "https://127.0.0.1:$NGINX_TLS_PORT$BENCH_PATH")
  [[ $via_nginx == *httpbin.org* ]] || die "nginx TLS proxy answered: $via_nginx"
  via_gwproxy=$(curl -fsS "${tls[@]}" "https://127.0.0.1:$GWPROXY_TLS_PORT/api/proxy" \
    -H "Authorization: $SECRET" --data "$(proxy_request_body)")
  [[ $via_gwproxy =~ \"status_code\":\ ?200 ]] || die "gwproxy TLS answered: $via_gwproxy"
}

# The same request benches/proxy.lua sends, for the curl check.
proxy_request_body() {
  printf '{"method":"GET","url":"%s","headers":{"test":"tyk","Content-Type":"application/json"},"body":{"name":"New Resource","description":"Description of the resource."}}' \
    "$GWPROXY_TARGET"
}

# ---------------------------------------------------------------------------
# Measuring.

# Prints utime+stime in clock ticks summed over the given PIDs.
cpu_ticks() {
  local total=0 pid stat fields
  for pid in "$@"; do
    read -r stat <"/proc/$pid/stat"
    read -r -a fields <<<"${stat##*) }"
    # fields[0] is stat field 3, so utime (14) and stime (15) are 11 and 12.
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}

# Prints VmHWM (peak resident set) in KiB summed over the given PIDs.
peak_rss_kib() {
  local total=0 pid kib
  for pid in "$@"; do
    kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

# Restarts VmHWM from the current RSS (Linux >= 4.0), so each run reports its
# own peak rather than the process's lifetime one.
reset_peak_rss() {
  local pid
  for pid in "$@"; do
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || PEAK_RESET=no
  done
}

# Prints the upstream's stub_status "accepts requests" counters. Each read is
# itself one connection and one request, which delta() takes off.
upstream_counters() {
  curl -fsS "http://127.0.0.1:$STATUS_PORT/" | awk 'NR == 3 { print $1, $3 }'
}

# Converts a wrk latency (e.g. 812.00us, 1.53ms, 2.01s) to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; unit = v; sub(/^[0-9.]+/, "", unit)
    if (unit == "us") n /= 1000; else if (unit == "s") n *= 1000
    else if (unit == "m") n *= 60000
    printf "%.2f", n
  }'
}

# One wrk run against one contender; appends a row to ROWS. WRK_HEADERS
# holds extra -H arguments (the new-handshake rows send Connection: close).
#   $1 label, $2 connections, $3 URL, $4 lua script or "", $5... the
#   contender's PIDs whose CPU and memory count.
run_wrk() {
  local label=$1 conns=$2 url=$3 script=$4
  shift 4
  local pids=("$@") out
  local script_args=() before after ticks0 ticks1 hwm acc0 req0 acc1 req1 new_conns up_reqs

  RUNS=$((RUNS + 1))
  out=$WORK_DIR/wrk-$RUNS.txt

  if [[ -n $script ]]; then
    script_args=(-s "$script")
  fi
  log "wrk $label -c$conns for $DURATION"

  reset_peak_rss "${pids[@]}"
  before=$(upstream_counters)
  ticks0=$(cpu_ticks "${pids[@]}")
  wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency "${script_args[@]}" "${WRK_HEADERS[@]}" \
    "$url" >"$out"
  ticks1=$(cpu_ticks "${pids[@]}")
  after=$(upstream_counters)
  hwm=$(peak_rss_kib "${pids[@]}")

  # Counters are "accepts requests"; the "after" read added one of each.
  read -r acc0 req0 <<<"$before"
  read -r acc1 req1 <<<"$after"
  new_conns=$((acc1 - acc0 - 1))
  up_reqs=$((req1 - req0 - 1))

  # wrk's report: "N requests in", "Requests/sec:", the 50%/99% latency
  # lines, and the error lines, which appear only when non-zero.
  awk -v label="$label" -v conns="$conns" -v ticks=$((ticks1 - ticks0)) -v hz="$CLK_TCK" \
    -v hwm="$hwm" -v up_conns="$new_conns" -v up_reqs="$up_reqs" \
    -v p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")" \
    -v p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")" '
    / requests in / { requests = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(/,/, ""); sockerr = $4 + $6 + $8 + $10 }
    END {
      cpu = requests ? ticks / hz / requests * 1000 : 0
      if (up_conns > 0) { per = sprintf("%.0f", up_reqs / up_conns) } else { per = "all reused" }
      reuse = up_reqs ? (up_reqs - up_conns) / up_reqs * 100 : 0
      printf "| %s | %d | %.0f | %s | %s | %d | %d | %.4f | %.1f | %d | %s | %.2f |\n",
        label, conns, rps, p50, p99, non2xx, sockerr, cpu, hwm / 1024, up_conns, per, reuse
    }' "$out" >>"$ROWS"
}

# Prints gwproxy/nginx ratios from the rows file, pairing "gwproxy
# /api/proxy<mode>" with "nginx proxy_pass<mode>" at the same connections.
# A pair run more than once (ROUNDS) is compared by its means.
ratios() {
  awk -F' *\\| *' '
    index($2, "nginx proxy_pass") == 1 {
      key = substr($2, 17) SUBSEP $3; n_rps[key] += $4; n_p99[key] += $6; n_cpu[key] += $9
    }
    index($2, "gwproxy /api/proxy") == 1 {
      mode = substr($2, 19); key = mode SUBSEP $3
      g_rps[key] += $4; g_p99[key] += $6; g_cpu[key] += $9
      if (!(key in modes)) { order[++k] = key }
      modes[key] = mode; conns[key] = $3
    }
    function ratio(a, b) { return b + 0 > 0 ? sprintf("%.2f", a / b) : "n/a" }
    END {
      print "| mode | connections | req/s gwproxy/nginx | p99 gwproxy/nginx | CPU per 1k req gwproxy/nginx |"
      print "| --- | ---: | ---: | ---: | ---: |"
      for (i = 1; i <= k; i++) {
        key = order[i]; mode = modes[key]; sub(/^, /, "", mode)
        printf "| %s | %s | %s | %s | %s |\n", mode == "" ? "plain HTTP" : mode, conns[key],
          ratio(g_rps[key], n_rps[key]), ratio(g_p99[key], n_p99[key]), ratio(g_cpu[key], n_cpu[key])
      }
    }' "$ROWS"
}

# ---------------------------------------------------------------------------
# The run.

ensure_tools
raise_fd_limit
build_gwproxy

WORK_DIR=$(mktemp -d /tmp/gwproxy-bench.XXXXXX)
# nginx's workers drop to an unprivileged user when started as root; they
# must still reach their prefix under this directory.
chmod 755 "$WORK_DIR"
ROWS=$WORK_DIR/rows.md
: >"$ROWS"
CLK_TCK=$(getconf CLK_TCK)
RUNS=0
PEAK_RESET=yes
SECRET=bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
WRK_HEADERS=()
read -r UPSTREAM_PORT STATUS_PORT NGINX_PORT GWPROXY_PORT NGINX_TLS_PORT GWPROXY_TLS_PORT \
  < <(free_ports 6)
GWPROXY_TARGET=http://127.0.0.1:$UPSTREAM_PORT$BENCH_PATH
export GWPROXY_SECRET=$SECRET GWPROXY_TARGET

make_certificate

log "starting upstream nginx on $UPSTREAM_PORT (status on $STATUS_PORT)"
mkdir -p "$WORK_DIR/upstream" "$WORK_DIR/proxy"
write_upstream_conf >"$WORK_DIR/upstream/nginx.conf"
start_nginx "$WORK_DIR/upstream" "$WORK_DIR/upstream/nginx.conf" \
  "$UPSTREAM_WORKERS" "$UPSTREAM_PORT"
UPSTREAM_PID=$STARTED_PID
mapfile -t UPSTREAM_WORKER_PIDS < <(children_of "$UPSTREAM_PID")

log "starting nginx proxy on $NGINX_PORT with $WORKERS workers"
write_proxy_conf >"$WORK_DIR/proxy/nginx.conf"
start_nginx "$WORK_DIR/proxy" "$WORK_DIR/proxy/nginx.conf" "$WORKERS" "$NGINX_PORT"
PROXY_PID=$STARTED_PID
mapfile -t PROXY_WORKER_PIDS < <(children_of "$PROXY_PID")

log "starting gwproxy on $GWPROXY_PORT with $WORKERS worker threads"
start_gwproxy "$GWPROXY_PORT"
GWPROXY_PID=$STARTED_PID

check_answers

# Each contender at each connection count, ROUNDS times; contenders alternate
# so a drift in the machine's load spreads over all of them rather than
# landing on one.
for ((round = 1; round <= ROUNDS; round++)); do
  for conns in $CONNECTIONS; do
    run_wrk "upstream direct" "$conns" "http://127.0.0.1:$UPSTREAM_PORT$BENCH_PATH" "" \
      "$UPSTREAM_PID" "${UPSTREAM_WORKER_PIDS[@]}"
    run_wrk "nginx proxy_pass" "$conns" "http://127.0.0.1:$NGINX_PORT$BENCH_PATH" "" \
      "$PROXY_PID" "${PROXY_WORKER_PIDS[@]}"
    run_wrk "gwproxy /api/proxy" "$conns" "http://127.0.0.1:$GWPROXY_PORT/api/proxy" \
      benches/proxy.lua "$GWPROXY_PID"
  done
done

# TLS: both proxies terminate it with the same certificate. gwproxy's TLS
# listener is a second instance, started only now so that it does not sit
# idle in memory during the plain runs. wrk resumes no sessions, so each
# new connection is a full handshake: the "new handshake" rows, where every
# request closes its connection, count handshakes per second.
if [[ -n $TLS_CONNECTIONS ]]; then
  log "starting gwproxy with TLS on $GWPROXY_TLS_PORT"
  start_gwproxy "$GWPROXY_TLS_PORT" tls
  GWPROXY_TLS_PID=$STARTED_PID
  check_tls_answers
  for conns in $TLS_CONNECTIONS; do
    run_wrk "nginx proxy_pass, TLS kept alive" "$conns" \
      "https://127.0.0.1:$NGINX_TLS_PORT$BENCH_PATH" "" "$PROXY_PID" "${PROXY_WORKER_PIDS[@]}"
    run_wrk "gwproxy /api/proxy, TLS kept alive" "$conns" \
      "https://127.0.0.1:$GWPROXY_TLS_PORT/api/proxy" benches/proxy.lua "$GWPROXY_TLS_PID"
  done
  WRK_HEADERS=(-H "Connection: close")
  run_wrk "nginx proxy_pass, TLS new handshake per request" "$HANDSHAKE_CONNECTIONS" \
    "https://127.0.0.1:$NGINX_TLS_PORT$BENCH_PATH" "" "$PROXY_PID" "${PROXY_WORKER_PIDS[@]}"
  run_wrk "gwproxy /api/proxy, TLS new handshake per request" "$HANDSHAKE_CONNECTIONS" \
    "https://127.0.0.1:$GWPROXY_TLS_PORT/api/proxy" benches/proxy.lua "$GWPROXY_TLS_PID"
  WRK_HEADERS=()
  stop_pid "$GWPROXY_TLS_PID"
fi

# What one idle keep-alive client connection costs gwproxy.
IDLE_RESULT="skipped (IDLE_CONNS=0)"
IDLE_STATUS=0
if ((IDLE_CONNS > 0)); then
  log "holding $IDLE_CONNS idle connections to gwproxy"
  if IDLE_OUT=$(python3 benches/idle_conns.py "127.0.0.1:$GWPROXY_PORT" \
    --pid "$GWPROXY_PID" -n "$IDLE_CONNS"); then
    IDLE_RESULT=$(grep -v '^idle_conns ' <<<"$IDLE_OUT" | paste -sd ';' | sed 's/;/; /g')
  else
    IDLE_STATUS=1
    IDLE_RESULT="FAILED: $(paste -sd ' ' <<<"$IDLE_OUT")"
  fi
fi

# ---------------------------------------------------------------------------
# The report.

# RSS is VmHWM; for nginx it is summed over the workers, which counts shared
# pages once per worker. The peak covers one run only when clear_refs works.
RSS_NOTE="peak RSS (VmHWM) during the run"
[[ $PEAK_RESET == yes ]] || RSS_NOTE="peak RSS (VmHWM) since the process started"

mkdir -p "$RESULTS_DIR"
REPORT=$RESULTS_DIR/bench-$(date +%Y-%m-%d-%H%M%S).md
{
  echo "# gwproxy benchmark, $(date '+%Y-%m-%d %H:%M:%S %Z')"
  echo
  echo "gwproxy $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)," \
    "$(nproc) CPUs, $(uname -sr). wrk -t$THREADS -d$DURATION --latency on 127.0.0.1;" \
    "nginx proxy: $WORKERS worker processes; gwproxy: $WORKERS tokio worker threads;" \
    "upstream nginx: $UPSTREAM_WORKERS worker(s). wrk, the proxy and the upstream share the machine's CPUs."
  echo
  echo "| contender | connections | req/s | p50 ms | p99 ms | non-2xx | socket errors | proxy CPU s per 1k req | $RSS_NOTE, MiB | upstream conns opened | upstream req per new conn | upstream req on a reused conn, % |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  cat "$ROWS"
  echo
  ratios
  echo
  echo "Not like for like, on purpose: nginx forwards a GET and streams the answer back,"
  echo "while gwproxy parses a JSON request, checks the secret and the gateway, sends the"
  echo "request and wraps the answer in a JSON envelope. The ratios price that work."
  echo "For the upstream-direct rows, CPU and RSS are the upstream nginx's; for the proxy"
  echo "rows, the proxy's alone (nginx: master plus workers for CPU, workers for RSS)."
  echo "Each plain-HTTP row appears once per round (ROUNDS=$ROUNDS, interleaved); the"
  echo "ratios compare the rounds' means."
  echo
  echo "Idle keep-alive client connections held on gwproxy: $IDLE_RESULT"
} >"$WORK_DIR/report.md"
cp "$WORK_DIR/report.md" "$REPORT"
cat "$REPORT"
log "report written to $REPORT"
exit "$IDLE_STATUS"
