#!/usr/bin/env bash
# The Node.js client's tests (clients/node) and the example API's smoke test
# (examples/node-api), against the real stack: each test file starts its own
# test bed (scripts/testbed.sh: OpenBao + PostgreSQL on loopback) and vaultlet
# processes from target/debug/vaultlet (or $VAULTLET_BIN). Builds nothing: run
# `cargo build` first. Installs the npm dependencies (npm ci) when missing or
# older than the lockfile.
#
#   scripts/test-node.sh                 # type check + every test file
#   scripts/test-node.sh pg-pool         # only test files whose name contains "pg-pool"
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-node: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || die "node not found; install Node.js 18 or later"
command -v npm >/dev/null 2>&1 || die "npm not found"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || die "Node.js $(node --version) is too old; 18 or later is needed"

bin="${VAULTLET_BIN:-target/debug/vaultlet}"
[ -x "$bin" ] || die "$bin not found: run \`cargo build\` first (this script builds nothing), or set VAULTLET_BIN"
VAULTLET_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
export VAULTLET_BIN

files=()
for f in clients/node/test/*.test.mjs; do
    if [ $# -eq 0 ]; then files+=("$f"); continue; fi
    for pat in "$@"; do
        case "$f" in *"$pat"*) files+=("$f"); break ;; esac
    done
done
[ ${#files[@]} -gt 0 ] || die "no test file matches: $*"

# npm ci when node_modules is missing or older than the lockfile.
npm_deps() {
    local dir="$1"
    if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        step "npm ci --prefix $dir"
        npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
    fi
}
npm_deps clients/node
npm_deps examples/node-api

step "test bed prerequisites (OpenBao, PostgreSQL)"
scripts/testbed.sh install >/dev/null

step "type declarations (tsc)"
(cd clients/node && npm run -s typecheck)
echo "types ok"

# Each file brings up its own bed; most of their time is spent waiting (the
# rotation test waits for five credential rotations), so run them side by side.
concurrency=()
if node --help 2>/dev/null | grep -q -- '--test-concurrency'; then
    concurrency=("--test-concurrency=${#files[@]}")
fi

step "node --test (${#files[@]} files)"
node --test "${concurrency[@]}" "${files[@]}"
