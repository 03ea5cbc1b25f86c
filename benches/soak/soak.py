#!/usr/bin/env python3
"""Soak run for scopegate: see benches/soak/README.md.

Starts target/release/scopegate on 127.0.0.1 with a generated gateway.toml, and, in this one
asyncio process, everything around it:
  * a JWKS server whose RSA keys rotate (the last three keys published; tokens of every
    published key in use),
  * upstream `app`: small answers, a chunked-body echo, a streamed download, a WebSocket echo,
  * upstream `flaky`: resets, resets mid-head and mid-body, stalls past `request_timeout`, and
    closes keep-alive connections at random,
  * the clients: valid and invalid tokens, unknown kids, tokens of retired keys, token requests
    to the built-in issuer, WebSocket tunnels, streaming bodies, upstream faults,
  * an editor that rewrites gateway.toml every few seconds (hot reload),
  * a sampler: RSS, open fds and threads of the gateway every second; request latencies.

Every request type has its set of expected outcomes (a status, or `truncated` for a body cut
off by an upstream reset after the head was forwarded). At the end it prints the pass criteria
and exits 0 when all hold, 1 otherwise; it writes last-run.json, last-run.csv, last-run.md
and last-run.png next to this file.

Usage: python3 benches/soak/soak.py [--minutes M | --quick] [--binary PATH] [--keep-tmp]
Normally started through `bash benches/soak/run.sh`, which installs what it needs and builds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import hashlib
import json
import math
import os
import platform
import random
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "load"))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import bench  # noqa: E402  (shared with the load benchmark: ports, processes, /proc readings)

HOST = bench.HOST
ISSUER = "https://soak.issuer.invalid"            # keys from the driver's JWKS server
FILE_ISSUER = "https://soak-file.issuer.invalid"  # keys from a jwks_file the driver rewrites
SCOPE = "soak/read"
CLIENT_ID = "soak"
CLIENT_SECRET = "soak-secret-" + uuid.uuid4().hex[:8]
REQUEST_TIMEOUT_S = 1.0     # the gateway's request_timeout: a stalled upstream gets 504 after it
JWKS_REFRESH_S = 2          # [[auth.issuers]] refresh
CLIENT_TIMEOUT_S = 15.0     # a client gives up on any one request after this: outcome "timeout"


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


b64url = bench.b64url


# ---------------------------------------------------------------------------------------------
# keys and tokens


class SigningKey:
    """One RSA key of the rotating JWKS, with pools of tokens minted with it."""

    def __init__(self, kid: str, iss: str):
        self.kid = kid
        self.iss = iss
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        nums = self.key.public_key().public_numbers()

        def ub(n: int) -> str:
            return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        self.jwk = {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": ub(nums.n), "e": ub(nums.e)}
        self.published_at: float | None = None
        self.removed_at: float | None = None
        self.valid = [self.mint() for _ in range(24)]
        self.noscope = [self.mint(scope="soak/other") for _ in range(4)]

    def mint(self, scope: str = SCOPE, iss: str | None = None, exp_in: int = 3600, kid: str | None = None,
             alg: str = "RS256") -> str:
        now = int(time.time())
        iss = iss or self.iss
        header = b64url(json.dumps({"alg": alg, "kid": kid or self.kid, "typ": "JWT"},
                                   separators=(",", ":")).encode())
        claims = {"iss": iss, "sub": "soak-client", "client_id": "soak-client", "scope": scope,
                  "iat": now, "exp": now + exp_in, "jti": str(uuid.uuid4())}
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        if alg == "none":
            return f"{header}.{payload}."
        sig = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{payload}.{b64url(sig)}"


def break_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    i = len(sig) // 2
    flipped = "B" if sig[i] != "B" else "C"
    return f"{head}.{payload}.{sig[:i]}{flipped}{sig[i + 1:]}"


class KeyRing:
    """The JWKS the driver serves: the last three keys. A key's tokens count as valid once it has
    been published longer than the gateway's refresh (plus a margin), so the gateway has fetched
    it; a removed key's tokens count as invalid once it has been gone that long."""

    KEEP = 3

    def __init__(self, settle_s: float, iss: str, name: str):
        self.settle_s = settle_s
        self.iss = iss
        self.name = name
        self.published: list[SigningKey] = []
        self.retired: list[SigningKey] = []
        self.rotations = 0
        self._n = 0
        self.rotate()

    def new_key(self) -> SigningKey:
        self._n += 1
        return SigningKey(f"{self.name}-{self._n}-{uuid.uuid4().hex[:6]}", self.iss)

    def rotate(self, key: SigningKey | None = None) -> None:
        key = key or self.new_key()
        now = time.monotonic()
        key.published_at = now
        self.published.insert(0, key)
        while len(self.published) > self.KEEP:
            old = self.published.pop()
            old.removed_at = now
            self.retired.insert(0, old)
            del self.retired[3:]
        self.rotations += 1

    def jwks(self) -> bytes:
        return json.dumps({"keys": [k.jwk for k in self.published]}).encode()

    def usable(self) -> list[SigningKey]:
        now = time.monotonic()
        keys = [k for k in self.published if now - k.published_at >= self.settle_s]
        return keys or self.published[-1:]

    def gone(self) -> list[SigningKey]:
        now = time.monotonic()
        return [k for k in self.retired if now - k.removed_at >= self.settle_s]


# ---------------------------------------------------------------------------------------------
# HTTP/1.1 over asyncio streams, both sides


class Truncated(Exception):
    pass


async def read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str], until_eof: bool) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read() if until_eof else b""


def abort(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        try:
            writer.transport.abort()
        except Exception:
            pass


def rst_close(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    abort(writer)


class Client:
    """One keep-alive client connection to the gateway."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        abort(self.writer)
        self.reader = self.writer = None

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None, chunks: list[bytes] | None = None,
                      chunk_pause: float = 0.0) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 20)
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        if body is not None:
            head += f"Content-Length: {len(body)}\r\n"
        elif chunks is not None:
            head += "Transfer-Encoding: chunked\r\n"
        self.writer.write((head + "\r\n").encode())
        if body:
            self.writer.write(body)
        if chunks is not None:
            for c in chunks:
                self.writer.write(b"%x\r\n%s\r\n" % (len(c), c))
                await self.writer.drain()
                if chunk_pause:
                    await asyncio.sleep(chunk_pause)
            self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()
        try:
            status_line, rh = await read_head(self.reader)
            status = int(status_line.split()[1])
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            self.close()
            raise
        try:
            data = b"" if method == "HEAD" or status in (204, 304) else \
                await read_body(self.reader, rh, until_eof=True)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            self.close()
            raise Truncated(status) from e
        if rh.get("connection", "").lower() == "close":
            self.close()
        return status, rh, data


# ---- servers ------------------------------------------------------------------------------


async def serve_requests(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle) -> None:
    """Keep-alive server loop: `handle(method, path, headers, body, reader, writer)` writes the
    answer and returns False to stop (connection taken over, closed or reset), True to wait for
    the next request, or a number of seconds to wait for it before closing the connection."""
    idle = None
    try:
        while True:
            try:
                line, headers = await asyncio.wait_for(read_head(reader), idle)
            except asyncio.TimeoutError:
                writer.close()
                return
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                break
            method, path = line.split()[:2]
            body = b""
            if "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower():
                body = await read_body(reader, headers, until_eof=False)
            verdict = await handle(method, path, headers, body, reader, writer)
            if verdict is False:
                return
            idle = None if verdict is True else float(verdict)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except asyncio.CancelledError:
        pass  # the run is over
    finally:
        abort(writer)


def answer(writer: asyncio.StreamWriter, status: int, body: bytes, extra: str = "") -> None:
    reason = {200: "OK", 404: "Not Found"}.get(status, "X")
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n{extra}\r\n".encode() + body)


class JwksServer:
    def __init__(self, ring: KeyRing):
        self.ring = ring
        self.fetches = 0

    async def handle(self, method, path, headers, body, reader, writer) -> bool:
        self.fetches += 1
        answer(writer, 200, self.ring.jwks(), "Cache-Control: max-age=1\r\n")
        await writer.drain()
        return True


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        payload = xor_mask(payload, key)
        head += key
    return head + payload


async def ws_read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n)
    if key:
        data = xor_mask(data, key)
    return b0 & 0x0F, data


def xor_mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    mask = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")


class AppUpstream:
    """The well-behaved upstream: /api/ok, POST /api/echo, GET /api/stream, /api/ws."""

    def __init__(self):
        self.requests = 0
        self.tunnels = 0

    async def handle(self, method, path, headers, body, reader, writer) -> bool:
        self.requests += 1
        if path.startswith("/api/ws") and headers.get("upgrade", "").lower() == "websocket":
            accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + WS_GUID).digest())
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            await writer.drain()
            self.tunnels += 1
            while True:
                op, data = await ws_read(reader)
                if op == 8:
                    writer.write(ws_frame(8, data, mask=False))
                    await writer.drain()
                    return False
                writer.write(ws_frame(op, data, mask=False))
                await writer.drain()
        if path.startswith("/api/echo"):
            out = json.dumps({"len": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode()
            answer(writer, 200, out)
        elif path.startswith("/api/stream"):
            size = int(path.partition("bytes=")[2] or 65536)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            sent = 0
            while sent < size:
                n = min(16384, size - sent)
                writer.write(b"%x\r\n%s\r\n" % (n, b"s" * n))
                await writer.drain()
                sent += n
                await asyncio.sleep(0.002)
            writer.write(b"0\r\n\r\n")
        else:
            answer(writer, 200, b'{"ok":true}')
        await writer.drain()
        return True


class FlakyUpstream:
    """The upstream that misbehaves, by path: /flaky/reset (RST after reading the request),
    /flaky/midhead (half a head, then RST), /flaky/midbody (head and part of the body, then RST),
    /flaky/stall (never answers; holds the connection until the gateway lets go), /flaky/ok
    (answers, then closes the keep-alive connection at once, a moment later, or never)."""

    def __init__(self):
        self.requests = 0
        self.stalled_open = 0
        self.closed_idle = 0

    async def handle(self, method, path, headers, body, reader, writer) -> bool:
        self.requests += 1
        if path.startswith("/flaky/reset"):
            rst_close(writer)
            return False
        if path.startswith("/flaky/midhead"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: appl")
            await writer.drain()
            await asyncio.sleep(0.01)
            rst_close(writer)
            return False
        if path.startswith("/flaky/midbody"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: 4096\r\n\r\n" + b"m" * 1000)
            await writer.drain()
            await asyncio.sleep(0.05)
            rst_close(writer)
            return False
        if path.startswith("/flaky/stall"):
            self.stalled_open += 1
            try:
                await asyncio.wait_for(reader.read(), 60)
            except asyncio.TimeoutError:
                pass
            finally:
                self.stalled_open -= 1
            return False
        answer(writer, 200, b'{"ok":"flaky"}')
        await writer.drain()
        r = random.random()
        if r < 0.2:
            # close at once after the answer: with a FIN, or with a RST
            self.closed_idle += 1
            if random.random() < 0.5:
                writer.close()
            else:
                rst_close(writer)
            return False
        if r < 0.4:
            # close unless the next request comes within a short random idle time
            return random.uniform(0.0, 0.3)
        return True


async def start_server(handler, port: int) -> asyncio.base_events.Server:
    return await asyncio.start_server(lambda r, w: serve_requests(r, w, handler), HOST, port,
                                      limit=1 << 20, backlog=1024)


# ---------------------------------------------------------------------------------------------
# gateway config


def gateway_toml(ports: dict[str, int], secret_hash: str, gen: int) -> str:
    extra_routes = "".join(
        f'\n[[routes]]\npath = "/reload/extra-{i}"\nauth = "none"\n'
        f'response = {{ status = 200, body = \'{{"extra":{i}}}\' }}\n' for i in range(gen % 5))
    return f"""# written by benches/soak/soak.py, generation {gen}
[server]
listen = "{HOST}:{ports['gw']}"
admin_listen = "{HOST}:{ports['admin']}"
request_timeout = "{int(REQUEST_TIMEOUT_S * 1000)}ms"

[log]
format = "json"

[auth]
cache_entries = {65536 if gen % 2 == 0 else 1024}

[[auth.issuers]]
issuer = "{ISSUER}"
jwks_uri = "http://{HOST}:{ports['jwks']}/jwks.json"
refresh = "{JWKS_REFRESH_S}s"
kid_miss_cooldown = "5s"

[[auth.issuers]]
issuer = "{FILE_ISSUER}"
jwks_file = "jwks-file.json"

[issuer]
issuer = "http://{HOST}:{ports['gw']}"
token_ttl = "1h"

[[issuer.resource_servers]]
identifier = "API"
scopes = ["book.get"]

[[issuer.clients]]
client_id = "{CLIENT_ID}"
client_secret_hash = "{secret_hash}"
allowed_scopes = ["API/book.get"]

[upstreams.app]
url = "http://{HOST}:{ports['app']}"

[upstreams.flaky]
url = "http://{HOST}:{ports['flaky']}"

[[routes]]
path = "/api/{{proxy+}}"
methods = ["GET", "POST"]
scopes = ["{SCOPE}"]
upstream = "app"

[[routes]]
path = "/flaky/{{proxy+}}"
methods = ["GET"]
scopes = ["{SCOPE}"]
upstream = "flaky"

[[routes]]
path = "/mock"
methods = ["GET"]
scopes = ["{SCOPE}"]
response = {{ status = 200, body = '{{"mock":true}}' }}

[[routes]]
path = "/book"
methods = ["GET"]
scopes = ["API/book.get"]
response = {{ status = 200, body = '{{"book":true}}' }}

[[routes]]
path = "/public"
auth = "none"
response = {{ status = 200, body = '{{"public":true}}' }}

[[routes]]
path = "/reload/probe"
auth = "none"
response = {{ status = 200, body = '{{"gen":{gen}}}' }}
{extra_routes}"""


# ---------------------------------------------------------------------------------------------
# the run


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


class Stats:
    def __init__(self, t0: float):
        self.t0 = t0
        self.counts: dict[str, dict[str, int]] = {}
        self.unexpected: list[dict] = []
        self.window_lat: list[float] = []
        self.window_n = 0
        self.window_unexpected = 0
        # latencies of fast requests per second of the run, as a histogram with buckets 1% wide:
        # pooled percentiles over any span, in memory that does not grow with the request rate
        self.hist: dict[int, dict[int, int]] = {}

    def record(self, kind: str, outcome: str, expected: set[str], latency: float | None, fast: bool) -> None:
        c = self.counts.setdefault(kind, {})
        c[outcome] = c.get(outcome, 0) + 1
        self.window_n += 1
        if outcome not in expected:
            self.window_unexpected += 1
            if len(self.unexpected) < 200:
                self.unexpected.append({"t": round(time.monotonic() - self.t0, 2), "type": kind,
                                        "outcome": outcome, "expected": sorted(expected)})
        if fast and latency is not None:
            self.window_lat.append(latency)
            h = self.hist.setdefault(int(time.monotonic() - self.t0), {})
            b = lat_bucket(latency)
            h[b] = h.get(b, 0) + 1

    def pooled_pct(self, t_from: float, t_to: float, p: float) -> float | None:
        """The p-th percentile of the fast requests that ended in [t_from, t_to), to 1%."""
        merged: dict[int, int] = {}
        for sec, h in self.hist.items():
            if t_from <= sec < t_to:
                for b, n in h.items():
                    merged[b] = merged.get(b, 0) + n
        total = sum(merged.values())
        if not total:
            return None
        rank = math.ceil(p / 100 * total)
        seen = 0
        for b in sorted(merged):
            seen += merged[b]
            if seen >= rank:
                return lat_bucket_top(b)
        return None


LAT_BASE = 1e-6         # latency histogram: bucket b holds [LAT_BASE * LAT_STEP**b, ... **(b + 1))
LAT_STEP = 1.01


def lat_bucket(seconds: float) -> int:
    return max(0, int(math.log(max(seconds, LAT_BASE) / LAT_BASE) / math.log(LAT_STEP)))


def lat_bucket_top(b: int) -> float:
    return LAT_BASE * LAT_STEP ** (b + 1)


class Soak:
    def __init__(self, args, tmp: Path, binary: Path):
        self.args = args
        self.tmp = tmp
        self.binary = binary
        self.duration = args.minutes * 60
        self.stop: asyncio.Event  # made in run(), inside the event loop
        self.ports = {k: bench.free_port() for k in ("gw", "admin", "jwks", "app", "flaky")}
        self.ring = KeyRing(settle_s=JWKS_REFRESH_S + 3, iss=ISSUER, name="http")
        # a jwks_file is reloaded within about a second of a change
        self.file_ring = KeyRing(settle_s=3, iss=FILE_ISSUER, name="file")
        self.jwks = JwksServer(self.ring)
        self.app = AppUpstream()
        self.flaky = FlakyUpstream()
        self.gen = 0
        self.reload_writes = 0
        self.probe_gens: set[int] = set()
        self.samples: list[dict] = []
        self.windows: list[dict] = []
        self.issued: list[str] = []
        self.procs = bench.Procs(tmp)
        self.pid = 0
        k = self.ring.published[0]
        self.fixed = {
            "expired": [k.mint(exp_in=-3600) for _ in range(4)],
            "wrong-issuer": [k.mint(iss="https://other.issuer.invalid") for _ in range(4)],
            "unknown-kid": [k.mint(kid=f"never-published-{i}") for i in range(4)],
            "alg-none": [k.mint(alg="none") for _ in range(2)],
            "garbage": ["not-a-jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.AAAA", "x" * 2000],
        }

    # ---- setup --------------------------------------------------------------------------

    def hash_secret(self) -> str:
        p = subprocess.run([str(self.binary), "hash-secret"], input=CLIENT_SECRET, capture_output=True,
                           text=True, timeout=60)
        if p.returncode != 0:
            raise bench.BenchError(f"scopegate hash-secret failed: {p.stderr}")
        return p.stdout.strip()

    def write_config(self, gen: int, in_place: bool) -> None:
        text = gateway_toml(self.ports, self.secret_hash, gen)
        path = self.tmp / "gateway.toml"
        if in_place or not path.exists():
            path.write_text(text)
        else:
            tmp = self.tmp / ".gateway.toml.new"
            tmp.write_text(text)
            os.replace(tmp, path)

    def write_jwks_file(self) -> None:
        tmp = self.tmp / ".jwks-file.json.new"
        tmp.write_bytes(self.file_ring.jwks())
        os.replace(tmp, self.tmp / "jwks-file.json")

    async def start(self) -> None:
        self.servers = [await start_server(self.jwks.handle, self.ports["jwks"]),
                        await start_server(self.app.handle, self.ports["app"]),
                        await start_server(self.flaky.handle, self.ports["flaky"])]
        self.secret_hash = self.hash_secret()
        self.write_jwks_file()
        self.write_config(0, in_place=True)
        env = dict(os.environ, RUST_LOG=os.environ.get("SOAK_RUST_LOG", "warn"))
        p = self.procs.start("scopegate", [str(self.binary), "--config", str(self.tmp / "gateway.toml")],
                             core=None, env=env)
        self.pid = p.pid
        deadline = time.monotonic() + 20
        while True:
            self.procs.check_alive()
            try:
                st, _, _ = await Client(self.ports["admin"]).request("GET", "/readyz")
                if st == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise bench.BenchError("scopegate not ready after 20 s: " + self.procs.tail("scopegate"))
            await asyncio.sleep(0.1)
        log(f"scopegate pid {self.pid} ready on {HOST}:{self.ports['gw']}")

    # ---- clients ------------------------------------------------------------------------

    def running(self) -> bool:
        return not self.stop.is_set()

    async def timed(self, kind: str, expected: set[str], coro_fn, fast: bool = False,
                    client: Client | None = None, timeout: float = CLIENT_TIMEOUT_S) -> str:
        assert expected == EXPECTED[kind], kind
        t = time.perf_counter()
        try:
            outcome = await asyncio.wait_for(coro_fn(), timeout)
        except Truncated:
            outcome = "truncated"
        except asyncio.TimeoutError:
            outcome = "timeout"
        except asyncio.IncompleteReadError:
            outcome = "closed"
        except ConnectionResetError:
            outcome = "reset"
        except OSError as e:
            outcome = f"oserror:{e.errno}"
        except Exception as e:  # an answer the client could not parse: unexpected too
            outcome = f"error:{type(e).__name__}"
        lat = time.perf_counter() - t
        if client is not None and not outcome[:1].isdigit():
            client.close()
        self.stats.record(kind, outcome, expected, lat, fast)
        return outcome

    async def general_worker(self, wid: int) -> None:
        c = Client(self.ports["gw"])
        rnd = random.Random(wid)
        kinds = [("valid:/mock", 20), ("valid:/api/ok", 20), ("valid:/flaky/ok", 12), ("valid-file:/mock", 6),
                 ("retired-file-key", 2), ("public", 4),
                 ("reload-probe", 3), ("no-token", 4), ("bad-signature", 4), ("expired", 3),
                 ("wrong-issuer", 3), ("unknown-kid", 3), ("garbage", 2), ("alg-none", 2),
                 ("no-scope", 4), ("retired-key", 3)]
        names = [k for k, _ in kinds]
        weights = [w for _, w in kinds]
        while self.running():
            kind = rnd.choices(names, weights)[0]
            path, hdrs, expected = "/mock", {}, {"401"}
            keys = self.ring.usable()
            if kind.startswith("valid:"):
                path = kind.partition(":")[2]
                hdrs["Authorization"] = "Bearer " + rnd.choice(rnd.choice(keys).valid)
                expected = {"200"}
            elif kind == "valid-file:/mock":
                hdrs["Authorization"] = "Bearer " + rnd.choice(rnd.choice(self.file_ring.usable()).valid)
                expected = {"200"}
            elif kind == "public":
                path, expected = "/public", {"200"}
            elif kind == "reload-probe":
                path, expected = "/reload/probe", {"200"}
            elif kind == "bad-signature":
                hdrs["Authorization"] = "Bearer " + break_signature(rnd.choice(rnd.choice(keys).valid))
            elif kind == "no-scope":
                hdrs["Authorization"] = "Bearer " + rnd.choice(rnd.choice(keys).noscope)
            elif kind in ("retired-key", "retired-file-key"):
                gone = (self.ring if kind == "retired-key" else self.file_ring).gone()
                if not gone:
                    continue
                hdrs["Authorization"] = "Bearer " + rnd.choice(rnd.choice(gone).valid)
            elif kind != "no-token":
                hdrs["Authorization"] = "Bearer " + rnd.choice(self.fixed[kind])
            if kind != "reload-probe":
                path_used = path if not path.startswith("/api") else path + f"?w={wid}"
            else:
                path_used = path

            async def go() -> str:
                st, _, body = await c.request("GET", path_used, hdrs)
                if kind == "reload-probe" and st == 200:
                    self.probe_gens.add(json.loads(body)["gen"])
                return str(st)

            await self.timed(kind, expected, go, fast=True, client=c)
        c.close()

    async def fault_worker(self, wid: int) -> None:
        c = Client(self.ports["gw"])
        rnd = random.Random(100 + wid)
        faults = {"fault:reset": {"502"}, "fault:midhead": {"502"}, "fault:stall": {"504"},
                  # the head (200) is forwarded before the reset, unless the reset beats it
                  "fault:midbody": {"truncated", "502"}}
        while self.running():
            kind = rnd.choice(list(faults))
            tok = rnd.choice(rnd.choice(self.ring.usable()).valid)

            async def go() -> str:
                st, _, _ = await c.request("GET", "/flaky/" + kind[6:], {"Authorization": "Bearer " + tok})
                return str(st)

            await self.timed(kind, faults[kind], go, client=c)
            await asyncio.sleep(rnd.uniform(0.05, 0.25))
        c.close()

    async def stream_worker(self, wid: int) -> None:
        c = Client(self.ports["gw"])
        rnd = random.Random(200 + wid)
        while self.running():
            tok = "Bearer " + rnd.choice(rnd.choice(self.ring.usable()).valid)
            if rnd.random() < 0.5:
                size = rnd.choice([16384, 262144, 1048576])
                payload = os.urandom(size)
                chunks = [payload[i:i + 16384] for i in range(0, size, 16384)]

                async def up() -> str:
                    st, _, body = await c.request("POST", "/api/echo", {"Authorization": tok},
                                                  chunks=chunks, chunk_pause=0.001)
                    if st == 200:
                        got = json.loads(body)
                        if got != {"len": size, "sha256": hashlib.sha256(payload).hexdigest()}:
                            return "200-body-mismatch"
                    return str(st)

                await self.timed("stream:upload", {"200"}, up, client=c)
            else:
                size = rnd.choice([65536, 1048576, 4194304])

                async def down() -> str:
                    st, _, body = await c.request("GET", f"/api/stream?bytes={size}", {"Authorization": tok})
                    if st == 200 and body != b"s" * size:
                        return "200-body-mismatch"
                    return str(st)

                await self.timed("stream:download", {"200"}, down, client=c)
            await asyncio.sleep(rnd.uniform(0.0, 0.2))
        c.close()

    async def ws_worker(self, wid: int, long: bool = False) -> None:
        """Short tunnels (3-20 echoes, up to 0.15 s apart), or long ones (20-40 echoes a second
        apart: they outlive several config reloads and the key of the token they opened with)."""
        rnd = random.Random(300 + wid)
        while self.running():
            with_token = long or rnd.random() < 0.85
            tok = rnd.choice(rnd.choice(self.ring.usable()).valid)
            rounds = rnd.randint(20, 40) if long else rnd.randint(3, 20)
            pause = (0.8, 1.2) if long else (0.0, 0.15)

            async def tunnel() -> str:
                reader, writer = await asyncio.open_connection(HOST, self.ports["gw"], limit=1 << 20)
                try:
                    key = base64.b64encode(os.urandom(16)).decode()
                    head = (f"GET /api/ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
                    if with_token:
                        head += f"Authorization: Bearer {tok}\r\n"
                    writer.write((head + "\r\n").encode())
                    await writer.drain()
                    line, hdrs = await read_head(reader)
                    st = int(line.split()[1])
                    if st != 101:
                        return str(st)
                    want = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
                    if hdrs.get("sec-websocket-accept") != want:
                        return "101-bad-accept"
                    for _ in range(rounds):
                        msg = os.urandom(rnd.choice([8, 200, 4000, 70000]))
                        writer.write(ws_frame(2, msg, mask=True))
                        await writer.drain()
                        op, data = await ws_read(reader)
                        if op != 2 or data != msg:
                            return "101-echo-mismatch"
                        if not self.running():
                            break
                        await asyncio.sleep(rnd.uniform(*pause))
                    writer.write(ws_frame(8, struct.pack("!H", 1000), mask=True))
                    await writer.drain()
                    op, _ = await ws_read(reader)
                    return "101" if op == 8 else "101-no-close"
                finally:
                    abort(writer)

            kind = "websocket:long" if long else "websocket" if with_token else "websocket:no-token"
            await self.timed(kind, EXPECTED[kind], tunnel, timeout=CLIENT_TIMEOUT_S + 1.2 * rounds)
            await asyncio.sleep(rnd.uniform(0.0, 0.3))

    async def token_worker(self) -> None:
        c = Client(self.ports["gw"])
        rnd = random.Random(400)
        good = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        bad = "Basic " + base64.b64encode(f"{CLIENT_ID}:wrong-{uuid.uuid4().hex}".encode()).decode()
        n = 0
        while self.running():
            n += 1
            if n % 5 == 0:
                async def wrong() -> str:
                    st, _, _ = await c.request("POST", "/oauth2/token", {
                        "Authorization": bad, "Content-Type": "application/x-www-form-urlencoded"},
                        body=b"grant_type=client_credentials")
                    return str(st)

                await self.timed("issuer:wrong-secret", {"401"}, wrong, client=c)
            else:
                post = rnd.random() < 0.5

                async def token() -> str:
                    if post:
                        form = f"grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
                        st, _, body = await c.request("POST", "/oauth2/token", {
                            "Content-Type": "application/x-www-form-urlencoded"}, body=form.encode())
                    else:
                        st, _, body = await c.request("POST", "/oauth2/token", {
                            "Authorization": good, "Content-Type": "application/x-www-form-urlencoded"},
                            body=b"grant_type=client_credentials&scope=API/book.get")
                    if st == 200:
                        self.issued.append(json.loads(body)["access_token"])
                        del self.issued[:-50]
                    return str(st)

                await self.timed("issuer:token", {"200"}, token, client=c)
            if self.issued:
                # the newest token, or one issued earlier (before some config reloads)
                tok = self.issued[-1] if rnd.random() < 0.5 else rnd.choice(self.issued)

                async def use() -> str:
                    st, _, _ = await c.request("GET", "/book", {"Authorization": "Bearer " + tok})
                    return str(st)

                await self.timed("issuer:token-use", {"200"}, use, client=c)
            await asyncio.sleep(rnd.uniform(0.2, 0.6))
        c.close()

    # ---- background changes -------------------------------------------------------------

    async def rotator(self) -> None:
        """Rotates the JWKS server's keys, and half a period later the jwks_file's."""
        loop = asyncio.get_running_loop()
        while self.running():
            for ring in (self.ring, self.file_ring):
                await self.sleep(self.args.rotate_every / 2)
                if not self.running():
                    return
                key = await loop.run_in_executor(None, ring.new_key)  # RSA keygen off the loop
                ring.rotate(key)
                if ring is self.file_ring:
                    self.write_jwks_file()

    async def reloader(self) -> None:
        while self.running():
            await self.sleep(self.args.reload_every)
            if not self.running():
                break
            self.gen += 1
            self.write_config(self.gen, in_place=self.gen % 2 == 1)
            self.reload_writes += 1

    async def sleep(self, s: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), s)
        except asyncio.TimeoutError:
            pass

    # ---- sampling -----------------------------------------------------------------------

    def read_proc(self) -> dict:
        rss = threads = None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return {}
        return {"rss_kib": rss, "fds": fds, "threads": threads}

    async def sampler(self) -> None:
        t_next_window = 10.0
        ticks = bench.cpu_ticks([self.pid])
        while self.running():
            await self.sleep(1.0)
            t = time.monotonic() - self.t0
            s = self.read_proc()
            if not s:
                log("scopegate is gone")
                self.stop.set()
                break
            s["t"] = round(t, 2)
            self.samples.append(s)
            if t >= t_next_window:
                t_next_window += 10.0
                st = self.stats
                lat = st.window_lat
                now_ticks = bench.cpu_ticks([self.pid])
                cpu = (now_ticks - ticks) / bench.CLK_TCK / 10.0 * 100
                ticks = now_ticks
                w = {"t": round(t, 1), "rss_kib": s["rss_kib"], "fds": s["fds"], "threads": s["threads"],
                     "cpu_pct": round(cpu, 1), "requests": st.window_n, "rps": round(st.window_n / 10.0, 1),
                     "fast_requests": len(lat),
                     "p50_ms": ms(pct(lat, 50)), "p90_ms": ms(pct(lat, 90)), "p99_ms": ms(pct(lat, 99)),
                     "max_ms": ms(max(lat) if lat else None), "unexpected": st.window_unexpected,
                     "keys_rotated": self.ring.rotations + self.file_ring.rotations - 2, "config_writes": self.reload_writes,
                     "flaky_stalled_open": self.flaky.stalled_open}
                st.window_lat, st.window_n, st.window_unexpected = [], 0, 0
                self.windows.append(w)
                log(f"t={w['t']:>6}s rss={w['rss_kib'] / 1024:.1f}MiB fds={w['fds']} threads={w['threads']} "
                    f"rps={w['rps']} p50={w['p50_ms']}ms p99={w['p99_ms']}ms unexpected={w['unexpected']}")

    async def metrics(self) -> dict[str, float]:
        try:
            st, _, body = await Client(self.ports["admin"]).request("GET", "/metrics")
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            m = re.match(r'(scopegate_(?:config_reloads_total|jwks_refreshes_total|tokens_issued_total)\S*)\s+(\S+)$',
                         line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    # ---- main ---------------------------------------------------------------------------

    async def run(self) -> dict:
        self.stop = asyncio.Event()
        await self.start()
        self.t0 = time.monotonic()
        self.stats = Stats(self.t0)
        tasks = [asyncio.create_task(self.general_worker(i)) for i in range(self.args.workers)]
        tasks += [asyncio.create_task(self.fault_worker(i)) for i in range(2)]
        tasks += [asyncio.create_task(self.stream_worker(i)) for i in range(2)]
        tasks += [asyncio.create_task(self.ws_worker(i)) for i in range(3)]
        tasks += [asyncio.create_task(self.ws_worker(10 + i, long=True)) for i in range(2)]
        tasks += [asyncio.create_task(self.token_worker())]
        bg = [asyncio.create_task(f()) for f in (self.rotator, self.reloader, self.sampler)]
        log(f"running {self.args.minutes:g} min of mixed traffic")
        await self.sleep(self.duration)
        self.stop.set()
        await asyncio.wait(tasks + bg, timeout=CLIENT_TIMEOUT_S + 5)
        # a client or background task that died stopped doing its part: the run does not count
        driver_errors = [repr(t.exception()) for t in tasks + bg
                         if t.done() and not t.cancelled() and t.exception() is not None]
        for e in driver_errors:
            log(f"driver task failed: {e}")
        for t in tasks + bg:
            t.cancel()
        alive = self.procs.items[0][1].poll() is None
        # the last config written must be the one served
        await asyncio.sleep(2.0)
        final_gen = None
        try:
            st, _, body = await Client(self.ports["gw"]).request("GET", "/reload/probe")
            final_gen = json.loads(body)["gen"] if st == 200 else None
        except OSError:
            pass
        metrics = await self.metrics()
        for s in self.servers:
            s.close()
        return {"alive": alive, "final_gen": final_gen, "metrics": metrics, "driver_errors": driver_errors}


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


def fitted_growth(points: list[tuple[float, float]]) -> float | None:
    """Growth over the span of `points` along their least-squares line, as a fraction of the
    line's value at the start: robust to the jitter of single readings."""
    if len(points) < 3:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    start = my + slope * (xs[0] - mx)
    return slope * (xs[-1] - xs[0]) / start if start else None


def evaluate(soak: Soak, end: dict) -> dict:
    d = soak.duration
    warm = soak.args.warmup if soak.args.warmup is not None else max(30.0, 0.1 * d)
    mid = d / 2
    stats = soak.stats
    crit = []

    def add(name, value, limit, ok):
        crit.append({"criterion": name, "value": value, "limit": limit, "pass": bool(ok)})

    unexpected = sum(n for kind, c in stats.counts.items() for o, n in c.items()
                     if o not in EXPECTED.get(kind, set()))
    add("unexpected outcomes", unexpected, "0", unexpected == 0)
    last = [s for s in soak.samples if s["t"] >= mid]
    rss_g = fitted_growth([(s["t"], s["rss_kib"]) for s in last])
    fd_g = fitted_growth([(s["t"], s["fds"]) for s in last])
    add("RSS growth over the last half (fitted)", pct_str(rss_g), "< 5%", rss_g is not None and rss_g < 0.05)
    add("open fds growth over the last half (fitted)", pct_str(fd_g), "< 5%", fd_g is not None and fd_g < 0.05)
    p99a, p99b = stats.pooled_pct(warm, mid, 99), stats.pooled_pct(mid, float("inf"), 99)
    ratio = (p99b / p99a) if p99a and p99b else None
    add("p99 last half / p99 first half after warm-up", None if ratio is None else round(ratio, 2),
        "<= 2.0", ratio is not None and ratio <= 2.0)
    add("gateway alive at the end", "yes" if end["alive"] else "no", "yes", end["alive"])
    add("driver tasks failed", len(end["driver_errors"]), "0", not end["driver_errors"])
    reload_err = end["metrics"].get('scopegate_config_reloads_total{result="error"}', 0)
    add("last config written is served", f"gen {end['final_gen']} of {soak.gen}", f"gen {soak.gen}",
        end["final_gen"] == soak.gen)
    add("config reload errors", reload_err, "0", reload_err == 0)
    return {"warmup_s": warm, "mid_s": mid, "criteria": crit,
            "p99_first_half_ms": ms(p99a), "p99_last_half_ms": ms(p99b),
            "rss_growth_last_half": rss_g, "fds_growth_last_half": fd_g,
            "pass": all(c["pass"] for c in crit)}


def pct_str(v: float | None) -> str | None:
    return None if v is None else f"{v * 100:+.2f}%"


EXPECTED = {
    "valid:/mock": {"200"}, "valid:/api/ok": {"200"}, "valid:/flaky/ok": {"200"}, "public": {"200"},
    "valid-file:/mock": {"200"}, "retired-file-key": {"401"},
    "reload-probe": {"200"}, "no-token": {"401"}, "bad-signature": {"401"}, "expired": {"401"},
    "wrong-issuer": {"401"}, "unknown-kid": {"401"}, "garbage": {"401"}, "alg-none": {"401"},
    "no-scope": {"401"}, "retired-key": {"401"},
    "fault:reset": {"502"}, "fault:midhead": {"502"}, "fault:stall": {"504"},
    "fault:midbody": {"truncated", "502"},
    "stream:upload": {"200"}, "stream:download": {"200"},
    "websocket": {"101"}, "websocket:long": {"101"}, "websocket:no-token": {"401"},
    "issuer:token": {"200"}, "issuer:wrong-secret": {"401"}, "issuer:token-use": {"200"},
}

DESCRIBE = {
    "valid:/mock": "valid token (a published key), mock route",
    "valid-file:/mock": "valid token of the jwks_file issuer, mock route",
    "retired-file-key": "signed by a key removed from the jwks_file",
    "valid:/api/ok": "valid token, upstream `app`",
    "valid:/flaky/ok": "valid token, upstream closing keep-alive connections at random",
    "public": "public route, no token",
    "reload-probe": "public route whose body changes with every config edit",
    "no-token": "no token",
    "bad-signature": "signature altered",
    "expired": "expired an hour ago",
    "wrong-issuer": "untrusted `iss`",
    "unknown-kid": "`kid` never published",
    "garbage": "not a JWT",
    "alg-none": "`alg: none`",
    "no-scope": "valid token without the route's scope",
    "retired-key": "signed by a key removed from the JWKS",
    "fault:reset": "upstream resets after reading the request",
    "fault:midhead": "upstream resets mid-head",
    "fault:midbody": "upstream resets mid-body (head already forwarded)",
    "fault:stall": "upstream never answers (request_timeout 1 s)",
    "stream:upload": "chunked upload 16 KiB-1 MiB, echoed digest checked",
    "stream:download": "chunked download 64 KiB-4 MiB, content checked",
    "websocket": "tunnel, 3-20 binary echoes checked, close handshake",
    "websocket:long": "tunnel open 20-40 s, an echo a second, across reloads and key rotations",
    "websocket:no-token": "upgrade without a token",
    "issuer:token": "POST /oauth2/token (Basic or form secret)",
    "issuer:wrong-secret": "POST /oauth2/token, wrong secret",
    "issuer:token-use": "GET /book with a token from the built-in issuer",
}


# ---------------------------------------------------------------------------------------------
# reports


def markdown(result: dict) -> str:
    ev = result["evaluation"]
    out = [f"Soak run: {result['minutes']:g} min, {result['total_requests']} requests "
           f"({result['total_requests'] / (result['minutes'] * 60):.0f}/s), "
           f"{result['keys_rotated']} key rotations, {result['config_writes']} config edits; "
           f"{result['host']['cpus']} CPUs, load average {result['host']['loadavg_start']} at start. "
           f"**{'PASS' if ev['pass'] else 'FAIL'}**", "",
           "| criterion | value | limit | pass |", "|---|---|---|---|"]
    for c in ev["criteria"]:
        out.append(f"| {c['criterion']} | {c['value']} | {c['limit']} | {'yes' if c['pass'] else '**no**'} |")
    w = result["windows"]
    if w:
        first = next((x for x in w if x["t"] >= ev["warmup_s"]), w[0])
        out += ["", "| | after warm-up | end |", "|---|---|---|",
                f"| RSS | {first['rss_kib'] / 1024:.1f} MiB | {w[-1]['rss_kib'] / 1024:.1f} MiB |",
                f"| open fds | {first['fds']} | {w[-1]['fds']} |",
                f"| threads | {first['threads']} | {w[-1]['threads']} |",
                f"| p99 (fast requests) | {ev['p99_first_half_ms']} ms (first half) | "
                f"{ev['p99_last_half_ms']} ms (last half) |"]
    out += ["", "| request type | expected | outcomes |", "|---|---|---|"]
    for kind, counts in result["outcomes"].items():
        exp = "/".join(sorted(EXPECTED.get(kind, set())))
        outs = ", ".join(f"{o}: {n}" for o, n in sorted(counts.items(), key=lambda x: -x[1]))
        out.append(f"| {kind} — {DESCRIBE.get(kind, '')} | {exp} | {outs} |")
    out += ["", "Every 10 s:", "",
            "| t (s) | RSS (MiB) | fds | threads | gateway CPU | req/s | p50 (ms) | p99 (ms) | max (ms) | unexpected |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for x in w:
        out.append(f"| {x['t']:.0f} | {x['rss_kib'] / 1024:.1f} | {x['fds']} | {x['threads']} | {x['cpu_pct']}% | {x['rps']} | "
                   f"{x['p50_ms']} | {x['p99_ms']} | {x['max_ms']} | {x['unexpected']} |")
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return False
    s, w, ev = result["samples"], result["windows"], result["evaluation"]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    ax1.plot([x["t"] for x in s], [x["rss_kib"] / 1024 for x in s], color="tab:blue")
    ax1.set_ylabel("RSS (MiB)")
    ax1.set_ylim(bottom=0)
    ax2.plot([x["t"] for x in s], [x["fds"] for x in s], color="tab:green", label="open fds")
    ax2.plot([x["t"] for x in s], [x["threads"] for x in s], color="tab:gray", label="threads")
    ax2.set_ylabel("count")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="lower right")
    ax3.plot([x["t"] for x in w], [x["p99_ms"] for x in w], marker="o", color="tab:red", label="p99")
    ax3.plot([x["t"] for x in w], [x["p50_ms"] for x in w], marker=".", color="tab:orange", label="p50")
    ax3.set_ylabel("latency per 10 s (ms)")
    ax3.set_ylim(bottom=0)
    ax3.set_xlabel("seconds")
    ax3.legend(loc="lower right")
    for ax in (ax1, ax2, ax3):
        ax.axvline(ev["warmup_s"], color="k", ls=":", lw=0.8)
        ax.axvline(ev["mid_s"], color="k", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"scopegate soak, {result['minutes']:g} min: {'PASS' if ev['pass'] else 'FAIL'} "
                 f"(dotted: end of warm-up, dashed: start of the last half)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    ap.add_argument("--quick", action="store_true", help="2 minutes")
    ap.add_argument("--warmup", type=float, default=None, help="seconds (default max(30, 10%% of the run))")
    ap.add_argument("--workers", type=int, default=8, help="keep-alive clients of the general mix")
    ap.add_argument("--rotate-every", type=float, default=5.0, help="seconds between key rotations")
    ap.add_argument("--reload-every", type=float, default=3.0, help="seconds between config edits")
    ap.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "scopegate")
    ap.add_argument("--out", type=Path, default=HERE, help="where last-run.* go")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.minutes = 2.0
    args.binary = args.binary.resolve()
    if not args.binary.exists():
        log(f"{args.binary} missing: cargo build --release --locked")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="scopegate-soak-"))
    soak = Soak(args, tmp, args.binary)
    host = {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_start": round(os.getloadavg()[0], 2)}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        end = asyncio.run(soak.run())
    except (bench.BenchError, KeyboardInterrupt) as e:
        log(f"aborted: {e}")
        soak.procs.stop_all()
        return 2
    finally:
        log_tail = soak.procs.tail("scopegate", 100000)
        soak.procs.stop_all()
    host["loadavg_end"] = round(os.getloadavg()[0], 2)
    ev = evaluate(soak, end)
    panics = log_tail.count("panicked")
    if panics:
        ev["criteria"].append({"criterion": "panics in the gateway log", "value": panics, "limit": "0",
                               "pass": False})
        ev["pass"] = False
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    result = {
        "started": started, "minutes": args.minutes, "commit": commit, "host": host,
        "settings": {"workers": args.workers, "rotate_every_s": args.rotate_every,
                     "reload_every_s": args.reload_every, "request_timeout_s": REQUEST_TIMEOUT_S,
                     "jwks_refresh_s": JWKS_REFRESH_S, "key_settle_s": soak.ring.settle_s,
                     "jwks_file_key_settle_s": soak.file_ring.settle_s},
        "total_requests": sum(sum(c.values()) for c in soak.stats.counts.values()),
        "keys_rotated": soak.ring.rotations + soak.file_ring.rotations - 2, "config_writes": soak.reload_writes,
        "jwks_fetches": soak.jwks.fetches, "upstream_app_requests": soak.app.requests,
        "upstream_flaky_requests": soak.flaky.requests, "flaky_idle_closes": soak.flaky.closed_idle,
        "websocket_tunnels_upstream": soak.app.tunnels,
        "reload_generations_seen_by_probe": len(soak.probe_gens),
        "gateway_metrics": end["metrics"], "gateway_log_lines": log_tail.count("\n"),
        "evaluation": ev, "outcomes": dict(sorted(soak.stats.counts.items())),
        "unexpected_samples": soak.stats.unexpected, "driver_errors": end["driver_errors"], "windows": soak.windows, "samples": soak.samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "last-run.json").write_text(json.dumps(result, indent=1) + "\n")
    with open(args.out / "last-run.csv", "w", newline="") as f:
        if soak.windows:
            wr = csv.DictWriter(f, fieldnames=list(soak.windows[0]))
            wr.writeheader()
            wr.writerows(soak.windows)
    md = markdown(result)
    (args.out / "last-run.md").write_text(md)
    plotted = plot(result, args.out / "last-run.png")
    print(md)
    for u in soak.stats.unexpected[:20]:
        print(f"unexpected: {u}")
    print(f"written: {args.out}/last-run.json, last-run.csv, last-run.md" + (", last-run.png" if plotted else ""))
    if args.keep_tmp:
        print(f"kept: {tmp}")
    else:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    print("SOAK PASS" if ev["pass"] else "SOAK FAIL")
    return 0 if ev["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
