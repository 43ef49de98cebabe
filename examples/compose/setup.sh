#!/bin/sh
# One-shot set-up of the dev-mode OpenBao in docker-compose.yml (the `setup`
# service, run with the bao CLI of the openbao image): AppRole, KV and the
# PostgreSQL database engine, the policy from policies/vaultlet.hcl, the
# AppRole role `vaultlet`, and its role_id / secret_id written for vaultlet.
# Safe to run again against the same server.
#
# Environment (defaults are the compose file's):
#   BAO_ADDR, BAO_TOKEN            the server and a root token
#   PG_HOST, PG_PORT, PG_DATABASE  PostgreSQL as OpenBao reaches it
#   PG_ADMIN_USER, PG_ADMIN_PASSWORD  the account OpenBao creates roles with
#   POLICY_FILE                    policies/vaultlet.hcl as mounted
#   OUT_DIR, OUT_UID               where role_id/secret_id go, and their owner (vaultlet's uid)
#   DB_DEFAULT_TTL, DB_MAX_TTL     the database role's lease TTL and max TTL (1h, 24h)
set -eu

: "${BAO_ADDR:=http://openbao:8200}"
: "${BAO_TOKEN:?BAO_TOKEN must be set}"
: "${PG_HOST:=postgres}" "${PG_PORT:=5432}" "${PG_DATABASE:=app}"
: "${PG_ADMIN_USER:=vaultadmin}" "${PG_ADMIN_PASSWORD:?PG_ADMIN_PASSWORD must be set}"
: "${POLICY_FILE:=/setup/vaultlet.hcl}" "${OUT_DIR:=/approle}" "${OUT_UID:=65532}"
: "${DB_DEFAULT_TTL:=1h}" "${DB_MAX_TTL:=24h}"
export BAO_ADDR BAO_TOKEN

say() { printf 'setup: %s\n' "$*"; }

say "waiting for $BAO_ADDR"
i=0
until bao status >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 60 ] || { say "OpenBao did not come up"; exit 1; }
    sleep 1
done

enabled() { bao "$1" list -format=json | grep -q "\"$2/\""; }

enabled auth approle || bao auth enable approle >/dev/null
# Dev mode already mounts KV v2 at secret/; a real server may not.
enabled secrets secret || bao secrets enable -path=secret -version=2 kv >/dev/null
enabled secrets database || bao secrets enable -path=database database >/dev/null

say "database/config/pg -> $PG_HOST:$PG_PORT/$PG_DATABASE"
bao write database/config/pg \
    plugin_name=postgresql-database-plugin \
    connection_url="postgresql://{{username}}:{{password}}@$PG_HOST:$PG_PORT/$PG_DATABASE?sslmode=disable" \
    username="$PG_ADMIN_USER" \
    password="$PG_ADMIN_PASSWORD" \
    allowed_roles=api \
    verify_connection=true >/dev/null

say "database/roles/api (TTL $DB_DEFAULT_TTL, max $DB_MAX_TTL)"
bao write database/roles/api \
    db_name=pg \
    default_ttl="$DB_DEFAULT_TTL" \
    max_ttl="$DB_MAX_TTL" \
    creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT CONNECT ON DATABASE $PG_DATABASE TO \"{{name}}\";" \
    revocation_statements="REVOKE ALL ON DATABASE $PG_DATABASE FROM \"{{name}}\"; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'; DROP ROLE IF EXISTS \"{{name}}\";" \
    >/dev/null

say "secret/api (KV v2)"
bao kv put -mount=secret api stripe_key=sk_test_demo123 greeting=hello >/dev/null

say "policy vaultlet and AppRole role vaultlet"
bao policy write vaultlet "$POLICY_FILE" >/dev/null
# A periodic token: lives as long as vaultlet renews it (policies/README.md).
bao write auth/approle/role/vaultlet \
    token_policies=vaultlet token_ttl=1h token_period=24h secret_id_ttl=0 >/dev/null

umask 077
mkdir -p "$OUT_DIR"
bao read -field=role_id auth/approle/role/vaultlet/role-id >"$OUT_DIR/role_id.tmp"
bao write -f -field=secret_id auth/approle/role/vaultlet/secret-id >"$OUT_DIR/secret_id.tmp"
chown "$OUT_UID" "$OUT_DIR/role_id.tmp" "$OUT_DIR/secret_id.tmp"
chmod 0400 "$OUT_DIR/role_id.tmp" "$OUT_DIR/secret_id.tmp"
mv -f "$OUT_DIR/role_id.tmp" "$OUT_DIR/role_id"
mv -f "$OUT_DIR/secret_id.tmp" "$OUT_DIR/secret_id"
say "role_id and secret_id written to $OUT_DIR (owner uid $OUT_UID, mode 0400)"
