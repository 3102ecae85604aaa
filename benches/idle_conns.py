#!/usr/bin/env python3
"""Measure what an idle keep-alive client connection costs gwproxy in memory.

Opens N connections to a running gwproxy, sends one `GET /hello` on each and
reads the answer (so gwproxy has set the connection up fully, buffers and
all), leaves them all open and idle, and compares gwproxy's resident memory
before and after. Then it closes everything and exits.

    python3 benches/idle_conns.py 127.0.0.1:3000 --pid "$(pgrep -n gwproxy)"

gwproxy must keep the connections: its config needs `limits.max_connections`
above N and `timeouts.idle_ms` longer than the run. Python standard library
only.
"""

import argparse
import resource
import socket
import sys
import time

# Descriptors beyond the connections: stdio, /proc reads, the interpreter's own.
SPARE_FDS = 64

REQUEST = b"GET /hello HTTP/1.1\r\nHost: gwproxy\r\nUser-Agent: idle_conns.py\r\n\r\n"


def main():
    args = parse_args()
    count = raise_fd_limit(args.connections)
    host, port = split_address(args.address)

    before = rss_kib(args.pid)
    conns, failures = open_idle(host, port, count, args.timeout)
    # Let gwproxy's tasks settle after the last answer before sampling.
    time.sleep(args.settle)
    after = rss_kib(args.pid)
    for conn in conns:
        conn.close()

    report(len(conns), failures, before, after)
    return 0 if conns and not failures else 1


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="gwproxy's HOST:PORT, e.g. 127.0.0.1:3000")
    parser.add_argument("--pid", type=int, required=True, help="gwproxy's process id")
    parser.add_argument("-n", "--connections", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for one connection's answer")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait before the second RSS sample")
    return parser.parse_args()


def raise_fd_limit(wanted):
    """Lifts RLIMIT_NOFILE to fit `wanted` sockets; returns how many fit."""
    need = wanted + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return wanted
    try:
        # Only root (CAP_SYS_RESOURCE) may raise the hard limit.
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        return wanted
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fitted = max(hard - SPARE_FDS, 0)
    print(f"idle_conns: open-file limit {hard} fits only {fitted} connections",
          file=sys.stderr)
    return fitted


def split_address(address):
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        sys.exit(f"idle_conns: address must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def open_idle(host, port, count, timeout):
    """Opens up to `count` connections, each with one answered request; stops
    at the first that fails, since the rest would most likely fail the same way."""
    conns = []
    failures = 0
    for _ in range(count):
        try:
            conn = socket.create_connection((host, port), timeout=timeout)
        except OSError as err:
            print(f"idle_conns: connect {len(conns) + 1}: {err}", file=sys.stderr)
            failures += 1
            break
        try:
            conn.sendall(REQUEST)
            status = read_response(conn)
        except OSError as err:
            status = f"no answer ({err})"
        if status != 200:
            print(f"idle_conns: connection {len(conns) + 1}: {status}", file=sys.stderr)
            conn.close()
            failures += 1
            break
        conns.append(conn)
    return conns, failures


def read_response(conn):
    """Reads one HTTP/1.1 response with a Content-Length body; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("connection closed before the response headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])

    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("connection closed inside the response body")
        body += chunk
    return status


def rss_kib(pid):
    """The process's resident set now (VmRSS), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    sys.exit(f"idle_conns: no VmRSS for pid {pid}")


def report(opened, failures, before, after):
    per_conn = (after - before) / opened if opened else float("nan")
    print(f"idle connections held: {opened} (failures: {failures})")
    print(f"gwproxy RSS: {before} KiB before, {after} KiB after")
    print(f"per idle connection: {per_conn:.2f} KiB")
    # One line for scripts (benches/bench.sh reads it).
    print(f"idle_conns connections={opened} failures={failures} "
          f"rss_before_kib={before} rss_after_kib={after} kib_per_conn={per_conn:.2f}")


if __name__ == "__main__":
    sys.exit(main())
