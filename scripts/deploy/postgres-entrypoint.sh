#!/bin/sh
# Entry point of the offline PostgreSQL stand-in (scripts/test-deploy.sh): the
# part of the official postgres image's behaviour docker-compose.yml relies
# on. On first start (empty PGDATA) it runs initdb with POSTGRES_USER as the
# superuser and POSTGRES_PASSWORD as its password, creates POSTGRES_DB, and
# accepts password logins (scram-sha-256) from any address; then it runs the
# server as the postgres user in the foreground.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export PGDATA

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pw=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
    chown postgres "$pw"
    # --no-sync: a throwaway test database; fsyncing every file of a new
    # cluster can take minutes while the disk still writes back the images
    # just built (the official image keeps its own defaults).
    as_pg initdb --username="$POSTGRES_USER" --pwfile="$pw" --auth-local=trust \
        --auth-host=scram-sha-256 --no-sync >/dev/null
    rm -f "$pw"
    printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        as_pg pg_ctl -w -o "-c listen_addresses=''" start >/dev/null
        as_pg psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\""
        as_pg pg_ctl -w -m fast stop >/dev/null
    fi
    echo "postgres stand-in: initialised $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi
if [ "$#" -eq 0 ] || [ "$1" = postgres ]; then
    [ "$#" -eq 0 ] || shift
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- postgres "$@"
fi
exec "$@"
