#!/usr/bin/env bash
# Benchmark: vaultlet vs OpenBao Agent doing the same work against the same
# test-bed server. See bench/README.md for what each figure means.
#
#   bench/run.sh            # full run (about 10 minutes); writes bench/results.md
#   bench/run.sh --smoke    # tiny sizes, one run each, < 60 s; exits non-zero if anything breaks
#   bench/run.sh --keep     # (with either) keep the work directory: configs, logs, audit logs
#   bench/run.sh --only scale,socket   # a subset of startup,memory,load,socket,scale,restart,verify (no results.md)
#   bench/run.sh --profile  # also record the scale windows and socket runs with perf; show the hottest symbols
#   bench/run.sh --scale-points 3000:300,1000:100   # other scale sizes (KV:DB; no results.md)
#
# Builds vaultlet in release mode (VAULTLET_BIN=... to use another binary)
# and the load generator in bench/loadgen (its own target dir), then runs
# bench/bench.py. The markdown report goes to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

smoke=0
partial=0
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --keep|--profile) extra+=("$1") ;;
        --only|--scale-points) extra+=("$1" "${2:?$1 needs a value}"); partial=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "bench: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

command -v cargo >/dev/null || { echo "bench: cargo not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench: python3 not found" >&2; exit 1; }

profile=0
for a in "${extra[@]}"; do [ "$a" = --profile ] && profile=1; done
if [ -z "${VAULTLET_BIN:-}" ]; then
    if [ "$profile" = 1 ]; then
        # The release profile strips symbols; perf needs them. Same profile
        # otherwise, in its own target dir.
        echo "bench: building vaultlet (release, symbols kept, for perf)" >&2
        CARGO_PROFILE_RELEASE_STRIP=none CARGO_TARGET_DIR="$repo/target/bench-profile" \
            cargo build --release --locked --quiet
        VAULTLET_BIN="$repo/target/bench-profile/release/vaultlet"
    else
        echo "bench: building vaultlet (release)" >&2
        CARGO_TARGET_DIR="$repo/target" cargo build --release --locked --quiet
        VAULTLET_BIN="$repo/target/release/vaultlet"
    fi
fi
[ -x "$VAULTLET_BIN" ] || { echo "bench: $VAULTLET_BIN is not executable" >&2; exit 1; }

echo "bench: building the load generator" >&2
cargo build --release --locked --quiet --manifest-path bench/loadgen/Cargo.toml --target-dir "$repo/target/bench-loadgen"
loadgen="$repo/target/bench-loadgen/release/vaultlet-bench-loadgen"

scripts/testbed.sh install >/dev/null

if [ "$smoke" = 1 ] || [ "$partial" = 1 ]; then
    [ "$smoke" = 1 ] && extra+=(--smoke)
    exec python3 bench/bench.py --vaultlet "$VAULTLET_BIN" --loadgen "$loadgen" "${extra[@]}"
else
    exec python3 bench/bench.py --vaultlet "$VAULTLET_BIN" --loadgen "$loadgen" --out bench/results.md "${extra[@]}"
fi
