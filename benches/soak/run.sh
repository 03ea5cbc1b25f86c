#!/usr/bin/env bash
# scopegate soak run: the one command.
#
#   bash benches/soak/run.sh               # 10 minutes
#   bash benches/soak/run.sh --quick       # 2 minutes
#   bash benches/soak/run.sh --minutes 60  # any length
#
# Installs what is missing (Debian: python3 and python3-venv with apt-get; Python's
# `cryptography` and `matplotlib` from PyPI into a venv kept between runs in
# ${XDG_CACHE_HOME:-~/.cache}/scopegate/soak-venv, override with SOAK_VENV), builds scopegate in
# release mode, then runs benches/soak/soak.py, which starts every process itself on 127.0.0.1,
# drives mixed traffic, prints the pass criteria and a Markdown report, writes
# benches/soak/last-run.{json,csv,md,png}, and exits 0 (pass) or 1 (fail); 2 when it could not
# run. Extra arguments go to soak.py (see --help there). Not part of `cargo test`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

say() { printf '[run.sh] %s\n' "$*" >&2; }

# Pinned: the plot and the token code were written against these.
PINS="cryptography==44.0.3 matplotlib==3.10.0"

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "need root or sudo to install: $*"; exit 2; }
        sudo="sudo"
    fi
    command -v apt-get >/dev/null 2>&1 || { say "please install: $*"; exit 2; }
    say "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---- python ------------------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || { say "python3 is older than 3.9"; exit 2; }

venv="${SOAK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/scopegate/soak-venv}"
if ! [ -x "$venv/bin/python" ] || ! grep -qxF "$PINS" "$venv/.pins" 2>/dev/null; then
    say "creating $venv ($PINS)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian's python3 has no ensurepip without python3-venv
        apt_install python3-venv
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input $PINS
    printf '%s\n' "$PINS" >"$venv/.pins"
fi

# ---- scopegate ---------------------------------------------------------------------------
say "cargo build --release --locked"
cargo build --release --locked --quiet --bin scopegate

# ---- open files: every client, tunnel and upstream connection is a descriptor here ------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

say "running benches/soak/soak.py $*"
exec "$venv/bin/python" "$here/soak.py" "$@"
