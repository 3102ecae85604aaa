# benches/loopback.sh: sourced by the scripts that start servers on loopback
# (benches/bench.sh, benches/soak.sh, tests/schemathesis.sh): a free port,
# waiting for a listener, and stopping processes by their own PIDs. The
# caller defines die(), and for stop_started the PIDS array and WORK_DIR.

# A free loopback TCP port, chosen by the kernel. It is released before use,
# which is racy only against another process doing the same.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits up to 10 s until something accepts TCP on 127.0.0.1:$1, else dies.
wait_listening() {
  local port=$1 tries=100
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    ((tries-- > 0)) || die "nothing listens on port $port"
    sleep 0.1
  done
}

# shellcheck disable=SC2317  # reached from the callers' EXIT traps
# Sends SIGTERM to a PID, waits up to 5 s for it to go, then SIGKILLs it.
stop_pid() {
  local pid=$1 tries=50
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((tries-- > 0)); do
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # reached from the callers' EXIT traps
# Stops every process in the caller's PIDS and removes its WORK_DIR.
stop_started() {
  local pid
  for pid in "${PIDS[@]}"; do
    stop_pid "$pid"
  done
  rm -rf "$WORK_DIR"
}
