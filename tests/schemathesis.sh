#!/usr/bin/env bash
# tests/schemathesis.sh: part of `make test`. Runs schemathesis against a live
# debug gwproxy with tests/openapi/gwproxy.yaml: every response must be what
# the description says (status, content type, headers, schema), no input may
# cause a server error, and gwproxy must refuse what the schema calls invalid
# and accept what it calls valid.
#
# The gateway is target/debug/demo-gateway; both binaries come from
# `cargo test` (or `cargo build --bins`). The description's example gateway
# 127.0.0.1:8181 is rewritten to the demo gateway's real address, so that
# the examples reach it.
#
# Knobs (environment):
#   SCHEMATHESIS_EXAMPLES=100  test cases per operation and phase
#   SCHEMATHESIS_SEED=1        fixed, so CI is repeatable; any number explores anew
#   SCHEMATHESIS=schemathesis  the command (default: schemathesis, else
#                              python3 -m schemathesis.cli)
#
# Everything listens on 127.0.0.1 only; both servers are stopped by their
# own PIDs when the script exits.

set -euo pipefail

EXAMPLES=${SCHEMATHESIS_EXAMPLES:-100}
SEED=${SCHEMATHESIS_SEED:-1}

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -n ${SCHEMATHESIS:-} ]]; then
  read -r -a SCHEMATHESIS_CMD <<<"$SCHEMATHESIS"
elif command -v schemathesis >/dev/null; then
  SCHEMATHESIS_CMD=(schemathesis)
else
  # pyenv and --user installs may leave the script off PATH.
  SCHEMATHESIS_CMD=(python3 -m schemathesis.cli)
fi
"${SCHEMATHESIS_CMD[@]}" --version >/dev/null 2>&1 ||
  die "schemathesis is not installed (pip install 'schemathesis>=4.32,<5')"
[[ -x target/debug/gwproxy && -x target/debug/demo-gateway ]] ||
  die "build first: cargo build --bins"

PIDS=()
WORK_DIR=$(mktemp -d)

# shellcheck source=benches/loopback.sh
source benches/loopback.sh

trap stop_started EXIT

GATEWAY="127.0.0.1:$(free_port)"
PROXY_PORT=$(free_port)
SECRET="schemathesis-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"

target/debug/demo-gateway "$GATEWAY" 2>"$WORK_DIR/gateway.log" &
PIDS+=($!)

cat >"$WORK_DIR/gwproxy.json" <<EOF
{
  "listen": "127.0.0.1:$PROXY_PORT",
  "users": [{ "name": "schemathesis", "secret": "$SECRET" }],
  "gateways": [{ "url": "http://$GATEWAY" }],
  "timeouts": { "response_ms": 5000 }
}
EOF
RUST_LOG=gwproxy=warn target/debug/gwproxy --config "$WORK_DIR/gwproxy.json" \
  2>"$WORK_DIR/gwproxy.log" &
GWPROXY_PID=$!
PIDS+=("$GWPROXY_PID")
wait_listening "${GATEWAY##*:}"
wait_listening "$PROXY_PORT"

sed "s/127\.0\.0\.1:8181/$GATEWAY/g" tests/openapi/gwproxy.yaml >"$WORK_DIR/gwproxy.yaml"

log "schemathesis $("${SCHEMATHESIS_CMD[@]}" --version | awk '{ print $NF }'), $EXAMPLES examples per operation, seed $SEED"
status=0
"${SCHEMATHESIS_CMD[@]}" run "$WORK_DIR/gwproxy.yaml" \
  --url "http://127.0.0.1:$PROXY_PORT" \
  --header "Authorization: $SECRET" \
  --checks all \
  --max-examples "$EXAMPLES" \
  --seed "$SEED" \
  --workers 2 \
  --request-timeout 10 \
  --max-time 120 \
  --generation-database none \
  --no-color \
  --output-sanitize true || status=$?

if ! kill -0 "$GWPROXY_PID" 2>/dev/null; then
  log "gwproxy died during the run: $(tail -5 "$WORK_DIR/gwproxy.log")"
  status=1
fi
if grep -qi panic "$WORK_DIR/gwproxy.log"; then
  log "gwproxy panicked: $(grep -i -m1 panic "$WORK_DIR/gwproxy.log")"
  status=1
fi
exit "$status"
