#!/usr/bin/env python3
"""Writes the committed seed corpus under fuzz/corpus/<target>/seed-*.

Each target's input format is described at the top of its source file. Re-run after changing
a format; libFuzzer's own finds are not committed (see .gitignore), only these seeds and the
inputs under corpus/<target>/regressions/.
"""
import base64
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def variant(i, n):
    """The 4 little-endian bytes that make `arbitrary` choose enum variant i of n."""
    return struct.pack("<I", (i << 32) // n + 1 if i else 0)


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


# token: 's' + structure (all-zero = a valid ES256 token), or 'r' + a raw token.
write("token", "valid-es256", b"s")
write("token", "valid-eddsa", b"s" + variant(1, 4))
write("token", "unsigned", b"s" + variant(3, 4))
write("token", "alg-none", b"s" + variant(0, 4) + variant(5, 8))
write("token", "expired", b"s" + variant(0, 4) + variant(0, 8) + variant(0, 6) + b"\x00" * 12 + variant(2, 5))
hdr = b64url(json.dumps({"alg": "ES256", "kid": "ec"}).encode())
claims = b64url(json.dumps({"iss": "https://issuer.fuzz/pool", "exp": 4102444800, "token_use": "access",
                            "aud": "api://fuzz"}).encode())
write("token", "raw-bad-signature", b"r" + hdr + b"." + claims + b"." + b64url(b"\x01" * 64))
write("token", "raw-two-parts", b"r" + hdr + b"." + claims)
write("token", "raw-none", b"r" + b64url(b'{"alg":"none"}') + b"." + claims + b".")
write("token", "raw-crit", b"r" + b64url(b'{"alg":"ES256","kid":"ec","crit":["x"]}') + b"." + claims + b".AA")

# path: the path, then '\n', a method byte and respelling bytes.
for name, p in [
    ("root", b"/\n\x00"),
    ("book", b"/books/42\n\x00\x01\x02\x03"),
    ("pages", b"/books/7/pages/3\n\x02\x84\xc4\x01\x03"),
    ("dots", b"/books/./x/../42/\n\x03"),
    ("files", b"/files/a/b/c%20d\n\x01\x04\x04\x04"),
    ("escapes", b"/a%20b/%7e%41%2f\n\x00"),
    ("backslash", b"/files/..%5C..%5Cetc\n"),
    ("above-root", b"/../books\n"),
    ("admin-case", b"/admin/USERS;x=1\n\x01"),
    ("double-slash", b"//books//special\n\x00\x03\x03"),
]:
    write("path", name, p)

# config: 'b' + the file's text, or anything else + lines from the config's vocabulary.
write("config", "demo", b"b" + (ROOT.parent / "gateway.toml").read_bytes())
write("config", "minimal", b"b" + b'[upstreams.up]\nurl = "http://127.0.0.1:9"\n\n[[routes]]\npath = "/x/{id}"\n'
      b'methods = ["GET"]\nauth = "none"\nupstream = "up"\n')
write("config", "issuer", b"b" + b'[[auth.issuers]]\nissuer = "https://issuer.test/pool"\n'
      b'jwks_uri = "https://issuer.test/pool/jwks.json"\naudiences = ["api"]\nalgorithms = ["RS256", "ES256"]\n'
      b'leeway = "30s"\n')
write("config", "bad-duration", b"b" + b'[server]\nlisten = "127.0.0.1:0"\nrequest_timeout = "5 parsecs"\n')
write("config", "unterminated", b'b[server]\nlisten = "127.0.0.1:0\n')
write("config", "multibyte", b'b# \xc3\xa9\xc3\xa9\n[routes]]\npath = "\xc3\xa9"\n')
write("config", "structured", b"t" + bytes(range(64)))

# jwks: two bytes of allow-list mask, 'j' + the document, or anything else + structure.
ec_x, ec_y = b64url(b"\x01" * 32).decode(), b64url(b"\x02" * 32).decode()
docs = {
    "rsa": {"keys": [{"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256",
                      "n": b64url(b"\xc5" * 255 + b"\xc7").decode(), "e": "AQAB"}]},
    "ec-bad-point": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "e1", "x": ec_x, "y": ec_y}]},
    "oct": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]},
    "mixed": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(b"\x03" * 32).decode()},
                       {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}, 7, None]},
    "empty": {"keys": []},
}
for name, doc in docs.items():
    write("jwks", name, b"\xff\xff" + b"j" + json.dumps(doc).encode())
write("jwks", "rsa-es-only", b"\x08\x00j" + json.dumps(docs["rsa"]).encode())
write("jwks", "not-json", b"\xff\xffj{\"keys\": [")
write("jwks", "structured", b"\xff\xffs" + bytes(range(0, 256, 3)))

# token_form: 'r' + an Authorization value, or anything else + (id, secret) structure.
for name, v in [
    ("basic", b"Basic " + base64.b64encode(b"demo:demo-secret")),
    ("encoded", b"basic " + base64.b64encode(b"a%3Ab+c:s%26%3D%25")),
    ("no-colon", b"Basic " + base64.b64encode(b"demo")),
    ("bearer", b"Bearer abc"),
    ("not-base64", b"Basic ***"),
    ("not-utf8", b"Basic " + base64.b64encode(b"\xff:\xfe")),
]:
    write("token_form", name, b"r" + v)
write("token_form", "structured", b"s" + b"\x05demo\x06secret" + bytes(range(16)))

# http: the bytes a client sends on one connection; `$TOKEN` becomes a valid token with scope
# books.read.
for name, req in [
    ("public", b"GET /public/a/b?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n"),
    ("public-spoof", b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-Auth-Sub: admin\r\nx-auth-scope: admin\r\n\r\n"),
    ("books", b"GET /books/42 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer $TOKEN\r\n\r\n"),
    ("books-post", b"POST /books/42 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer $TOKEN\r\n"
                   b"Content-Length: 5\r\n\r\nhello"),
    ("books-no-token", b"GET /books/42 HTTP/1.1\r\nHost: gw\r\n\r\n"),
    ("admin", b"GET /admin/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer $TOKEN\r\n\r\n"),
    ("pipelined", b"GET /mock HTTP/1.1\r\nHost: gw\r\n\r\nGET /books/1/../2 HTTP/1.1\r\nHost: gw\r\n"
                  b"Authorization: Bearer $TOKEN\r\n\r\nDELETE /books/2 HTTP/1.1\r\nHost: gw\r\n\r\n"),
    ("chunked", b"POST /public/up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"),
    ("encoded", b"GET /books/%2e%2e/admin/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer $TOKEN\r\n\r\n"),
    ("upgrade", b"GET /public/ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
    ("http10", b"GET /mock HTTP/1.0\r\n\r\n"),
    ("garbage", b"\x00\x01GET / HTTP/9.9\r\n\r\n"),
]:
    write("http", name, req)
