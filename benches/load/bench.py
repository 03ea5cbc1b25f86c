#!/usr/bin/env python3
"""Load benchmark driver for scopegate: see benches/load/README.md.

Starts, all on 127.0.0.1 and all in this one run:
  * upstream  - a Debian nginx answering 200 {"ok":true} (core 1),
  * nginx     - Debian nginx as a plain reverse proxy, no token check (core 0),
  * haproxy   - Debian HAProxy 2.6 with jwt_verify + a scope ACL (core 0),
  * scopegate - target/release/scopegate, token cache on, and a second one with the cache off
                (core 0), plus (full mode only) one with RUST_LOG=info access logs,
then drives each with wrk (HTTP/1.1) and h2load (HTTP/2 h2c) from core 1, every request
carrying a valid RS256 token for the scoped route GET /book, and prints a Markdown report.
Results are also written to benches/load/last-run.json.

Usage: python3 benches/load/bench.py [--quick] [--rounds N] [--duration S] [--binary PATH]
Normally started through `bash benches/load/run.sh`, which installs the tools and builds.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ISSUER = "https://issuer.bench.invalid"
SCOPE = "API/book.get"
PATH = "/book"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROXY_CORE = "0"
LOAD_CORE = "1"
NICE: list[str] = []  # e.g. ["nice", "-n", "-10"]: set from --nice
TESTS = ("h1", "h1c256", "h2", "tokens", "idle", "scale")
BOTH_CORES = f"{PROXY_CORE},{LOAD_CORE}"

# ---------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tool_version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        out = (p.stdout + p.stderr).strip().splitlines()
        return out[0].strip() if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ---------------------------------------------------------------------------------------------
# keys and tokens


class Keys:
    def __init__(self, tmp: Path):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = self.key.public_key()
        nums = pub.public_numbers()

        def ub(n: int) -> str:
            return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        jwks = {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
                          "n": ub(nums.n), "e": ub(nums.e)}]}
        self.jwks_path = tmp / "jwks.json"
        self.jwks_path.write_text(json.dumps(jwks))
        self.pub_pem_path = tmp / "pub.pem"
        self.pub_pem_path.write_bytes(pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.header = b64url(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"},
                                        separators=(",", ":")).encode())

    def token(self, scope: str = SCOPE, client: str = "bench-client", ttl: int = 3600) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": client, "client_id": client, "token_use": "access",
                  "scope": scope, "iat": now, "exp": now + ttl, "jti": str(uuid.uuid4())}
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{self.header}.{payload}".encode()
        sig = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{self.header}.{payload}.{b64url(sig)}"


# ---------------------------------------------------------------------------------------------
# /proc readings


def proc_children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(d))
    return kids


def proc_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo.extend(proc_children(p))
    return out


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total


def sched_stats(pids: list[int]) -> dict[str, tuple[int, int]]:
    """Per thread of `pids`: (ns run, ns runnable but waiting for a CPU), /proc/.../schedstat."""
    stats = {}
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    run, wait = f.read().split()[:2]
                stats[f"{p}/{t}"] = (int(run), int(wait))
            except (OSError, ValueError):
                continue
    return stats


def busiest_thread_wait_s(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> float:
    """Seconds the busiest thread (most CPU between the two readings) waited for a CPU. Only
    that thread: a proxy's helper threads on the same core (scopegate's log writer) wait while
    it runs, which is the proxy's own work, not other programs taking the core."""
    deltas = [(a[0] - before.get(t, (0, 0))[0], a[1] - before.get(t, (0, 0))[1]) for t, a in after.items()]
    return max(deltas, default=(0, 0))[1] / 1e9


def mem_kib(pids: list[int], key: str) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def core_busy_ticks(core: str) -> tuple[int, int, int]:
    """(busy, total, irq + softirq) jiffies of one CPU from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal guest guest_nice; guest time is
                # already inside user
                v = v[:8] + [0] * (8 - len(v[:8]))
                idle = v[3] + v[4]
                return sum(v) - idle, sum(v), v[5] + v[6]
    return 0, 0, 0


# ---------------------------------------------------------------------------------------------
# processes


class Procs:
    """Everything this run started, so that all of it can be stopped, whatever happens."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.items: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], core: str | None, env: dict | None = None
              ) -> subprocess.Popen:
        full = NICE + (["taskset", "-c", core] if core is not None else []) + cmd
        out = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env, cwd=self.tmp)
        out.close()
        self.items.append((name, p))
        boost(p.pid)
        return p

    def check_alive(self) -> None:
        for name, p in self.items:
            if p.poll() is not None:
                raise BenchError(f"{name} exited with status {p.returncode}; "
                                 f"its output: {self.tail(name)}")

    def tail(self, name: str, n: int = 2000) -> str:
        try:
            return (self.tmp / f"{name}.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop_all(self) -> None:
        for _name, p in reversed(self.items):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for _name, p in reversed(self.items):
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            else:
                # the group may still hold children (nginx workers) even if the leader is gone
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def boost(pid: int) -> None:
    """Give the session of `pid` the benchmark's niceness.

    With the kernel's autogroup scheduling (sched_autogroup_enabled=1, the default on desktop
    kernels and here), every session is its own scheduling group and a process's own nice value
    only counts inside its group; the group's weight is set in /proc/PID/autogroup. Each process
    the benchmark starts has a session of its own, so this changes nothing else."""
    if NICE:
        try:
            with open(f"/proc/{pid}/autogroup", "w") as f:
                f.write(NICE[-1])
        except OSError:
            pass


def run_boosted(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own (see boost), killed on timeout or interrupt."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    boost(p.pid)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def wait_port(port: int, procs: Procs, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        procs.check_alive()
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on {HOST}:{port} after {timeout}s")


# ---------------------------------------------------------------------------------------------
# a minimal HTTP/1.1 client over raw sockets (used for checks and the idle-connection test)


def http_request_on(sock: socket.socket, token: str | None, path: str = PATH) -> tuple[int, bytes]:
    hdrs = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    if token is not None:
        hdrs += f"Authorization: Bearer {token}\r\n"
    sock.sendall((hdrs + "\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("connection closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(body) < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, body


def http_get(port: int, token: str | None, path: str = PATH) -> tuple[int, bytes]:
    with socket.create_connection((HOST, port), timeout=5) as s:
        return http_request_on(s, token, path)


# ---------------------------------------------------------------------------------------------
# configs


def write_upstream_conf(tmp: Path, port: int, h2port: int) -> Path:
    d = tmp / "nginx-up"
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 8192;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    server {{
        listen {HOST}:{port} backlog=4096;
        listen {HOST}:{h2port} http2 backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{{"ok":true}}';
        }}
    }}
}}
""")
    return conf


def write_nginx_proxy_conf(tmp: Path, port: int, h2port: int, up_port: int, workers: int = 1,
                           idle_upstream: int = 256, name: str = "nginx-proxy") -> Path:
    # `keepalive` is the number of idle upstream connections each worker keeps: below the
    # client concurrency (it was 64 for every test), NGINX closes and reopens upstream
    # connections at c256 while scopegate's pool keeps all of them, a handicap for NGINX.
    d = tmp / name
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes {workers};
worker_rlimit_nofile 8192;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    upstream up {{
        server {HOST}:{up_port};
        keepalive {idle_upstream};
        keepalive_requests 10000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        listen {HOST}:{h2port} http2 backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    return conf


def write_haproxy_conf(tmp: Path, port: int, h2port: int, up_port: int, pub_pem: Path) -> Path:
    conf = tmp / "haproxy.cfg"
    deny = ("http-request deny status 401 content-type application/json "
            "string '{\"message\":\"Unauthorized\"}' hdr www-authenticate Bearer")
    conf.write_text(f"""
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always
    maxconn 4096

frontend gateway
    bind {HOST}:{port}
    bind {HOST}:{h2port} proto h2
    # route table: GET /book only (scopegate answers 404/405 otherwise; the benchmark only
    # sends GET /book)
    http-request deny status 404 unless {{ path {PATH} }} {{ method GET }}
    # token: Bearer, RS256 only, signature against the public key, then claims
    http-request set-var(txn.bearer) http_auth_bearer
    {deny} unless {{ var(txn.bearer) -m found }}
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('$.alg')
    {deny} unless {{ var(txn.jwt_alg) -m str RS256 }}
    {deny} unless {{ var(txn.bearer),jwt_verify(RS256,"{pub_pem}") -m int 1 }}
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('$.scope')
    http-request set-var(txn.now) date
    {deny} unless {{ var(txn.iss) -m str {ISSUER} }}
    {deny} unless {{ var(txn.exp) -m found }}
    {deny} if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
    {deny} unless {{ var(txn.scope) -m reg '(^| )API/book[.]get( |$)' }}
    default_backend upstream

backend upstream
    server up {HOST}:{up_port}
""")
    return conf


def write_scopegate_conf(tmp: Path, name: str, port: int, admin_port: int, up_port: int,
                         cache_entries: int | None) -> Path:
    d = tmp / name
    d.mkdir()
    shutil.copy(tmp / "jwks.json", d / "jwks.json")
    auth = "[auth]\n" + (f"cache_entries = {cache_entries}\n" if cache_entries is not None else "")
    conf = d / "gateway.toml"
    conf.write_text(f"""# generated by benches/load/bench.py
[server]
listen = "{HOST}:{port}"
admin_listen = "{HOST}:{admin_port}"
shutdown_grace = "1s"

[log]
format = "json"

{auth}
[[auth.issuers]]
issuer = "{ISSUER}"
jwks_file = "jwks.json"
algorithms = ["RS256"]

[upstreams.up]
url = "http://{HOST}:{up_port}"

[[routes]]
path = "{PATH}"
methods = ["GET"]
scopes = ["{SCOPE}"]
upstream = "up"
""")
    return conf


# ---------------------------------------------------------------------------------------------
# targets


class Target:
    def __init__(self, name: str, kind: str, port: int, h2port: int | None, proc: subprocess.Popen | None,
                 auth: bool, note: str = "", admin_port: int | None = None):
        self.name = name
        self.kind = kind            # direct | nginx | haproxy | scopegate
        self.port = port
        self.h2port = h2port
        self.proc = proc            # the process on core 0 (None for direct)
        self.auth = auth            # answers 401 without a token
        self.note = note
        self.admin_port = admin_port

    def pids(self) -> list[int]:
        return proc_tree(self.proc.pid) if self.proc is not None else []


# ---------------------------------------------------------------------------------------------
# load generators


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_dur_ms(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s.strip())
    if not m:
        raise BenchError(f"cannot parse wrk duration {s!r}")
    return float(m.group(1)) * UNIT[m.group(2)]


def parse_wrk(out: str) -> dict:
    r: dict = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise BenchError(f"wrk printed no Requests/sec:\n{out}")
    r["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    r["requests"] = int(m.group(1)) if m else 0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        r[f"p{pct}_ms"] = parse_dur_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return r


def parse_h2load(out: str) -> dict:
    r: dict = {}
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    if not m:
        raise BenchError(f"h2load printed no result line:\n{out}")
    r["rps"] = float(m.group(2))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if m:
        r["requests"] = int(m.group(3))
        r["failed"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    else:
        r["requests"], r["failed"] = 0, 0
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    r["non2xx"] = sum(int(x) for x in m.groups()[1:]) if m else 0
    r["ok2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    r["mean_ms"] = parse_dur_ms(m.group(3)) if m else None
    r["p50_ms"] = r["p99_ms"] = None
    return r


class Bench:
    def __init__(self, args, tmp: Path, procs: Procs):
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.upstream: subprocess.Popen | None = None
        self.results: dict = {"runs": []}

    def measure(self, target: Target, cmd: list[str], timeout: float) -> tuple[str, dict]:
        pids = target.pids()
        up_pids = proc_tree(self.upstream.pid)
        c0 = cpu_ticks(pids)
        u0 = cpu_ticks(up_pids)
        q0 = sched_stats(pids)
        b0, t0, i0 = core_busy_ticks(PROXY_CORE)
        l0, lt0, li0 = core_busy_ticks(LOAD_CORE)
        g0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = time.monotonic()
        p = run_boosted(cmd, timeout)
        wall = time.monotonic() - w0
        c1 = cpu_ticks(pids)
        u1 = cpu_ticks(up_pids)
        q1 = sched_stats(pids)
        b1, t1, i1 = core_busy_ticks(PROXY_CORE)
        l1, lt1, li1 = core_busy_ticks(LOAD_CORE)
        g1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            tool = next(c for c in cmd if c in ("wrk", "h2load"))
            raise BenchError(f"{tool} failed ({p.returncode}) against {target.name}:\n"
                             f"{p.stdout}\n{p.stderr}")
        self.procs.check_alive()
        proxy_cpu = (c1 - c0) / CLK_TCK
        upstream_cpu = (u1 - u0) / CLK_TCK
        loadgen_cpu = (g1.ru_utime + g1.ru_stime) - (g0.ru_utime + g0.ru_stime)
        core0 = (b1 - b0) / (t1 - t0) if t1 > t0 else None
        core1 = (l1 - l0) / (lt1 - lt0) if lt1 > lt0 else None
        irq0 = (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0
        irq1 = (li1 - li0) / (lt1 - lt0) if lt1 > lt0 else 0.0
        extra = {
            "proxy_cpu_s": proxy_cpu,
            "upstream_cpu_s": upstream_cpu,
            "loadgen_cpu_s": loadgen_cpu,
            "core0_busy": core0,
            "core1_busy": core1,
            # share of the run the proxy was runnable but not running: ~0 when it has core 0 to
            # itself; more means something else on the machine took the core from it
            "proxy_waited": busiest_thread_wait_s(q0, q1) / wall if pids else None,
            # interrupt + softirq share of each core (loopback networking the kernel does not
            # charge to a process), and the busy time left that none of our processes account
            # for: other programs on the machine (which may also just fill idle time)
            "core0_irq": irq0,
            "core1_irq": irq1,
            "core0_other": None if core0 is None else max(0.0, core0 - irq0 - proxy_cpu / wall),
            "core1_other": None if core1 is None else
            max(0.0, core1 - irq1 - (upstream_cpu + loadgen_cpu) / wall),
            "wall_s": wall,
        }
        return p.stdout + p.stderr, extra

    def wrk(self, target: Target, script: Path, duration: int, phase: str, rnd: int | None,
            connections: int | None = None, unpinned: bool = False) -> dict:
        # unpinned (the two-core test): wrk may use both cores, with a thread for each
        core, threads = (BOTH_CORES, 2) if unpinned else (LOAD_CORE, 1)
        conns = connections or self.args.connections
        cmd = NICE + ["taskset", "-c", core, "wrk", f"-t{threads}", f"-c{conns}",
               f"-d{duration}s", "--latency", "-s", str(script),
               f"http://{HOST}:{target.port}{PATH}"]
        out, extra = self.measure(target, cmd, duration + 60)
        r = parse_wrk(out)
        r.update(extra)
        r["connections"] = conns
        r["unpinned"] = unpinned
        return self.finish(target, r, phase, rnd, "wrk")

    def h2load(self, target: Target, token: str, duration: int, phase: str, rnd: int | None) -> dict:
        cmd = NICE + ["taskset", "-c", LOAD_CORE, "h2load", "-t1", f"-c{self.args.connections}", "-m1",
               "-D", str(duration), "-H", f"authorization: Bearer {token}",
               f"http://{HOST}:{target.h2port}{PATH}"]
        out, extra = self.measure(target, cmd, duration + 60)
        r = parse_h2load(out)
        r.update(extra)
        return self.finish(target, r, phase, rnd, "h2load")

    def finish(self, target: Target, r: dict, phase: str, rnd: int | None, tool: str) -> dict:
        n = r.get("requests") or 0
        r["cpu_us_per_req"] = (r["proxy_cpu_s"] / n * 1e6) if n and target.proc else None
        # The kernel accounts softirq time (loopback TCP receive processing, done on the core
        # of the sender) to the CPU, not to a process: it is in no proxy's /proc ticks. On the
        # proxy's own core it is the processing of what the proxy sent, so it is part of the
        # proxy's cost; this figure adds it (pinned tests only: unpinned, it cannot be told
        # apart from the load generator's).
        r["cpu_irq_us_per_req"] = ((r["proxy_cpu_s"] + r["core0_irq"] * r["wall_s"]) / n * 1e6) \
            if n and target.proc and not r.get("unpinned") else None
        r["upstream_cpu_us_per_req"] = r["upstream_cpu_s"] / n * 1e6 if n else None
        r["vmrss_kib"] = mem_kib(target.pids(), "VmRSS") if target.proc else None
        r["vmhwm_kib"] = mem_kib(target.pids(), "VmHWM") if target.proc else None
        r["upstream_vmhwm_kib"] = mem_kib(proc_tree(self.upstream.pid), "VmHWM")
        r.update({"target": target.name, "phase": phase, "round": rnd, "tool": tool})
        if phase != "warmup":
            self.results["runs"].append(r)
        bad = r.get("non2xx", 0) + r.get("socket_errors", 0) + r.get("failed", 0)
        flag = f"  !! {bad} errors/non-2xx" if bad else ""
        cpu = f"{r['cpu_us_per_req']:.1f}us/req" if r["cpu_us_per_req"] is not None else "-"
        p99 = f" p99 {r['p99_ms']:.2f}ms" if r.get("p99_ms") is not None else ""
        waited = f", proxy waited {r['proxy_waited']*100:.0f}%" if r.get("proxy_waited") is not None else ""
        busy = (f" core0 {r['core0_busy']*100:.0f}% (other {r['core0_other']*100:.0f}%{waited})"
                f" core1 {r['core1_busy']*100:.0f}% (other {r['core1_other']*100:.0f}%)") \
            if r.get("core0_busy") is not None and r.get("core1_busy") is not None else ""
        log(f"  {phase:<7} r{rnd if rnd is not None else '-'} {target.name:<26} "
            f"{r['rps']:>10.0f} req/s{p99} cpu {cpu}{busy}{flag}")
        return r


# ---------------------------------------------------------------------------------------------
# the idle keep-alive connection test


def idle_connections(target: Target, token: str, n: int, procs: Procs) -> dict:
    pids = target.pids()
    time.sleep(0.5)
    base = mem_kib(pids, "VmRSS")
    socks: list[socket.socket] = []
    errors = 0
    try:
        for _ in range(n):
            s = socket.create_connection((HOST, target.port), timeout=5)
            socks.append(s)
            try:
                st, _ = http_request_on(s, token)
                if st != 200:
                    errors += 1
            except (OSError, BenchError):
                errors += 1
        time.sleep(2.0)
        procs.check_alive()
        pids = target.pids()
        with_conns = mem_kib(pids, "VmRSS")
        # A second reading, 5 s after the last connection idled (within every target's
        # keep-alive timeout: scopegate's header_read_timeout of 10 s also bounds the wait for
        # the next head): memory released by an idle connection may leave the footprint only
        # after a while, depending on the allocator.
        time.sleep(3.0)
        with_conns_5s = mem_kib(pids, "VmRSS")
        hwm = mem_kib(pids, "VmHWM")
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += 0 if s.recv(1, socket.MSG_PEEK) == b"" else 1
            except BlockingIOError:
                alive += 1
            except OSError:
                pass
        still_serves = http_get(target.port, token)[0] == 200
    finally:
        for s in socks:
            s.close()
    r = {"target": target.name, "connections": n, "rss_idle_kib": base, "rss_with_conns_kib": with_conns,
         "vmhwm_kib": hwm, "per_conn_bytes": (with_conns - base) * 1024 / n, "alive": alive,
         "rss_with_conns_5s_kib": with_conns_5s, "per_conn_bytes_5s": (with_conns_5s - base) * 1024 / n,
         "errors": errors, "serves_new_request": still_serves}
    log(f"  idle    {target.name:<26} {base/1024:.1f} MiB -> {with_conns/1024:.1f} MiB with {alive}/{n} "
        f"open, {r['per_conn_bytes']/1024:.1f} KiB/conn ({r['per_conn_bytes_5s']/1024:.1f} after 5 s), "
        f"{errors} errors")
    time.sleep(1.0)
    return r


# ---------------------------------------------------------------------------------------------
# report


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds`, from /proc/stat."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v) - idle, sum(v)
    b0, t0 = snap()
    time.sleep(seconds)
    b1, t1 = snap()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs: list[dict], phase: str, names: list[str]) -> dict:
    out = {}
    for name in names:
        rs = [r for r in runs if r["phase"] == phase and r["target"] == name]
        if not rs:
            continue
        out[name] = {
            "rounds": len(rs),
            "rps": med([r["rps"] for r in rs]),
            "rps_all": [round(r["rps"]) for r in rs],
            "p50_ms": med([r.get("p50_ms") for r in rs]),
            "p99_ms": med([r.get("p99_ms") for r in rs]),
            "mean_ms": med([r.get("mean_ms") for r in rs]),
            "cpu_us_per_req": med([r.get("cpu_us_per_req") for r in rs]),
            "upstream_cpu_us_per_req": med([r.get("upstream_cpu_us_per_req") for r in rs]),
            "core0_busy": med([r.get("core0_busy") for r in rs]),
            "core1_busy": med([r.get("core1_busy") for r in rs]),
            "core0_other": med([r.get("core0_other") for r in rs]),
            "cpu_irq_us_per_req": med([r.get("cpu_irq_us_per_req") for r in rs]),
            "upstream_cpu_s_per_s": med([r["upstream_cpu_s"] / r["wall_s"] for r in rs]),
            "loadgen_cpu_s_per_s": med([r["loadgen_cpu_s"] / r["wall_s"] for r in rs]),
            "proxy_cpu_s_per_s": med([r["proxy_cpu_s"] / r["wall_s"] for r in rs]),
            "proxy_waited": med([r.get("proxy_waited") for r in rs]),
            "core0_irq": med([r.get("core0_irq") for r in rs]),
            "core1_irq": med([r.get("core1_irq") for r in rs]),
            "core1_other": med([r.get("core1_other") for r in rs]),
            "loadgen_cpu_us_per_req": med([r["loadgen_cpu_s"] / r["requests"] * 1e6
                                           for r in rs if r.get("requests")]),
            "upstream_peak_rss_kib": max([r.get("upstream_vmhwm_kib") or 0 for r in rs]) or None,
            "peak_rss_kib": max([r.get("vmhwm_kib") or 0 for r in rs]) or None,
            "rss_kib": rs[-1].get("vmrss_kib"),
            "errors": sum(r.get("non2xx", 0) + r.get("socket_errors", 0) + r.get("failed", 0) for r in rs),
        }
    return out


def fmt(x, spec: str, dash: str = "—") -> str:
    return dash if x is None else format(x, spec)


def pct(x) -> str:
    return "—" if x is None else f"{x * 100:.0f}%"


def limit(s: dict) -> str:
    """Which side held the rate back: the proxy (its own CPU plus the softirq work on its core
    near a whole core) or the load side (wrk + upstream core saturated while the proxy had CPU
    to spare). A load-bound proxy's req/s is a lower bound of what it can do, and its CPU per
    request is inflated (fewer events per wake-up), so ratios against it flatter the other."""
    own = (s.get("proxy_cpu_s_per_s") or 0) + (s.get("core0_irq") or 0)
    if s.get("cpu_us_per_req") is None:
        return "—"
    if own >= 0.92:
        return "proxy"
    if (s.get("core1_busy") or 0) >= 0.95:
        return f"load side (proxy {own * 100:.0f}%)"
    return f"neither (proxy {own * 100:.0f}%)"


def table(summary: dict, direct: str | None, nginx: str | None, latency: str = "p") -> str:
    d = summary.get(direct, {}).get("rps") if direct else None
    n = summary.get(nginx, {}).get("rps") if nginx else None
    ncpu = summary.get(nginx, {}).get("cpu_us_per_req") if nginx else None
    lat_head = "p50 ms | p99 ms" if latency == "p" else "mean ms"
    ncpu_irq = summary.get(nginx, {}).get("cpu_irq_us_per_req") if nginx else None
    cols = ["target", "req/s", lat_head, "CPU µs/req", "CPU+softirq µs/req", "peak RSS MiB",
            "req/s ÷ direct", "req/s ÷ nginx", "CPU ÷ nginx", "CPU+softirq ÷ nginx",
            "proxy core busy (proxy waited)", "load core busy (other)", "limit", "errors"]
    ncols = len(cols) + (1 if latency == "p" else 0)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * ncols]
    for name, s in summary.items():
        lat = (f"{fmt(s['p50_ms'], '.3f')} | {fmt(s['p99_ms'], '.3f')}" if latency == "p"
               else fmt(s["mean_ms"], ".3f"))
        if s["cpu_us_per_req"] is None and s.get("upstream_cpu_us_per_req") is not None:
            # direct: no proxy; show the upstream server's own figures, marked with *
            cpu = f"{s['upstream_cpu_us_per_req']:.1f}*"
            rss = fmt(s.get("upstream_peak_rss_kib") and s["upstream_peak_rss_kib"] / 1024, ".1f") + "*"
        else:
            cpu = fmt(s["cpu_us_per_req"], ".1f")
            rss = fmt(s["peak_rss_kib"] and s["peak_rss_kib"] / 1024, ".1f")
        ratio_cpu = fmt(ncpu and s["cpu_us_per_req"] and s["cpu_us_per_req"] / ncpu, ".2f")
        cirq = s.get("cpu_irq_us_per_req")
        ratio_irq = fmt(ncpu_irq and cirq and cirq / ncpu_irq, ".2f")
        lines.append(
            f"| {name} | {s['rps']:.0f} | {lat} | {cpu} | {fmt(cirq, '.1f')} | {rss} | "
            f"{fmt(d and s['rps'] / d, '.2f')} | {fmt(n and s['rps'] / n, '.2f')} | {ratio_cpu} | "
            f"{ratio_irq} | {pct(s['core0_busy'])} ({pct(s.get('proxy_waited'))}) | "
            f"{pct(s['core1_busy'])} ({pct(s['core1_other'])}) | {limit(s)} | {s['errors']} |")
    return "\n".join(lines)


def scale_table(summary: dict) -> str:
    """The two-core test against the pinned one-core runs of the same concurrency."""
    pairs = (("nginx (2 workers)", "nginx (no auth)"), ("scopegate (2 cores)", "scopegate"))
    lines = ["### Both cores, unpinned — wrk -t2, proxy, wrk and upstream share the 2 cores", "",
             "| target | connections | req/s | p99 ms | proxy CPU µs/req | proxy CPU (cores) | "
             "wrk + upstream CPU (cores) | machine busy | 1 core pinned req/s | scaling | "
             "req/s ÷ nginx, 2 cores | req/s ÷ nginx, 1 core |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for conns, one in ((64, "h1"), (256, "h1c256")):
        two = summary.get(f"scale-c{conns}", {})
        n2 = two.get(pairs[0][0], {}).get("rps")
        n1 = summary.get(one, {}).get(pairs[0][1], {}).get("rps")
        for name2, name1 in pairs:
            s = two.get(name2)
            if not s:
                continue
            r1 = summary.get(one, {}).get(name1, {}).get("rps")
            busy = [x for x in (s.get("core0_busy"), s.get("core1_busy")) if x is not None]
            load = (s.get("upstream_cpu_s_per_s") or 0) + (s.get("loadgen_cpu_s_per_s") or 0)
            lines.append(
                f"| {name2} | {conns} | {s['rps']:.0f} | {fmt(s['p99_ms'], '.3f')} | "
                f"{fmt(s['cpu_us_per_req'], '.1f')} | {fmt(s.get('proxy_cpu_s_per_s'), '.2f')} | "
                f"{load:.2f} | {pct(sum(busy) / len(busy) if busy else None)} | {fmt(r1, '.0f')} | "
                f"{fmt(r1 and s['rps'] / r1, '.2f')}x | {fmt(n2 and s['rps'] / n2, '.2f')} | "
                f"{fmt(n1 and r1 and r1 / n1, '.2f')} |")
    lines += ["", "Scaling = req/s on both cores ÷ req/s pinned to one core at the same concurrency "
              "(the HTTP/1.1 tables above). On a 2-core machine the proxy cannot have both cores: "
              "wrk and the upstream need about as much CPU per request as the proxy, so the "
              "\"wrk + upstream\" column shows how much of the machine the load side took, and "
              "scaling here measures the whole machine's throughput with the proxy's share, not "
              "a proxy with two cores to itself."]
    return "\n".join(lines)


def machine_info(binary: Path) -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        mem_gib = int(mem) / 1024 / 1024
    except (OSError, IndexError, ValueError):
        mem_gib = None
    rev = "?"
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_gib, 1) if mem_gib else None,
        "kernel": platform.release(),
        "os": (Path("/etc/os-release").read_text().split("PRETTY_NAME=")[1].splitlines()[0].strip('"')
               if Path("/etc/os-release").exists() else "?"),
        "scopegate_rev": rev,
        "scopegate_binary": str(binary),
        "nginx": tool_version(["nginx", "-v"]),
        "haproxy": tool_version(["haproxy", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "h2load": tool_version(["h2load", "--version"]),
        "python_cryptography": __import__("cryptography").__version__,
    }


# ---------------------------------------------------------------------------------------------
# main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 s per target (~1.5 min)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per test (default 5; quick 2)")
    ap.add_argument("--duration", type=int, help="seconds per load run (default 6; quick 3)")
    ap.add_argument("--connections", type=int, default=64, help="keep-alive connections (default 64)")
    ap.add_argument("--idle", type=int, default=1000, help="idle keep-alive connections (default 1000)")
    ap.add_argument("--tokens", type=int, default=10000, help="distinct tokens (default 10000)")
    ap.add_argument("--binary", default=str(ROOT / "target/release/scopegate"))
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=PATH",
                    help="A/B: also run the scopegate binary PATH (cache on) as target "
                         "'scopegate [LABEL]', interleaved with the others (repeatable)")
    ap.add_argument("--json", default=str(HERE / "last-run.json"), help="where to write the results")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--tests", default=",".join(TESTS),
                    help=f"comma-separated subset of {','.join(TESTS)} (default: all)")
    ap.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                    help="niceness of every process the benchmark starts (default -10 as root, so "
                         "that background work on the machine disturbs less; 0 to leave as is)")
    args = ap.parse_args()
    # More, shorter rounds rather than fewer long ones: on a shared machine the median of five
    # interleaved runs is steadier than that of three.
    rounds = args.rounds or (2 if args.quick else 5)
    args.tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    if not args.tests or not set(args.tests) <= set(TESTS):
        ap.error(f"--tests takes a comma-separated subset of {','.join(TESTS)}")
    if args.nice:
        NICE[:] = ["nice", "-n", str(args.nice)]
    duration = args.duration or (3 if args.quick else 6)
    warm = 1 if args.quick else 2
    binary = Path(args.binary)

    for tool in ("nginx", "haproxy", "wrk", "h2load", "taskset"):
        if shutil.which(tool) is None:
            log(f"missing tool: {tool} (run benches/load/run.sh, which installs it)")
            return 2
    if not binary.is_file():
        log(f"missing {binary}: run `cargo build --release` first (run.sh does)")
        return 2
    ncpu = len(os.sched_getaffinity(0))
    if ncpu < 2 or not {0, 1} <= os.sched_getaffinity(0):
        log(f"need CPUs 0 and 1 (have {sorted(os.sched_getaffinity(0))}): the proxy runs on core 0, "
            "the load generator and upstream on core 1")
        return 2

    # 1,000 idle connections and 64-connection proxies need more than the default 1024 fds;
    # children inherit the raised limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < args.idle + 200:
        log(f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} too low for "
            f"{args.idle} idle connections")
        return 2
    # the driver itself (and the sockets of the idle test) stays off the proxy's core
    os.sched_setaffinity(0, {int(LOAD_CORE)})

    tmp = Path(tempfile.mkdtemp(prefix="scopegate-bench-"))
    procs = Procs(tmp)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    started = time.time()
    try:
        return run(args, tmp, procs, binary, rounds, duration, warm)
    except BenchError as e:
        log(f"ABORTED: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        log(f"stopped every process started ({len(procs.items)}); total {time.time()-started:.0f}s")
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path, procs: Procs, binary: Path, rounds: int, duration: int, warm: int) -> int:
    # HTTP/2 and the many-token test get one round fewer than the main test (at least 2)
    rounds2 = args.rounds or max(2, rounds - 1)
    log(f"temp dir {tmp}; {rounds} rounds (HTTP/2 and 10k tokens: {rounds2}) x {duration}s per target")
    busy = machine_busy()
    if busy > 0.10:
        log(f"WARNING: the machine is {busy*100:.0f}% busy before the benchmark starts (other "
            "programs); the figures will be noisy — see 'proxy waited' in the report")
    keys = Keys(tmp)
    token = keys.token()
    t0 = time.time()
    many = [keys.token(client=f"client-{i}") for i in range(args.tokens)]
    log(f"signed {len(many)} distinct tokens in {time.time()-t0:.1f}s")
    (tmp / "tokens.txt").write_text("\n".join(many) + "\n")
    wrong_scope = keys.token(scope="API/book.post")
    expired = keys.token(ttl=-3600)
    bad_sig = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")

    static_lua = tmp / "static.lua"
    static_lua.write_text(f'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer {token}"\n')
    rotate_lua = tmp / "rotate.lua"
    rotate_lua.write_text(f"""-- rotates through {len(many)} distinct tokens, one per request
local tokens = {{}}
for line in io.lines("{tmp / 'tokens.txt'}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "{PATH}", {{["Authorization"] = "Bearer " .. tokens[i]}})
end
""")

    # ---- start everything
    up_port, up_h2 = free_port(), free_port()
    conf = write_upstream_conf(tmp, up_port, up_h2)
    bench = Bench(args, tmp, procs)
    bench.upstream = procs.start("upstream", ["nginx", "-p", str(conf.parent), "-c", str(conf),
                                              "-e", str(conf.parent / "error.log")], LOAD_CORE)
    wait_port(up_port, procs)

    targets: list[Target] = [Target("direct (upstream)", "direct", up_port, up_h2, None, False,
                                    "wrk -> upstream, no proxy")]

    def start_nginx_proxy(proc_name: str, workers: int, core: str, **conf_args) -> tuple[int, int, subprocess.Popen]:
        port, h2 = free_port(), free_port()
        conf = write_nginx_proxy_conf(tmp, port, h2, up_port, workers=workers,
                                      idle_upstream=max(256, args.connections), **conf_args)
        p = procs.start(proc_name, ["nginx", "-p", str(conf.parent), "-c", str(conf),
                                    "-e", str(conf.parent / "error.log")], core)
        wait_port(port, procs)
        return port, h2, p

    nx_port, nx_h2, p = start_nginx_proxy("nginx", 1, PROXY_CORE)
    targets.append(Target("nginx (no auth)", "nginx", nx_port, nx_h2, p, False,
                          "plain reverse proxy, 1 worker"))

    ha_port, ha_h2 = free_port(), free_port()
    conf = write_haproxy_conf(tmp, ha_port, ha_h2, up_port, keys.pub_pem_path)
    chk = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True)
    if chk.returncode != 0:
        raise BenchError(f"haproxy rejects its config:\n{chk.stdout}{chk.stderr}")
    p = procs.start("haproxy", ["haproxy", "-db", "-f", str(conf)], PROXY_CORE)
    wait_port(ha_port, procs)
    targets.append(Target("haproxy (jwt_verify)", "haproxy", ha_port, ha_h2, p, True,
                          "nbthread 1, jwt_verify RS256 + iss/exp/scope ACL"))

    variants = [("scopegate", None, "warn", "token cache on (default 65536)"),
                ("scopegate (cache off)", 0, "warn", "auth.cache_entries = 0")]
    if not args.quick:
        variants.append(("scopegate (info log)", None, "info",
                         "RUST_LOG=info: one JSON access-log line per request, to a file"))
    extra_bins = {}
    for v in args.variant:
        label, _, path = v.partition("=")
        if not path or not Path(path).is_file():
            raise BenchError(f"--variant {v!r}: want LABEL=PATH to a scopegate binary")
        name = f"scopegate [{label}]"
        variants.append((name, None, "warn", f"A/B variant: {path}"))
        extra_bins[name] = path
    for i, (name, cache, level, note) in enumerate(variants):
        port, admin = free_port(), free_port()
        conf = write_scopegate_conf(tmp, f"scopegate{i}", port, admin, up_port, cache)
        exe = extra_bins.get(name, str(binary))
        chk = subprocess.run([exe, "check", "--config", str(conf)], capture_output=True, text=True)
        if chk.returncode != 0:
            raise BenchError(f"`scopegate check` rejects {conf} (exit {chk.returncode}):\n"
                             f"{chk.stdout}{chk.stderr}")
        env = dict(os.environ, RUST_LOG=level)
        p = procs.start(f"scopegate{i}", [exe, "--config", str(conf)], PROXY_CORE, env)
        wait_port(port, procs)
        targets.append(Target(name, "scopegate", port, port, p, True, note, admin))

    # ---- the two-core test's own targets: unpinned, so NGINX gets 2 workers and scopegate its
    # multi-thread runtime (it sizes itself to the CPUs it may use); idle during the other tests
    scale_targets: list[Target] = []
    if "scale" in args.tests:
        n2_port, n2_h2, p = start_nginx_proxy("nginx2", 2, BOTH_CORES, name="nginx-proxy-2")
        scale_targets.append(Target("nginx (2 workers)", "nginx", n2_port, n2_h2, p, False,
                                    "plain reverse proxy, 2 workers, unpinned"))
        port, admin = free_port(), free_port()
        conf = write_scopegate_conf(tmp, "scopegate-2", port, admin, up_port, None)
        env = dict(os.environ, RUST_LOG="warn")
        p = procs.start("scopegate-2", [str(binary), "--config", str(conf)], BOTH_CORES, env)
        wait_port(port, procs)
        scale_targets.append(Target("scopegate (2 cores)", "scopegate", port, port, p, True,
                                    "multi-thread runtime (2 workers), unpinned", admin))

    # ---- correctness checks before any measurement
    log("checking every target answers as configured")
    for t in targets + scale_targets:
        deadline = time.time() + 10
        while True:
            st, body = http_get(t.port, token)
            if st == 200 or time.time() > deadline:
                break
            time.sleep(0.2)  # e.g. scopegate still loading keys (503)
        if st != 200 or b'"ok"' not in body:
            raise BenchError(f"{t.name}: valid token got {st} {body[:200]!r} (want 200 from upstream)")
        if t.auth:
            for label, tok, want in (("no token", None, 401), ("wrong scope", wrong_scope, 401),
                                     ("expired", expired, 401), ("bad signature", bad_sig, 401)):
                st, body = http_get(t.port, tok)
                if st != want:
                    raise BenchError(f"{t.name}: {label} got {st} {body[:200]!r}, want {want}")
        # HTTP/2 (h2c prior knowledge)
        for label, hdr, want in (("h2 valid", [f"authorization: Bearer {token}"], "2xx"),
                                 ("h2 no token", [], "4xx")):
            if want == "4xx" and not t.auth:
                continue
            cmd = ["h2load", "-n4", "-c1"] + sum((["-H", h] for h in hdr), []) + \
                [f"http://{HOST}:{t.h2port}{PATH}"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
            if not re.search(rf"status codes: .*4 {want}", out):
                raise BenchError(f"{t.name}: {label} over h2c: want 4x {want}, h2load says:\n{out}")
    log("all targets: 200 with a valid token" + "; 401 without/wrong scope/expired/bad signature "
        "for haproxy and scopegate; h2c OK")

    results = bench.results
    names = [t.name for t in targets]

    def interleaved(phase: str, ts: list[Target], fn, n_rounds: int) -> None:
        for t in ts:
            fn(t, warm, "warmup", None)
        for rnd in range(n_rounds):
            k = rnd % len(ts)
            order = ts[k:] + ts[:k]  # rotate the order each round so drift spreads evenly
            if rnd % 2 == 1:
                order = order[::-1]
            for t in order:
                fn(t, duration, phase, rnd + 1)

    # ---- 1. HTTP/1.1, 64 keep-alive connections, one token
    if "h1" in args.tests:
        log(f"HTTP/1.1: wrk -t1 -c{args.connections} -d{duration}s, one valid token")
        interleaved("h1", targets, lambda t, d, ph, r: bench.wrk(t, static_lua, d, ph, r), rounds)
    peak_after_h1 = {t.name: mem_kib(t.pids(), "VmHWM") for t in targets if t.proc}

    # ---- 1b. HTTP/1.1 at 256 connections (the issue's second concurrency)
    c256_targets = [t for t in targets if t.name in
                    ("nginx (no auth)", "haproxy (jwt_verify)", "scopegate", "scopegate (cache off)")
                    or t.name.startswith("scopegate [")]
    if "h1c256" in args.tests:
        log(f"HTTP/1.1: wrk -t1 -c256 -d{duration}s, one valid token")
        interleaved("h1c256", c256_targets,
                    lambda t, d, ph, r: bench.wrk(t, static_lua, d, ph, r, connections=256), rounds2)

    # ---- 1c. both cores, unpinned: proxy, wrk and upstream share the machine's 2 cores
    if "scale" in args.tests:
        up_pids = proc_tree(bench.upstream.pid)
        for pid in up_pids:
            os.sched_setaffinity(pid, {int(PROXY_CORE), int(LOAD_CORE)})
        try:
            for conns in (64, 256):
                log(f"two cores, unpinned: wrk -t2 -c{conns} -d{duration}s against NGINX (2 workers) "
                    "and scopegate (multi-thread)")
                interleaved(f"scale-c{conns}", scale_targets,
                            lambda t, d, ph, r, c=conns: bench.wrk(t, static_lua, d, ph, r,
                                                                   connections=c, unpinned=True),
                            rounds2)
        finally:
            for pid in up_pids:
                try:
                    os.sched_setaffinity(pid, {int(LOAD_CORE)})
                except OSError:
                    pass

    # ---- 2. HTTP/2 h2c
    h2_targets = [t for t in targets if t.name != "scopegate (info log)"]
    if "h2" in args.tests:
        log(f"HTTP/2 (h2c prior knowledge): h2load -t1 -c{args.connections} -m1 -D {duration}")
        interleaved("h2", h2_targets, lambda t, d, ph, r: bench.h2load(t, token, d, ph, r), rounds2)

    # ---- 3. 10,000 distinct tokens
    miss_targets = [t for t in targets if t.name in
                    ("nginx (no auth)", "haproxy (jwt_verify)", "scopegate", "scopegate (cache off)")
                    or t.name.startswith("scopegate [")]
    if "tokens" in args.tests:
        log(f"{len(many)} distinct tokens, rotated per request (wrk Lua request())")
        interleaved("tokens", miss_targets, lambda t, d, ph, r: bench.wrk(t, rotate_lua, d, ph, r),
                    rounds2)

    # scopegate's own counters, if its admin listener serves /metrics
    metrics = {}
    for t in targets:
        if t.admin_port:
            try:
                with socket.create_connection((HOST, t.admin_port), timeout=2) as s:
                    st, body = http_request_on(s, None, "/metrics")
                if st == 200:
                    metrics[t.name] = [ln for ln in body.decode(errors="replace").splitlines()
                                       if "cache" in ln and not ln.startswith("#")]
            except (OSError, BenchError, ValueError, IndexError):
                metrics[t.name] = None

    # ---- 4. idle keep-alive connections
    idle = []
    if "idle" in args.tests:
        log(f"{args.idle} idle keep-alive connections (one request each, then idle)")
        idle = [idle_connections(t, token, args.idle, procs) for t in targets
                if t.name in ("nginx (no auth)", "haproxy (jwt_verify)", "scopegate")
                or t.name.startswith("scopegate [")]

    # ---- report
    results["machine"] = machine_info(binary)
    results["settings"] = {"rounds": rounds, "rounds_h2_tokens": rounds2, "busy_before_start": busy,
                           "duration_s": duration, "warmup_s": warm,
                           "connections": args.connections, "idle_connections": args.idle,
                           "distinct_tokens": len(many), "quick": args.quick,
                           "tests": args.tests, "nice": args.nice,
                           "proxy_core": PROXY_CORE, "load_core": LOAD_CORE,
                           "targets": {t.name: t.note for t in targets}}
    all_names = names + [t.name for t in scale_targets]
    results["summary"] = {
        "h1": summarize(results["runs"], "h1", names),
        "h1c256": summarize(results["runs"], "h1c256", names),
        "scale-c64": summarize(results["runs"], "scale-c64", all_names),
        "scale-c256": summarize(results["runs"], "scale-c256", all_names),
        "h2": summarize(results["runs"], "h2", names),
        "tokens": summarize(results["runs"], "tokens", names),
    }
    results["peak_rss_after_h1_kib"] = peak_after_h1
    results["idle"] = idle
    results["scopegate_cache_metrics"] = metrics
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")

    m = results["machine"]
    D, N = "direct (upstream)", "nginx (no auth)"
    print()
    print(f"## scopegate load benchmark ({'quick' if args.quick else 'full'})")
    print()
    print(f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['mem_gib']} GiB, Linux {m['kernel']}, {m['os']}.  ")
    print(f"Tools: {m['nginx']}; {m['haproxy']}; {m['wrk']}; {m['h2load']}. scopegate {m['scopegate_rev']}.  ")
    print(f"Proxy under test pinned to core {PROXY_CORE}; load generator and upstream nginx pinned to "
          f"core {LOAD_CORE}. Median of {rounds} interleaved rounds ({rounds2} for HTTP/2 and the "
          f"many-token test) of {duration}s "
          f"(after a {warm}s warm-up per target); {args.connections} keep-alive connections; "
          "response body `{\"ok\":true}`." +
          (f" Every process started at niceness {args.nice}." if args.nice else ""))
    print()
    if "h1" in args.tests:
        print(f"### HTTP/1.1 — wrk -t1 -c{args.connections}, one valid RS256 token, GET /book "
              "(scope API/book.get)")
        print()
        print(table(results["summary"]["h1"], D, N))
        print()
        print("CPU µs/req and peak RSS are those of the proxy process(es) on core 0 (nginx: master + "
              "worker). \\* direct row: no proxy; the figures are the upstream nginx's own, on core 1.")
        print()
    if "h1c256" in args.tests:
        print("### HTTP/1.1 — wrk -t1 -c256, one valid RS256 token, GET /book")
        print()
        print(table(results["summary"]["h1c256"], None, N))
        print()
    if "scale" in args.tests:
        print(scale_table(results["summary"]))
        print()
    if "h2" in args.tests:
        print(f"### HTTP/2 (h2c prior knowledge) — h2load -t1 -c{args.connections} -m1")
        print()
        print(table(results["summary"]["h2"], D, N, latency="mean"))
        print()
    if "tokens" in args.tests:
        print(f"### {len(many)} distinct tokens, one per request in rotation — wrk -t1 -c{args.connections}")
        print()
        print(table(results["summary"]["tokens"], None, N))
        print()
        print("scopegate (cache on) verifies each token once, then serves it from its cache; "
              "scopegate (cache off) and HAProxy verify the RS256 signature on every request. "
              "The nginx row shows what the token rotation itself costs the load generator.")
        if any(metrics.values()):
            print()
            for k, v in metrics.items():
                if v:
                    print(f"- {k} cache counters: " + "; ".join(v[:6]))
        print()
    if "idle" in args.tests:
        print(f"### {args.idle} idle keep-alive connections (each made one request, then idles)")
        print()
        print("| target | RSS idle MiB | RSS with conns MiB (2 s) | per connection KiB (2 s) | "
              "per connection KiB (5 s) | still open | errors | serves new request |")
        print("|---|---|---|---|---|---|---|---|")
        for r in idle:
            print(f"| {r['target']} | {r['rss_idle_kib']/1024:.1f} | {r['rss_with_conns_kib']/1024:.1f} | "
                  f"{r['per_conn_bytes']/1024:.1f} | {r['per_conn_bytes_5s']/1024:.1f} | "
                  f"{r['alive']}/{r['connections']} | {r['errors']} | "
                  f"{'yes' if r['serves_new_request'] else 'NO'} |")
        print()
    # unpinned runs share the cores with the load side by design: waiting there is not noise
    noisy = sorted({name for ph, summ in results["summary"].items() if not ph.startswith("scale")
                    for name, s in summ.items() if (s.get("proxy_waited") or 0) > 0.05})
    if noisy or busy > 0.10:
        print(f"**Noise warning:** the machine was {busy*100:.0f}% busy with other programs before the "
              "start" + (", and the proxy waited for its core more than 5% of the time during the "
                         "runs of: " + ", ".join(noisy) if noisy else "") +
              ". Rerun on an idle machine for figures to quote.")
        print()
    problems = [f"{ph}: {name}: {s['errors']} errors/non-2xx" for ph, summ in results["summary"].items()
                for name, s in summ.items() if s["errors"]]
    problems += [f"idle: {r['target']}: {r['errors']} errors, {r['alive']}/{r['connections']} open"
                 for r in idle if r["errors"] or r["alive"] < r["connections"] or not r["serves_new_request"]]
    if problems:
        print("**Problems seen:** " + "; ".join(problems))
        print()
    print(f"Raw results: {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
