#!/usr/bin/env python3
"""Edge figures (docs/benchmarks.md, "What one client can hold"): memory per idle HTTP/1 and
HTTP/2 connection, memory of 1,000 connections each holding a queued 1 MiB upload, and another
client's latency while one address opens 1,000 partial request heads.

Run from the project root, after `cargo build --release` (or SLUICE_BIN=path):

    python3 benches/edge.py

Everything listens on 127.0.0.1 (the other client comes from 127.0.0.2); every phase is bounded
in time and the script stops every process it started. Standard library only.
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SLUICE = os.environ.get("SLUICE_BIN", "target/release/sluice")
N = int(os.environ.get("N", "1000"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Upstream:
    """A tiny HTTP/1.1 upstream: answers "ok" at once, or holds requests while `held` is set."""

    def __init__(self):
        self.port = free_port()
        self.held = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(4096)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                while self.held.is_set():
                    time.sleep(0.05)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return


def start_sluice(upstream_port, server_extra, cap=None):
    port = free_port()
    cap_yaml = ""
    if cap:
        cap_yaml = f"    concurrency: {{max_inflight: {cap}, queue: 100000, queue_timeout: 60s}}\n"
    config = (
        f"server:\n  listen: 127.0.0.1:{port}\n  workers: 1\n{server_extra}"
        f"upstreams:\n  api:\n    endpoints: [http://127.0.0.1:{upstream_port}]\n    timeout: 60s\n{cap_yaml}"
        "routes:\n  - name: all\n    upstream: api\n"
    )
    path = tempfile.mktemp(suffix=".yaml")
    with open(path, "w") as f:
        f.write(config)
    proc = subprocess.Popen([SLUICE, "run", "-c", path], stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("sluice did not start")


def get(port, source="127.0.0.1"):
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return s


def idle_connections(upstream):
    """RSS per idle connection: HTTP/1 after one request (kept alive), HTTP/2 after its preface."""
    proc, port = start_sluice(upstream.port, "  header_read_timeout: 60s\n")
    try:
        time.sleep(0.5)
        base = rss_kib(proc.pid)
        h1 = [get(port) for _ in range(N)]
        time.sleep(0.5)
        after_h1 = rss_kib(proc.pid)
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        h2 = []
        for _ in range(N):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(preface)
            h2.append(s)
        time.sleep(1.0)
        after_h2 = rss_kib(proc.pid)
        print(f"idle HTTP/1 connection (after one request): {(after_h1 - base) / N:.1f} KiB each ({N} connections)")
        print(f"idle HTTP/2 connection (preface + SETTINGS): {(after_h2 - after_h1) / N:.1f} KiB each ({N} connections)")
        for s in h1 + h2:
            s.close()
    finally:
        proc.kill()
        proc.wait()


def queued_uploads(upstream):
    """RSS with N connections each holding a queued 1 MiB upload (the upstream's cap of 1 is held)."""
    proc, port = start_sluice(upstream.port, "", cap=1)
    try:
        time.sleep(0.5)
        base = rss_kib(proc.pid)
        upstream.held.set()
        body = b"u" * (1 << 20)
        conns = []
        lock = threading.Lock()

        def upload():
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(60)
            try:
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n" + body)
            except OSError:
                pass
            with lock:
                conns.append(s)

        threads = [threading.Thread(target=upload, daemon=True) for _ in range(N)]
        for t in threads:
            t.start()
        deadline = time.time() + 60
        for t in threads:
            t.join(max(0.1, deadline - time.time()))
        time.sleep(2.0)
        held = rss_kib(proc.pid)
        print(f"{N} connections each holding a queued 1 MiB upload: +{(held - base) / 1024:.0f} MiB RSS "
              f"(max_buffered_bytes 256MiB; the rest waits in the kernel's socket buffers)")
        upstream.held.clear()
        for s in conns:
            s.close()
    finally:
        upstream.held.clear()
        proc.kill()
        proc.wait()


def partial_heads(upstream, per_ip):
    """Another client's p50/p99 (from 127.0.0.2) while 127.0.0.1 opens N partial heads."""
    extra = f"  max_connections: 512\n  header_read_timeout: 10s\n  max_connections_per_ip: {per_ip}\n"
    proc, port = start_sluice(upstream.port, extra)
    attackers = []
    try:
        for _ in range(N):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                attackers.append(s)
            except OSError:
                pass
        times = []
        end = time.time() + 8
        while time.time() < end and len(times) < 400:
            started = time.perf_counter()
            try:
                get(port, source="127.0.0.2").close()
                times.append(time.perf_counter() - started)
            except OSError:
                times.append(30.0)
        times.sort()
        p50 = statistics.median(times) * 1000
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
        label = f"max_connections_per_ip: {per_ip}" if per_ip else "no per-IP cap"
        print(f"other client during {N} partial heads ({label}, max_connections 512): "
              f"{len(times)} requests, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    finally:
        for s in attackers:
            s.close()
        proc.kill()
        proc.wait()


def main():
    if not os.path.exists(SLUICE):
        sys.exit(f"{SLUICE} not found: cargo build --release, or set SLUICE_BIN")
    upstream = Upstream()
    idle_connections(upstream)
    queued_uploads(upstream)
    partial_heads(upstream, 0)
    partial_heads(upstream, 64)


if __name__ == "__main__":
    main()
