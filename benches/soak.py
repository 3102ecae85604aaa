#!/usr/bin/env python3
"""benches/soak.py: the misbehaving half of `make soak` (benches/soak.sh).

  soak.py faulty PORT
      A gateway on 127.0.0.1:PORT that misbehaves in turn on each connection:
      answers, closes at once, resets, sends garbage, stalls, or trickles a
      body forever. Runs until killed.

  soak.py drive --proxy HOST:PORT --secret S --gateway URL --faulty URL --seconds N
      For N seconds, a few threads send gwproxy bad JSON, wrong secrets,
      unknown paths, oversized bodies, slow heads and bodies, and requests
      to the faulty gateway, each at a bounded rate. Prints what gwproxy
      answered, and exits 1 if it answered anything unexpected (a 5xx other
      than the faulty gateway's 500, or no answer at all to a whole request).

Everything stays on loopback; every loop ends at the deadline.
"""

import argparse
import collections
import http.client
import json
import socket
import struct
import sys
import threading
import time

# ---------------------------------------------------------------------------
# The faulty gateway


def faulty_gateway(port):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(256)
    turn = 0
    while True:
        conn, _ = server.accept()
        threading.Thread(target=misbehave, args=(conn, turn % 6), daemon=True).start()
        turn += 1


def read_head(conn):
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data


def misbehave(conn, kind):
    conn.settimeout(10)
    try:
        if read_head(conn) is None:
            return
        if kind == 0:
            body = b'{"faulty":false}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif kind == 1:
            pass  # close without a word
        elif kind == 2:
            # SO_LINGER 0: close with a reset.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == 3:
            conn.sendall(b"\x00\x01garbage that is not HTTP\r\n\r\n")
        elif kind == 4:
            time.sleep(5)  # past gwproxy's response timeout
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            for _ in range(50):
                conn.sendall(b"x")
                time.sleep(0.1)
    except OSError:
        pass
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# The driver


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.unexpected = collections.Counter()

    def add(self, kind, outcome, expected):
        with self.lock:
            self.counts[(kind, outcome)] += 1
            if outcome not in expected:
                self.unexpected[(kind, outcome)] += 1


def post(proxy, path, body, headers, timeout=10):
    host, port = proxy.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__
    finally:
        conn.close()


def raw(proxy, head, trickle=b"", gap=0.0, wait=6.0):
    """Sends head, then trickle one byte per gap; returns the status or 'closed'."""
    host, port = proxy.rsplit(":", 1)
    try:
        sock = socket.create_connection((host, int(port)), timeout=wait)
    except OSError as error:
        return type(error).__name__
    try:
        sock.sendall(head)
        for byte in trickle:
            sock.sendall(bytes([byte]))
            time.sleep(gap)
        data = sock.recv(64)
        if not data:
            return "closed"
        return int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else "garbage"
    # Cut off at its timeout, a trickling client learns it from a reset
    # or from a broken pipe on its next byte: either way, closed.
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    except socket.timeout:
        return "timeout"
    except OSError as error:
        return type(error).__name__
    finally:
        sock.close()


def scenarios(args):
    auth = {"Authorization": args.secret, "Content-Type": "application/json"}
    good = json.dumps({"method": "GET", "url": args.gateway + "/soak"})
    faulty = json.dumps({"method": "GET", "url": args.faulty + "/fault"})
    forbidden = json.dumps({"method": "GET", "url": "http://127.0.0.2:1/x"})
    big = json.dumps({"method": "POST", "url": args.gateway + "/big", "body": "x" * (2 << 20)})
    slow_head = b"POST /api/proxy HTTP/1.1\r\nHost: soak\r\nX-Slow: "
    slow_body = ("POST /api/proxy HTTP/1.1\r\nHost: soak\r\nAuthorization: %s\r\n"
                 "Content-Length: %d\r\n\r\n" % (args.secret, len(good))).encode()
    return {
        "bad json": (lambda: post(args.proxy, "/api/proxy", "{not json", auth), {400}),
        "not a JSON object": (lambda: post(args.proxy, "/api/proxy", "[1,2]", auth), {400}),
        "unauthorised": (lambda: post(args.proxy, "/api/proxy", good, {"Authorization": "nope"}), {401}),
        "unknown path": (lambda: post(args.proxy, "/nowhere", good, auth), {404}),
        "unknown gateway": (lambda: post(args.proxy, "/api/proxy", forbidden, auth), {403}),
        "body too large": (lambda: post(args.proxy, "/api/proxy", big, auth), {413, "BrokenPipeError", "ConnectionResetError"}),
        "faulty gateway": (lambda: post(args.proxy, "/api/proxy", faulty, auth), {200, 500}),
        "slow head": (lambda: raw(args.proxy, slow_head, b"a" * 40, 0.1), {"closed", 408}),
        "slow body": (lambda: raw(args.proxy, slow_body, good.encode(), 0.1), {400, "closed"}),
        "good (python)": (lambda: post(args.proxy, "/api/proxy", good, auth), {200}),
    }


def drive(args):
    tally = Tally()
    deadline = time.monotonic() + args.seconds

    def loop(kind, call, expected):
        while time.monotonic() < deadline:
            started = time.monotonic()
            tally.add(kind, call(), expected)
            # At most ~5 requests a second per scenario.
            time.sleep(max(0.0, 0.2 - (time.monotonic() - started)))

    threads = [threading.Thread(target=loop, args=(kind, call, expected), daemon=True)
               for kind, (call, expected) in scenarios(args).items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.seconds + 30)

    print("%-20s %-22s %8s" % ("scenario", "answer", "count"))
    for (kind, outcome), count in sorted(tally.counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        flag = "  UNEXPECTED" if (kind, outcome) in tally.unexpected else ""
        print("%-20s %-22s %8d%s" % (kind, outcome, count, flag))
    return 1 if tally.unexpected else 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("faulty")
    f.add_argument("port", type=int)
    d = sub.add_parser("drive")
    d.add_argument("--proxy", required=True)
    d.add_argument("--secret", required=True)
    d.add_argument("--gateway", required=True)
    d.add_argument("--faulty", required=True)
    d.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    if args.command == "faulty":
        faulty_gateway(args.port)
    else:
        sys.exit(drive(args))


if __name__ == "__main__":
    main()
