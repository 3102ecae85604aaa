#!/usr/bin/env bash
# benches/soak.sh: `make soak`. Runs a release gwproxy under a bounded mix of
# good and bad traffic for SOAK_SECONDS and watches that its memory and open
# file descriptors stay flat.
#
# The mix: wrk drives good proxied requests to the demo gateway; beside it
# benches/soak.py sends bad JSON, wrong secrets, unknown paths and gateways,
# oversized bodies, slow heads and slow bodies, and requests to a faulty
# gateway that closes, resets, stalls, trickles or sends garbage in turn.
# gwproxy's VmRSS, open fds and threads are sampled at the start, every
# SAMPLE_SECONDS, and at the end once the load has stopped; a summary table is
# printed. Exits 1 when soak.py saw an unexpected answer, or when RSS or fds
# grew past RSS_GROWTH_KIB / FD_GROWTH between the first and last samples.
#
# Knobs (environment):
#   SOAK_SECONDS=600     how long the load runs
#   SAMPLE_SECONDS=60    time between samples
#   CONNECTIONS=16       wrk connections for the good traffic
#   RSS_GROWTH_KIB=65536 allowed RSS growth, start to end
#   FD_GROWTH=16         allowed growth in open fds, start to end
#   GWPROXY_BIN, GATEWAY_BIN   use these binaries instead of building them
#
# Everything listens on 127.0.0.1 only, and every process this script starts
# is stopped by its own PID when it exits.

set -euo pipefail

SOAK_SECONDS=${SOAK_SECONDS:-600}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-60}
CONNECTIONS=${CONNECTIONS:-16}
RSS_GROWTH_KIB=${RSS_GROWTH_KIB:-65536}
FD_GROWTH=${FD_GROWTH:-16}
GWPROXY_BIN=${GWPROXY_BIN:-}
GATEWAY_BIN=${GATEWAY_BIN:-}

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'soak: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PIDS=()
WORK_DIR=$(mktemp -d)

# shellcheck source=benches/loopback.sh
source benches/loopback.sh

trap stop_started EXIT

command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
command -v python3 >/dev/null || die "python3 is not installed"

if [[ -z $GWPROXY_BIN || -z $GATEWAY_BIN ]]; then
  log "building release binaries"
  cargo build --release --bins >&2
  GWPROXY_BIN=${GWPROXY_BIN:-target/release/gwproxy}
  GATEWAY_BIN=${GATEWAY_BIN:-target/release/demo-gateway}
fi

GATEWAY_PORT=$(free_port)
FAULTY_PORT=$(free_port)
PROXY_PORT=$(free_port)
SECRET="soak-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"

"$GATEWAY_BIN" "127.0.0.1:$GATEWAY_PORT" 2>"$WORK_DIR/gateway.log" &
PIDS+=($!)
python3 benches/soak.py faulty "$FAULTY_PORT" 2>"$WORK_DIR/faulty.log" &
PIDS+=($!)

cat >"$WORK_DIR/gwproxy.json" <<EOF
{
  "listen": "127.0.0.1:$PROXY_PORT",
  "users": [{ "name": "soak", "secret": "$SECRET" }],
  "gateways": [
    { "url": "http://127.0.0.1:$GATEWAY_PORT" },
    { "url": "http://127.0.0.1:$FAULTY_PORT" }
  ],
  "timeouts": { "request_header_ms": 2000, "request_body_ms": 2000, "response_ms": 2000 },
  "pool": { "idle_timeout_ms": 2000 }
}
EOF
RUST_LOG=gwproxy=warn "$GWPROXY_BIN" --config "$WORK_DIR/gwproxy.json" 2>"$WORK_DIR/gwproxy.log" &
GWPROXY_PID=$!
PIDS+=("$GWPROXY_PID")
wait_listening "$GATEWAY_PORT"
wait_listening "$FAULTY_PORT"
wait_listening "$PROXY_PORT"

PROXY="127.0.0.1:$PROXY_PORT"
GATEWAY_URL="http://127.0.0.1:$GATEWAY_PORT"

# One good request first, so that a broken set-up fails fast.
answer=$(curl -fsS "http://$PROXY/api/proxy" -H "Authorization: $SECRET" \
  -d "{\"method\":\"GET\",\"url\":\"$GATEWAY_URL/soak\"}") || die "the first request failed"
[[ $answer == *'"status_code":200'* ]] || die "unexpected envelope: $answer"

SAMPLES="$WORK_DIR/samples"
sample() {
  local label=$1 rss fds threads
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$GWPROXY_PID/status")
  threads=$(awk '/^Threads:/ { print $2 }' "/proc/$GWPROXY_PID/status")
  fds=$(find "/proc/$GWPROXY_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
  printf '%s %s %s %s\n' "$label" "$rss" "$fds" "$threads" >>"$SAMPLES"
  log "$label: VmRSS ${rss} KiB, ${fds} fds, ${threads} threads"
}

log "soaking gwproxy (pid $GWPROXY_PID) for ${SOAK_SECONDS}s"
sample start

GWPROXY_SECRET=$SECRET GWPROXY_TARGET="$GATEWAY_URL/soak" \
  wrk -t1 -c"$CONNECTIONS" -d"${SOAK_SECONDS}s" --timeout 5s -s benches/proxy.lua \
  "http://$PROXY/api/proxy" >"$WORK_DIR/wrk.txt" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")
python3 benches/soak.py drive --proxy "$PROXY" --secret "$SECRET" \
  --gateway "$GATEWAY_URL" --faulty "http://127.0.0.1:$FAULTY_PORT" \
  --seconds "$SOAK_SECONDS" >"$WORK_DIR/drive.txt" 2>&1 &
DRIVE_PID=$!
PIDS+=("$DRIVE_PID")

started=$SECONDS
while ((SECONDS - started < SOAK_SECONDS)); do
  left=$((SOAK_SECONDS - (SECONDS - started)))
  sleep $((left < SAMPLE_SECONDS ? left : SAMPLE_SECONDS))
  kill -0 "$GWPROXY_PID" 2>/dev/null || die "gwproxy died: $(tail -5 "$WORK_DIR/gwproxy.log")"
  ((SECONDS - started < SOAK_SECONDS)) && sample "t+$((SECONDS - started))s"
done

wait "$WRK_PID" || true
drive_status=0
wait "$DRIVE_PID" || drive_status=$?
# Let slow clients' and the faulty gateway's connections time out, and
# the pool's idle gateway connections age out (idle_timeout_ms above, swept
# every half of it): then gwproxy holds what it held at the start.
sleep 5
sample end

echo
echo "## gwproxy soak: ${SOAK_SECONDS}s"
echo
echo "| sample | VmRSS KiB | open fds | threads |"
echo "| --- | ---: | ---: | ---: |"
while read -r label rss fds threads; do
  echo "| $label | $rss | $fds | $threads |"
done <"$SAMPLES"
echo
echo "Good traffic (wrk, $CONNECTIONS connections):"
echo '```'
cat "$WORK_DIR/wrk.txt"
echo '```'
echo "Bad traffic (benches/soak.py):"
echo '```'
cat "$WORK_DIR/drive.txt"
echo '```'

read -r _ rss0 fds0 _ < <(head -1 "$SAMPLES")
read -r _ rss1 fds1 _ < <(tail -1 "$SAMPLES")
status=0
if ((rss1 - rss0 > RSS_GROWTH_KIB)); then
  log "VmRSS grew $((rss1 - rss0)) KiB (limit $RSS_GROWTH_KIB)"
  status=1
fi
if ((fds1 - fds0 > FD_GROWTH)); then
  log "open fds grew $((fds1 - fds0)) (limit $FD_GROWTH)"
  status=1
fi
if ((drive_status != 0)); then
  log "soak.py saw unexpected answers"
  status=1
fi
if grep -qi panic "$WORK_DIR/gwproxy.log"; then
  log "gwproxy panicked: $(grep -i -m1 panic "$WORK_DIR/gwproxy.log")"
  status=1
fi
((status == 0)) && log "RSS +$((rss1 - rss0)) KiB, fds +$((fds1 - fds0)): ok"
exit "$status"
