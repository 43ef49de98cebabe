#!/usr/bin/env bash
# The vaultlet demo: starts a real OpenBao and PostgreSQL on loopback (the
# test bed), runs vaultlet against them, and shows secrets reaching apps:
# through the socket (`vaultlet get`), through an env file that a small shell
# "app" sources to log in to PostgreSQL, and through the Node client in
# examples/node-api (when node and npm are installed), whose connection pool
# follows each new credential. Then it keeps showing the database credential
# as vaultlet renews and replaces it. Ctrl-C stops everything and tears it
# down.
#
#   scripts/demo.sh            # until Ctrl-C
#   scripts/demo.sh --for 30   # stop by itself after 30 seconds
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

run_for=0
if [ "${1:-}" = "--for" ]; then
    run_for=${2:?--for needs a number of seconds}
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building vaultlet"
cargo build --locked --quiet
vaultlet="$repo/target/debug/vaultlet"

work=$(mktemp -d "${TMPDIR:-/tmp}/vaultlet-demo.XXXXXX")
chmod 0711 "$work"
bed="$work/bed"
vpid=""
apid=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$apid" ]; then kill -TERM "$apid" 2>/dev/null || true; wait "$apid" 2>/dev/null || true; fi
    if [ -n "$vpid" ] && kill -0 "$vpid" 2>/dev/null; then
        say "stopping vaultlet (SIGTERM: it revokes its leases and removes its socket)"
        kill -TERM "$vpid" 2>/dev/null || true
        wait "$vpid" 2>/dev/null || true
    fi
    "$repo/scripts/testbed.sh" down "$bed" >/dev/null 2>&1 || true
    rm -rf "$work"
    echo "demo cleaned up"
}
trap cleanup EXIT INT TERM

say "starting OpenBao and PostgreSQL (scripts/testbed.sh)"
"$repo/scripts/testbed.sh" up "$bed" >/dev/null
set -a
# shellcheck disable=SC1091
. "$bed/env"
set +a

# A short-lived database role so the demo shows renewals and replacements.
BAO_ADDR=$BAO_ADDR BAO_TOKEN=$BAO_TOKEN "$BAO_BIN" write -force database/roles/api \
    db_name=pg default_ttl=10s max_ttl=40s \
    creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT CONNECT ON DATABASE app TO \"{{name}}\";" \
    revocation_statements="REVOKE ALL ON DATABASE app FROM \"{{name}}\"; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'; DROP ROLE IF EXISTS \"{{name}}\";" \
    >/dev/null

sock="$work/vaultlet.sock"
cat >"$work/vaultlet.toml" <<EOF
# Written by scripts/demo.sh. See examples/vaultlet.toml for every key.
revoke_on_shutdown = true

[vault]
address = "$BAO_ADDR"

[auth.approle]
role_id_file = "$ROLE_ID_FILE"
secret_id_file = "$SECRET_ID_FILE"

[secret.db]
database = { mount = "database", role = "api" }

[secret.api]
kv = { mount = "secret", path = "api" }

[socket]
path = "$sock"

[[env_file]]
path = "$work/app.env"
template = """
DATABASE_URL=postgresql://{{ db.username }}:{{ db.password }}@$PGHOST:$PGPORT/$PGDATABASE
STRIPE_KEY={{ api.stripe_key }}
"""
EOF

say "vaultlet check"
"$vaultlet" check -c "$work/vaultlet.toml"

say "starting vaultlet (log: $work/vaultlet.log)"
"$vaultlet" run -c "$work/vaultlet.toml" 2>"$work/vaultlet.log" &
vpid=$!
# Until ready (a loaded machine may take a while; two minutes at most).
ready=""
for _ in $(seq 1 600); do
    if "$vaultlet" ready --socket "$sock" >/dev/null 2>&1 && [ -s "$work/app.env" ]; then ready=1; break; fi
    kill -0 "$vpid" 2>/dev/null || break
    sleep 0.2
done
if [ -z "$ready" ]; then
    echo "vaultlet did not become ready; its log:" >&2
    cat "$work/vaultlet.log" >&2
    exit 1
fi

say "secrets through the socket: vaultlet get"
echo "\$ vaultlet get api.stripe_key"
"$vaultlet" get api.stripe_key --socket "$sock"
echo "\$ vaultlet get db.username"
"$vaultlet" get db.username --socket "$sock"

say "secrets in the env file (mode $(stat -c %a "$work/app.env"); password masked here)"
sed -E "s/(:\/\/[^:]+:)[^@]+@/\1********@/" "$work/app.env"

say "an app that sources the env file logs in to PostgreSQL with the leased credential"
# shellcheck disable=SC2016
sh -c 'set -a; . "$1"; psql "$DATABASE_URL" -Atc "select '\''connected to '\'' || current_database() || '\'' as '\'' || current_user"' sh "$work/app.env"

api=""
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    say "a Node API (examples/node-api) reads its secrets from the socket and queries PostgreSQL through the pool helper"
    [ -d "$repo/examples/node-api/node_modules" ] || npm ci --prefix "$repo/examples/node-api" --no-audit --no-fund --silent
    # PORT=0: the app binds a free port itself and says which (a port
    # picked here and released could be taken before the app binds it).
    VAULTLET_SOCKET="$sock" PGHOST="$PGHOST" PGPORT="$PGPORT" PGDATABASE="$PGDATABASE" HOST=127.0.0.1 PORT=0 \
        node "$repo/examples/node-api/server.js" >"$work/node-api.log" 2>&1 &
    apid=$!
    for _ in $(seq 1 600); do
        api=$(sed -nE 's|.*listening on (http://[^ ]+).*|\1|p' "$work/node-api.log" | head -n1)
        [ -n "$api" ] && curl -sf "$api/health" >/dev/null 2>&1 && break
        kill -0 "$apid" 2>/dev/null || break
        sleep 0.2
    done
    if [ -z "$api" ] || ! curl -sf "$api/health" >/dev/null 2>&1; then
        echo "node-api did not come up; its log:" >&2
        cat "$work/node-api.log" >&2
        exit 1
    fi
    echo "\$ curl $api/whoami"
    curl -s "$api/whoami"; echo
fi

say "watching the credential: renewed every few seconds, replaced before max_ttl (Ctrl-C to stop)"
start=$(date +%s)
while :; do
    if doc=$("$vaultlet" get db --socket "$sock" 2>&1); then
        field() { printf '%s\n' "$doc" | sed -nE "s/.*\"$1\": \"?([^\",]+).*/\1/p"; }
        printf '%s  version %s  user %s  lease ends %s' "$(date +%T)" "$(field version)" "$(field username)" "$(field expires_at)"
        if [ -n "$api" ]; then printf '   node-api: %s' "$(curl -s "$api/whoami")"; fi
        printf '\n'
    else
        printf '%s  %s\n' "$(date +%T)" "$doc"
    fi
    if [ "$run_for" -gt 0 ] && [ $(( $(date +%s) - start )) -ge "$run_for" ]; then break; fi
    sleep 2
done
