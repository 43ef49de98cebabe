# Sourced by scripts/test-deploy.sh (private dockerd running, images built):
# examples/systemd installed as its README says into a container running
# systemd as PID 1, with OpenBao (dev mode, as vault.internal) and PostgreSQL
# (as db.internal) in containers on the same bridge network, configured by
# examples/compose/setup.sh.
# shellcheck shell=bash
# Variables come from scripts/test-deploy.sh.
# shellcheck disable=SC2154

sd_net=vldeploy-sd
sd=vld-systemd
sd_bao=vld-sd-openbao
sd_pg=vld-sd-postgres
sx() { docker exec "$sd" "$@"; }
sd_fail() {
    sx journalctl --no-pager -n 60 -u vaultlet -u node-api >&2 || true
    die "$*"
}
prop() { sx systemctl show -p "$2" --value "$1"; }
# The MainPID of the vaultlet systemd started after process $1 went away
# (within 120 s, once active); fails otherwise. Deadlines here are
# generous: a loaded machine is slow, not wrong.
replaced_by() {
    local pid
    for _ in $(seq 1 400); do
        pid=$(prop vaultlet MainPID)
        if [ "$pid" != "$1" ] && [ "$pid" != 0 ] && [ "$(prop vaultlet ActiveState)" = active ]; then
            echo "$pid"
            return 0
        fi
        sleep 0.3
    done
    return 1
}

step "systemd: image with systemd as PID 1"
systemd_tag="vaultlet-deploy/systemd:$( (printf '%s\n' "$base_tag" "$node_v" v1) | stamp_of)"
if ! have_image "$systemd_tag"; then
    ctx="$run/systemd"
    mkdir -p "$ctx"
    cp "$node_bin" "$ctx/node"
    cat >"$ctx/Dockerfile" <<EOF
FROM $base_tag
COPY node /usr/bin/node
# PostgreSQL comes with the shared base; here it runs in its own container.
RUN systemctl mask postgresql.service systemd-firstboot.service \\
 && ln -sf /dev/null /etc/systemd/system/getty@.service
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
EOF
    build_image "$systemd_tag" "$ctx"
    rm -rf "$ctx"
fi
say "$systemd_tag"

step "systemd: OpenBao and PostgreSQL containers, examples/compose/setup.sh"
docker network create "$sd_net" >/dev/null
docker run -d --name "$sd_pg" --network "$sd_net" --network-alias db.internal \
    -e POSTGRES_USER=vaultadmin -e POSTGRES_PASSWORD=vaultadmin-dev-only -e POSTGRES_DB=app \
    "$postgres_tag" >/dev/null
docker run -d --name "$sd_bao" --network "$sd_net" --network-alias vault.internal --cap-add IPC_LOCK \
    "$openbao_tag" server -dev -dev-root-token-id=root -dev-listen-address=0.0.0.0:8200 >/dev/null
# Over TCP: while it initialises, the entrypoint runs a server on the Unix
# socket only, which a socket check would take for the real one.
for _ in $(seq 1 400); do
    docker exec "$sd_pg" pg_isready -q -h 127.0.0.1 -U vaultadmin -d app 2>/dev/null && break
    sleep 0.3
done
if ! docker exec "$sd_pg" pg_isready -q -h 127.0.0.1 -U vaultadmin -d app 2>/dev/null; then
    docker ps -a --filter "name=$sd_pg" --format '{{.Names}} {{.Status}}' >&2 || true
    docker logs "$sd_pg" 2>&1 | tail -n 30 >&2 || true
    die "PostgreSQL did not come up"
fi
mkdir -p "$work/sd-approle"
# TTL 6 s, max 18 s: renewals and replacements within seconds.
docker run --rm --network "$sd_net" --entrypoint /bin/sh \
    -e BAO_ADDR=http://vault.internal:8200 -e BAO_TOKEN=root -e PG_HOST=db.internal -e PG_PORT=5432 \
    -e PG_DATABASE=app -e PG_ADMIN_USER=vaultadmin -e PG_ADMIN_PASSWORD=vaultadmin-dev-only \
    -e POLICY_FILE=/setup/vaultlet.hcl -e OUT_DIR=/approle -e OUT_UID=0 -e DB_DEFAULT_TTL=6s -e DB_MAX_TTL=18s \
    -v "$repo/examples/compose/setup.sh:/setup/setup.sh:ro" -v "$repo/policies/vaultlet.hcl:/setup/vaultlet.hcl:ro" \
    -v "$work/sd-approle:/approle" "$openbao_tag" /setup/setup.sh >"$work/sd-setup.log" 2>&1 ||
    { cat "$work/sd-setup.log" >&2; die "setup.sh failed"; }
say "OpenBao at http://vault.internal:8200, PostgreSQL at db.internal:5432, AppRole vaultlet"

step "systemd: container"
# A minbase Debian has no ca-certificates: with an http:// address vaultlet
# needs no system roots, so none are given.
docker run -d --name "$sd" --hostname vaultlet-host --network "$sd_net" \
    --cap-add SYS_ADMIN --cap-add IPC_LOCK --security-opt seccomp=unconfined \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock -e container=docker \
    "$systemd_tag" /sbin/init >/dev/null
state=""
for _ in $(seq 1 400); do
    state=$(sx systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.3
done
say "systemctl is-system-running: $state"
case "$state" in running | degraded) ;; *) die "systemd did not come up ($state)" ;; esac
# LoadCredential= builds a unit's credentials on a ramfs in a child mount
# namespace and moves it to /run/credentials/UNIT; the move reaches systemd's
# namespace only when /run is a shared mount, as it is on a host. Docker's
# /run is private, which left an empty root-only directory.
sx mount --make-shared /run

step "systemd: install as examples/systemd/README.md says"
# The binary from the image built above (static; the README's
# target/release/vaultlet is the same program built on the host).
docker create --name vld-extract vaultlet:dev >/dev/null
docker cp vld-extract:/usr/local/bin/vaultlet "$work/vaultlet"
docker rm vld-extract >/dev/null
sx mkdir -p /src
for f in "$work/vaultlet" examples/systemd/vaultlet-sysusers.conf examples/systemd/vaultlet.service \
    examples/systemd/app.service "$work/sd-approle/role_id" "$work/sd-approle/secret_id"; do
    docker cp "$f" "$sd:/src/" >/dev/null
done
# The app of app.service: examples/node-api with its node_modules, from the
# image built above.
docker create --name vld-extract vaultlet-node-api:dev >/dev/null
docker cp vld-extract:/app "$work/app"
docker rm vld-extract >/dev/null
docker cp "$work/app" "$sd:/opt/app" >/dev/null
sx ln -s /opt/app/examples/node-api /opt/node-api
# The README's edits: the app's uid on socket.allow. The test's own edits: this
# OpenBao speaks plain HTTP (no ca_cert), and leases are revoked on stop.
sx useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin nodeapi
app_uid=$(sx id -u nodeapi)
{
    echo 'revoke_on_shutdown = true'
    sed -e 's|^address = "https://vault.internal:8200"|address = "http://vault.internal:8200"\nallow_insecure_http = true|' \
        -e '/^ca_cert = /d' \
        -e "s|^allow = \[{ uid = 990 }\]|allow = [{ uid = $app_uid }]|" \
        examples/systemd/vaultlet.toml
} >"$work/sd-vaultlet.toml"
grep -q "allow = \[{ uid = $app_uid }\]" "$work/sd-vaultlet.toml" || die "could not set socket.allow in the systemd config"
docker cp "$work/sd-vaultlet.toml" "$sd:/src/vaultlet.toml" >/dev/null
sx sh -euc '
cd /src
install -m 0755 vaultlet /usr/local/bin/vaultlet
install -m 0644 vaultlet-sysusers.conf /usr/lib/sysusers.d/vaultlet.conf
systemd-sysusers
install -d -m 0750 -g vaultlet /etc/vaultlet
install -m 0640 -g vaultlet vaultlet.toml /etc/vaultlet/vaultlet.toml
install -m 0600 role_id secret_id /etc/vaultlet/
install -m 0644 vaultlet.service /etc/systemd/system/
install -m 0644 app.service /etc/systemd/system/node-api.service
systemctl daemon-reload
'
# As examples/systemd/README.md says: outside the unit, point
# CREDENTIALS_DIRECTORY at the folder that holds role_id.
out=$(sx env CREDENTIALS_DIRECTORY=/etc/vaultlet /usr/local/bin/vaultlet check -c /etc/vaultlet/vaultlet.toml 2>&1) || { printf '%s\n' "$out" >&2; die "vaultlet check failed"; }
printf '%s\n' "$out" | sed 's/^/  /'
say "installed (vaultlet uid $(sx id -u vaultlet), nodeapi uid $app_uid)"

step "systemd: systemctl start vaultlet returns after READY=1"
t0=$(date +%s.%N)
sx systemctl start vaultlet || sd_fail "systemctl start vaultlet failed"
# Checked right after `start` returned, before anything else.
sx test -S /run/vaultlet/vaultlet.sock || sd_fail "no socket when systemctl start returned"
sx test -s /run/vaultlet/app.env || sd_fail "no env file when systemctl start returned"
say "start returned after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s; socket and app.env present"
show=$(sx systemctl show -p ActiveState,SubState,StatusText vaultlet)
printf '%s\n' "$show" | sed 's/^/  /'
printf '%s\n' "$show" | grep -qx 'ActiveState=active' || sd_fail "vaultlet not active"
printf '%s\n' "$show" | grep -qx 'StatusText=serving secrets' || sd_fail "StatusText is not 'serving secrets'"
pass systemd_start_returns_only_after_ready "socket and env file exist when start returns; active, serving secrets"

step "systemd: the sandbox keeps what vaultlet needs"
pid=$(prop vaultlet MainPID)
st=$(sx cat "/proc/$pid/status")
vmlck=$(printf '%s\n' "$st" | awk '$1 == "VmLck:" { print $2 }')
say "MainPID $pid: $(printf '%s\n' "$st" | grep -E '^(Uid|CapEff|NoNewPrivs|VmLck):' | tr -s '\t ' ' ' | paste -sd' ')"
[ "${vmlck:-0}" -gt 0 ] || sd_fail "vaultlet locked no memory under the unit (VmLck ${vmlck:-?})"
printf '%s\n' "$st" | grep -q "^Uid:[[:space:]]*$(sx id -u vaultlet)[[:space:]]" || sd_fail "vaultlet does not run as the vaultlet user"
modes=$(sx stat -c '%n %U:%G %a' /run/vaultlet /run/vaultlet/vaultlet.sock /run/vaultlet/app.env)
printf '%s\n' "$modes" | sed 's/^/  /'
printf '%s\n' "$modes" | grep -qx '/run/vaultlet vaultlet:vaultlet 750' || sd_fail "/run/vaultlet mode/owner"
printf '%s\n' "$modes" | grep -qx '/run/vaultlet/vaultlet.sock vaultlet:vaultlet 660' || sd_fail "socket mode/owner"
printf '%s\n' "$modes" | grep -qx '/run/vaultlet/app.env vaultlet:vaultlet 640' || sd_fail "app.env mode/owner"
pass systemd_sandbox_keeps_memory_lock_and_socket "memory locked ($vmlck kB) with CAP_IPC_LOCK, socket and env file with the documented modes"

# The lease as the app sees it on the socket (no secret value printed).
lease() {
    sx setpriv --reuid=nodeapi --regid=nodeapi --groups="$(sx getent group vaultlet | cut -d: -f3)" /usr/bin/node -e '
    require("http").get({ socketPath: "/run/vaultlet/vaultlet.sock", path: "/v1/secrets/db" }, (r) => {
      let b = ""; r.on("data", (d) => (b += d));
      r.on("end", () => { const j = JSON.parse(b); console.log(r.statusCode, j.version, j.data.username, j.lease.expires_at); });
    });'
}
first=$(lease) || sd_fail "the app's uid cannot read db on the socket"
say "db as nodeapi reads it: $first (status version user expires_at)"
renewed="" rotated=""
for _ in $(seq 1 400); do
    now=$(lease) || sd_fail "socket read failed"
    read -r _ v0 u0 e0 <<<"$first"
    read -r _ v1 u1 e1 <<<"$now"
    [ "$v1" = "$v0" ] && [ "$e1" != "$e0" ] && renewed="$now"
    [ "$u1" != "$u0" ] && { rotated="$now"; break; }
    sleep 0.3
done
[ -n "$renewed" ] || sd_fail "no renewal seen (same version, later expiry) before the rotation"
[ -n "$rotated" ] || sd_fail "no rotation within 120 s"
say "renewed: $renewed"
say "rotated: $rotated"
pass systemd_sandbox_keeps_renewal_and_rotation "renewed, then replaced"

step "systemd: node-api.service (app.service) reads its secrets"
sx systemctl start node-api || sd_fail "systemctl start node-api failed"
who=""
for _ in $(seq 1 240); do
    who=$(sx /usr/bin/node -e '
    require("http").get("http://127.0.0.1:3000/whoami", (r) => { let b = ""; r.on("data", (d) => (b += d)); r.on("end", () => console.log(b)); })
      .on("error", () => process.exit(1));' 2>/dev/null) && break
    sleep 0.5
done
say "whoami: $who"
[[ "$who" == *'"current_user":"v-approle-api-'* ]] || sd_fail "node-api did not answer as a leased user"
# The env file, as a process in group vaultlet reads it.
# shellcheck disable=SC2016 # expanded by the container's shell
sx setpriv --reuid=nodeapi --regid=nodeapi --groups="$(sx getent group vaultlet | cut -d: -f3)" \
    sh -c 'set -a; . /run/vaultlet/app.env; case "$DATABASE_URL" in postgresql://v-approle-api-*@db.internal:5432/app) ;; *) exit 1 ;; esac' ||
    sd_fail "nodeapi cannot source /run/vaultlet/app.env"
pass systemd_app_reads_its_secrets "node-api answers as the leased user; nodeapi sources app.env"

step "systemd: systemctl stop vaultlet revokes and removes the socket"
list_leases() {
    docker exec -e BAO_ADDR=http://127.0.0.1:8200 -e BAO_TOKEN=root "$sd_bao" \
        bao list -format=json sys/leases/lookup/database/creds/api
}
n_leases=$(list_leases | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') || sd_fail "cannot list leases"
[ "$n_leases" -ge 1 ] || sd_fail "OpenBao lists no lease before stop"
env_now=$(sx cat /run/vaultlet/app.env)
db_url=$(printf '%s\n' "$env_now" | sed -n "s/^DATABASE_URL=//p" | tr -d "'\"" | sed 's/@db.internal:5432/@127.0.0.1:5432/')
docker exec "$sd_pg" psql -X -Atq "$db_url" -c 'select 1' >/dev/null || sd_fail "the current credential does not log in before stop"
sx systemctl stop vaultlet
stop_state=$(prop vaultlet ActiveState)
sx test ! -e /run/vaultlet/vaultlet.sock || sd_fail "socket left after stop"
if docker exec "$sd_pg" psql -X -Atq "$db_url" -c 'select 1' >/dev/null 2>&1; then
    sd_fail "the credential still logs in after stop (revoke_on_shutdown)"
fi
# Expired leases would still be listed for a while; revoked ones are gone.
# `bao list` exits 2 with `{}` when there is nothing to list.
rc=0
leases=$(list_leases 2>&1) || rc=$?
case "$rc:$(printf '%s' "$leases" | tr -d ' \n')" in
    0:'[]' | 2:'{}') ;;
    *) sd_fail "OpenBao still lists leases after stop (exit $rc): $leases" ;;
esac
pass systemd_stop_revokes_and_removes_the_socket "after stop: $stop_state, socket gone, credential refused by PostgreSQL, $n_leases lease(s) before and none after"

step "systemd: a configuration error exits 64, no restart loop"
sx cp -p /etc/vaultlet/vaultlet.toml /etc/vaultlet/vaultlet.toml.good
sx sh -c 'printf "\n[bogus]\nkey = 1\n" >>/etc/vaultlet/vaultlet.toml'
sx systemctl start vaultlet 2>/dev/null && sd_fail "start with a broken config succeeded"
# Longer than RestartSec=5s: a restart would have happened by now.
sleep 7
show=$(sx systemctl show -p ActiveState,Result,ExecMainStatus,NRestarts vaultlet)
printf '%s\n' "$show" | sed 's/^/  /'
printf '%s\n' "$show" | grep -qx 'ExecMainStatus=64' || sd_fail "exit status is not 64"
printf '%s\n' "$show" | grep -qx 'NRestarts=0' || sd_fail "restarted after exit 64"
printf '%s\n' "$show" | grep -qx 'ActiveState=failed' || sd_fail "not failed after exit 64"
grep -m1 'bogus' <<<"$(sx journalctl --no-pager -u vaultlet -o cat)" | sed 's/^/  journal: /' || true
sx mv /etc/vaultlet/vaultlet.toml.good /etc/vaultlet/vaultlet.toml
sx systemctl reset-failed vaultlet
pass systemd_config_error_exits_64_without_restart_loop "exit 64, failed, NRestarts=0"

step "systemd: OpenBao unreachable at boot, then reachable"
docker network disconnect "$sd_net" "$sd_bao"
sx systemctl start --no-block vaultlet
for _ in $(seq 1 300); do
    [ "$(prop vaultlet MainPID)" != 0 ] && break
    sleep 0.2
done
sleep 3
[ "$(prop vaultlet ActiveState)" = activating ] || sd_fail "expected activating while OpenBao is unreachable, got $(prop vaultlet ActiveState)"
say "while unreachable: ActiveState=$(prop vaultlet ActiveState) (not ready)"
docker network connect --alias vault.internal "$sd_net" "$sd_bao"
for _ in $(seq 1 600); do
    [ "$(prop vaultlet ActiveState)" = active ] && break
    sleep 0.2
done
[ "$(prop vaultlet ActiveState)" = active ] || sd_fail "not ready after OpenBao became reachable"
pass systemd_vault_unreachable_at_boot_then_ready "activating while OpenBao was unreachable, active once it was reachable (NRestarts=$(prop vaultlet NRestarts))"

step "systemd: a frozen vaultlet (SIGSTOP) is restarted by the watchdog"
# A drop-in shortens WatchdogSec=30s to 5 s to keep the test short.
sx mkdir -p /etc/systemd/system/vaultlet.service.d
sx sh -c 'printf "[Service]\nWatchdogSec=5s\n" >/etc/systemd/system/vaultlet.service.d/watchdog.conf'
sx systemctl daemon-reload
sx systemctl restart vaultlet || sd_fail "restart failed"
old_pid=$(prop vaultlet MainPID)
n0=$(prop vaultlet NRestarts)
sx sh -c "kill -STOP $old_pid"
new_pid=$(replaced_by "$old_pid") || sd_fail "the frozen vaultlet was not replaced"
grep -m1 -i 'watchdog' <<<"$(sx journalctl --no-pager -u vaultlet -o cat)" | sed 's/^/  journal: /' || true
pass systemd_watchdog_restarts_a_frozen_vaultlet "pid $old_pid frozen, restarted as pid $new_pid (NRestarts $n0 -> $(prop vaultlet NRestarts))"

step "systemd: sealed state keyed by systemd-creds survives a crash without a new login"
# As docs/state.md ("Providing the key") says: the key encrypted with
# systemd-creds, LoadCredentialEncrypted= and StateDirectory= in the unit,
# [state] in vaultlet.toml. The unit's lines go in a drop-in here.
# shellcheck disable=SC2016 # expanded by the container's shell
sx sh -euc '
umask 077
head -c 32 /dev/urandom | systemd-creds encrypt --name=state-key - /etc/vaultlet/state-key.cred
printf "[Service]\nLoadCredentialEncrypted=state-key:/etc/vaultlet/state-key.cred\nStateDirectory=vaultlet\nStateDirectoryMode=0700\n" \
    >/etc/systemd/system/vaultlet.service.d/state.conf
printf "\n[state]\npath = \"/var/lib/vaultlet/state\"\nkey_file = \"\$CREDENTIALS_DIRECTORY/state-key\"\n" >>/etc/vaultlet/vaultlet.toml
systemctl daemon-reload
' || sd_fail "could not set up the state key"
sx systemctl restart vaultlet || sd_fail "restart with [state] failed"
for _ in $(seq 1 300); do
    sx test -s /var/lib/vaultlet/state && break
    sleep 0.2
done
sx test -s /var/lib/vaultlet/state || sd_fail "no state file written"
modes=$(sx stat -c '%n %U:%G %a' /var/lib/vaultlet /var/lib/vaultlet/state)
printf '%s\n' "$modes" | sed 's/^/  /'
printf '%s\n' "$modes" | grep -qx '/var/lib/vaultlet/state vaultlet:vaultlet 600' || sd_fail "state file mode/owner"
# Nothing the app reads is in the file in clear.
user=$(lease | awk '{ print $3 }') || sd_fail "socket read failed"
sx grep -q -F "$user" /var/lib/vaultlet/state && sd_fail "the served username is in the state file in clear"
# A new login makes a new token: count them across the crash.
accessors() {
    docker exec -e BAO_ADDR=http://127.0.0.1:8200 -e BAO_TOKEN=root "$sd_bao" \
        bao list -format=json auth/token/accessors | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
}
sleep 2 # the state is written at most 1 s after a change
before=$(accessors) || sd_fail "cannot list token accessors"
old_pid=$(prop vaultlet MainPID)
sx systemctl kill -s KILL vaultlet
new_pid=$(replaced_by "$old_pid") || sd_fail "vaultlet was not restarted after kill -9"
after_read=$(lease) || sd_fail "socket read failed after the restart"
sleep 2
after=$(accessors) || sd_fail "cannot list token accessors"
[ "$after" = "$before" ] || sd_fail "the restarted vaultlet logged in again ($before tokens before, $after after)"
db_url=$(sx cat /run/vaultlet/app.env | sed -n "s/^DATABASE_URL=//p" | tr -d "'\"" | sed 's/@db.internal:5432/@127.0.0.1:5432/')
docker exec "$sd_pg" psql -X -Atq "$db_url" -c 'select 1' >/dev/null || sd_fail "the resumed credential does not log in"
grep -m1 'state file' <<<"$(sx journalctl --no-pager -u vaultlet -o cat _PID="$new_pid")" | sed 's/^/  journal: /' || true
pass systemd_sealed_state_survives_a_crash_without_login "key from systemd-creds; pid $old_pid killed, pid $new_pid serves ($after_read) with the same $after token(s), no new login; the state file 0600 without the username in clear"

docker rm -f "$sd" "$sd_bao" "$sd_pg" >/dev/null
docker network rm "$sd_net" >/dev/null
