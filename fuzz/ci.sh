#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each: `fuzz/ci.sh [SECONDS]` (default 30).
#
# Needs the nightly toolchain and cargo-fuzz; without them it prints one SKIP line and exits 0,
# so a CI without nightly still passes. New inputs the fuzzer finds go to a scratch directory,
# not into the committed corpus. Exits non-zero on the first target that finds a crash, after
# printing the input's path; reproduce with `cargo +nightly fuzz run -s none TARGET INPUT`.
#
# FUZZ_SANITIZER=address (or memory, thread, leak) builds with that sanitizer; the default is
# none: scopegate itself forbids unsafe code, and unsanitized targets run several times faster.
# FUZZ_TOOLCHAIN names the nightly toolchain (default: nightly).
set -euo pipefail

secs="${1:-30}"
sanitizer="${FUZZ_SANITIZER:-none}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
cd "$(dirname "$0")"

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
    echo "fuzz: SKIP: no $toolchain toolchain (rustup toolchain install $toolchain)"
    exit 0
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "fuzz: SKIP: cargo-fuzz is not installed (cargo +$toolchain install cargo-fuzz --locked)"
    exit 0
fi

cargo "+$toolchain" fuzz build -s "$sanitizer"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo "+$toolchain" fuzz list); do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    # The first directory receives new inputs; the committed seeds (and regressions/, read
    # recursively) are only read.
    if cargo "+$toolchain" fuzz run -s "$sanitizer" "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        echo "fuzz: $target: ok, $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | sed -E 's/[[:space:]]+/ /g')"
    else
        echo "fuzz: $target: FAILED"
        tail -n 60 "$log"
        exit 1
    fi
done
