#!/usr/bin/env python3
"""Verifies a scopegate access token with PyJWT, a JOSE implementation independent of scopegate.

Usage: verify_token.py JWKS_FILE TOKEN ISSUER [ALGORITHM]

JWKS_FILE holds the document served at /.well-known/jwks.json. The token's `kid` picks the key;
the signature, `iss`, `exp` and `iat` are checked with the one algorithm given (default RS256).
On success prints {"header": ..., "claims": ...} as JSON on stdout and exits 0.
Exit 1: the token does not verify (the reason on stderr). Exit 2: bad usage.
Exit 77: PyJWT (with its `cryptography` extra) is not installed.
"""

import json
import sys

try:
    import jwt
    from jwt.algorithms import has_crypto
except ImportError:
    print("PyJWT is not installed (pip install 'PyJWT[crypto]')", file=sys.stderr)
    sys.exit(77)
if not has_crypto:
    print("PyJWT is installed without cryptography (pip install 'PyJWT[crypto]')", file=sys.stderr)
    sys.exit(77)


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    jwks_file, token, issuer = argv[1], argv[2], argv[3]
    algorithm = argv[4] if len(argv) == 5 else "RS256"
    with open(jwks_file, encoding="utf-8") as f:
        jwks = json.load(f)
    try:
        key_set = jwt.PyJWKSet.from_dict(jwks)
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        matching = [k for k in key_set.keys if k.key_id == kid]
        if len(matching) != 1:
            print(f"no unique key with kid {kid!r} in {jwks_file}", file=sys.stderr)
            return 1
        claims = jwt.decode(
            token,
            matching[0].key,
            algorithms=[algorithm],
            issuer=issuer,
            options={"require": ["exp", "iat", "iss", "sub"]},
        )
    except jwt.PyJWTError as e:
        print(f"token rejected: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"header": header, "claims": claims}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
