#!/usr/bin/env bash
# scopegate load benchmark: the one command.
#
#   bash benches/load/run.sh            # full run, ~12 minutes
#   bash benches/load/run.sh --quick    # ~1.5 minutes
#
# Installs what is missing (Debian: nginx, haproxy 2.6, wrk, h2load, taskset; python3 with
# `cryptography`), builds scopegate in release mode, then runs benches/load/bench.py, which
# starts every process itself on 127.0.0.1, measures, prints a Markdown report and writes
# benches/load/last-run.json. Extra arguments are passed to bench.py (see --help there).
# Not part of `cargo test` and not run by CI.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

say() { printf '[run.sh] %s\n' "$*" >&2; }

# ---- system tools ------------------------------------------------------------------------
need_apt=()
command -v nginx   >/dev/null 2>&1 || need_apt+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v wrk     >/dev/null 2>&1 || need_apt+=(wrk)
command -v h2load  >/dev/null 2>&1 || need_apt+=(nghttp2-client)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
if ((${#need_apt[@]})); then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { say "need root or sudo to install: ${need_apt[*]}"; exit 2; }
        sudo="sudo"
    fi
    say "installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    # policy-rc.d keeps the packages' own services (system nginx/haproxy on :80) from starting
    # where invoke-rc.d honours it; the benchmark starts its own instances.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$sudo" ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
        || $sudo apt-get install -y -qq --no-install-recommends \
               "${need_apt[@]/nginx-light/nginx}" >/dev/null
    if [ -n "$made_policy" ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi

haproxy_version="$(haproxy -v 2>/dev/null | sed -n 1p || true)"
case "$haproxy_version" in
    *"version 2."[6-9]*|*"version 3."*) ;;
    *) say "warning: jwt_verify needs HAProxy >= 2.5; found: $haproxy_version" ;;
esac

# ---- python ------------------------------------------------------------------------------
if ! python3 -c 'import cryptography' >/dev/null 2>&1; then
    say "installing python cryptography"
    python3 -m pip install --quiet cryptography \
        || python3 -m pip install --quiet --break-system-packages cryptography
fi

# ---- scopegate ---------------------------------------------------------------------------
say "cargo build --release"
cargo build --release --quiet --bin scopegate

# ---- open files for the 1,000 idle connections (bench.py raises its own limit too) -------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

say "running benches/load/bench.py $*"
exec python3 "$here/bench.py" "$@"
