#!/usr/bin/env bash
# Runs every test: formatting, unit tests, and the end-to-end tests against a
# real OpenBao and a real PostgreSQL (started and stopped by the test bed).
# Installs what it needs on first use (OpenBao into the user's cache folder;
# PostgreSQL from Debian packages when missing).
#
#   scripts/test.sh            # everything
#   scripts/test.sh rotation   # only e2e tests whose name contains "rotation"
#   scripts/test.sh deploy     # only the container and systemd tests
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ "${1:-}" = deploy ]; then
    step "container and systemd tests (private dockerd; images cached)"
    exec scripts/test-deploy.sh
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "test: cargo not found; install Rust from https://rustup.rs" >&2
    exit 1
fi

step "test bed prerequisites (OpenBao, PostgreSQL, nginx)"
scripts/testbed.sh install >/dev/null
# fail2ban-regex checks examples/fail2ban against real audit lines (e2e) and
# against lines a hostile Vault writes into (hostile_vault).
if ! command -v fail2ban-regex >/dev/null 2>&1; then
    echo "installing fail2ban (for fail2ban-regex) with apt-get"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fail2ban ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fail2ban; }; } >/dev/null
fi

# nginx serves the PKI certificates vaultlet renders (e2e pki_nginx_*).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "installing nginx with apt-get"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx; }; } >/dev/null
fi

step "cargo fmt --check, clippy"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

step "supply chain (deny.toml: licenses, sources, banned crates)"
python3 scripts/supply-chain.py
deny=$(command -v cargo-deny || true)
[ -z "$deny" ] && [ -x "${XDG_CACHE_HOME:-$HOME/.cache}/vaultlet-tools/bin/cargo-deny" ] && deny="${XDG_CACHE_HOME:-$HOME/.cache}/vaultlet-tools/bin/cargo-deny"
if [ -n "$deny" ]; then
    "$deny" check licenses bans sources 2>&1 | tail -1
else
    echo "(cargo-deny not installed; the check above applies the same rules)"
fi

step "known vulnerabilities (RustSec snapshot in supply-chain/advisory-db, npm audit)"
out=$(python3 scripts/test_advisories.py 2>&1) || { printf '%s\n' "$out"; exit 1; }
printf 'advisory checker: %s ok\n' "$(printf '%s\n' "$out" | grep -Eo '^Ran [0-9]+ tests')"
python3 scripts/advisories.py

step "unit tests (including property tests)"
cargo test --locked --lib --bins

step "docs against the code (metrics, config keys, CLI flags, test names, links)"
cargo test --locked --test docs

step "module layers (imports point down, no loop)"
cargo test --locked --test layers

step "env file formats read back by their real readers (sh, bash, docker CLI, systemd, npm dotenv, python-dotenv)"
scripts/env-parsers.sh >/dev/null
cargo test --locked --test env_formats

step "hostile Vault (fake servers: redirects, absurd TTLs, huge bodies)"
cargo test --locked --test hostile_vault

step "end-to-end tests (real OpenBao + PostgreSQL)"
cargo test --locked --test e2e -- "$@"

if [ $# -eq 0 ]; then
    step "Node client tests (real vaultlet + OpenBao + PostgreSQL)"
    scripts/test-node.sh

    step "deployment files (Dockerfiles, compose, systemd units, example configs)"
    scripts/check-deploy.sh

    step "container and systemd tests (private dockerd; images cached)"
    scripts/test-deploy.sh

    step "benchmark smoke run (tiny sizes; checks the benchmark works, not its numbers)"
    VAULTLET_BIN="$PWD/target/debug/vaultlet" bench/run.sh --smoke >/dev/null

    step "demo smoke run"
    scripts/demo.sh --for 8 >/dev/null
    echo "demo ran"
fi
