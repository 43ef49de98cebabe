# Sourced by scripts/test-deploy.sh (private dockerd running, images built):
# docker-compose.yml as shipped, with only the stand-in image names (through
# the VAULTLET_*_IMAGE variables it reads) and, in an override file, shorter
# database TTLs for the set-up job, so that rotations happen within a minute.
# shellcheck shell=bash
# Variables come from scripts/test-deploy.sh.
# shellcheck disable=SC2154

compose() { docker-compose -f docker-compose.yml -f "$work/compose.override.yml" "$@"; }
compose_fail() {
    compose ps >&2 || true
    compose logs --no-color --tail=40 >&2 || true
    die "$*"
}
cid() { compose ps -q "$1"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$(cid "$1")"; }

# TTL 5 s, max 15 s: vaultlet replaces the credential every ~10 s.
cat >"$work/compose.override.yml" <<'EOF'
version: "3.8"
services:
  setup:
    environment:
      DB_DEFAULT_TTL: 5s
      DB_MAX_TTL: 15s
EOF

# The compose file asks for an unlimited memlock ulimit. A machine whose own
# hard limit is lower, and where nothing has CAP_SYS_RESOURCE to raise it
# (runc then fails with "error setting rlimit type 8"), gets its hard limit
# instead, through the override; vaultlet then cannot lock (it needs 512 MiB
# or CAP_IPC_LOCK) and must say so.
memlock_hard=$(ulimit -Hl)
memlock_full=1
if [ "$memlock_hard" != unlimited ]; then
    memlock_full=0
    cat >>"$work/compose.override.yml" <<EOF
  vaultlet:
    ulimits:
      memlock:
        soft: $((memlock_hard * 1024))
        hard: $((memlock_hard * 1024))
EOF
    say "this machine's RLIMIT_MEMLOCK hard limit is $memlock_hard KiB: the override lowers vaultlet's memlock ulimit to it"
fi

if (exec 3<>/dev/tcp/127.0.0.1/3000) 2>/dev/null; then
    die "127.0.0.1:3000 is in use; docker-compose.yml publishes the api there"
fi

step "compose: docker-compose up -d (images: $VAULTLET_OPENBAO_IMAGE, $VAULTLET_POSTGRES_IMAGE, vaultlet:dev, vaultlet-node-api:dev)"
t0=$(date +%s)
compose up -d --no-build >"$work/compose-up.log" 2>&1 || { cat "$work/compose-up.log" >&2; compose_fail "docker-compose up failed"; }

# The health check is what `api` waits for (condition: service_healthy).
# Deadlines here are generous: a loaded machine is slow, not wrong.
for _ in $(seq 1 240); do
    [ "$(health vaultlet 2>/dev/null)" = healthy ] && break
    sleep 0.5
done
[ "$(health vaultlet)" = healthy ] || compose_fail "vaultlet did not turn healthy (health: $(health vaultlet))"
# The health check's uid may ask for readiness, and read no secret.
if out=$(docker exec "$(cid vaultlet)" /usr/local/bin/vaultlet get db.username --socket /run/vaultlet/vaultlet.sock 2>&1); then
    die "uid 65532 read db.username on the socket"
fi
say "vaultlet get db.username as 65532: $out"
[[ "$out" == *"answered 403"* ]] || die "uid 65532 was refused for another reason: $out"
pass compose_health_check_turns_healthy "vaultlet ready as uid 65532, healthy after $(($(date +%s) - t0)) s (and refused the secrets); api started after it"

whoami() { curl -fsS --max-time 10 http://127.0.0.1:3000/whoami; }
for _ in $(seq 1 240); do
    whoami >/dev/null 2>&1 && break
    sleep 0.5
done
whoami >"$work/whoami.json" || compose_fail "GET 127.0.0.1:3000/whoami failed"
say "whoami: $(cat "$work/whoami.json")"
api_cid=$(cid api)
vl_cid=$(cid vaultlet)
api_started=$(docker inspect -f '{{.State.StartedAt}}' "$api_cid")

# The leased user as vaultlet holds it (the env file, read as root from the
# volume) is the one the API runs its queries as, and OpenBao has its lease.
sock_vol=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/run/vaultlet"}}{{.Name}}{{end}}{{end}}' "$vl_cid")
[ -n "$sock_vol" ] || die "no volume at /run/vaultlet in the vaultlet container"
in_volume() { docker run --rm --network none -v "$sock_vol:/v:ro" --entrypoint /bin/sh "$base_tag" -c "$1"; }
# shellcheck disable=SC2016 # expanded by the container's shell
env_user() { in_volume '. /v/api.env && printf %s "$PGUSER"'; }
api_user() { whoami | python3 -c 'import json,sys; print(json.load(sys.stdin)["current_user"])'; }
same=""
for _ in $(seq 1 120); do
    u1=$(env_user) && u2=$(api_user) && [ -n "$u1" ] && [ "$u1" = "$u2" ] && { same=$u1; break; }
    sleep 0.5
done
[ -n "$same" ] || compose_fail "whoami ($u2) never matched the leased user in api.env ($u1)"
[[ "$same" == v-approle-api-* ]] || die "current_user $same is not a leased database user"
leases=$(docker exec -e BAO_TOKEN=root "$(cid openbao)" bao list -format=json sys/leases/lookup/database/creds/api)
[ "$(printf '%s' "$leases" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" -ge 1 ] || die "OpenBao lists no database lease"
pass compose_whoami_answers_as_the_leased_user "GET 127.0.0.1:3000/whoami answers as $same"

step "compose: the API across rotations (one request every 200 ms)"
# Until vaultlet has issued 3 replacements (4 users seen), at most 240 s.
users=("$same")
ok=0
fail=0
t_start=$(date +%s%N)
deadline=$(($(date +%s) + 240))
next=$t_start
while [ ${#users[@]} -lt 4 ] && [ "$(date +%s)" -lt "$deadline" ]; do
    if body=$(whoami 2>/dev/null) && [[ "$body" =~ \"current_user\":\"([^\"]+)\" ]]; then
        ok=$((ok + 1))
        u=${BASH_REMATCH[1]}
        [ "$u" = "${users[-1]}" ] || users+=("$u")
    else
        fail=$((fail + 1))
        say "request failed at $(date +%T.%N | cut -c1-12): ${body:-no answer}"
    fi
    # One request every 200 ms, on a fixed schedule.
    next=$((next + 200000000))
    wait_ns=$((next - $(date +%s%N)))
    [ "$wait_ns" -le 0 ] || sleep "$(printf '0.%09d' "$wait_ns")"
done
span_ms=$((($(date +%s%N) - t_start) / 1000000))
say "requests: $ok ok, $fail failed in $span_ms ms ($((span_ms / (ok + fail))) ms apart); users: ${users[*]}"
# Dense enough to see a gap (a loaded machine may stretch the 200 ms).
[ $((span_ms / (ok + fail))) -le 1000 ] || die "requests were $((span_ms / (ok + fail))) ms apart, not 200"
[ ${#users[@]} -ge 4 ] || compose_fail "fewer than 3 rotations within 240 s"
[ "$fail" -eq 0 ] || compose_fail "$fail requests failed across the rotations"
restarts=$(docker inspect -f '{{.RestartCount}}' "$api_cid")
[ "$restarts" = 0 ] && [ "$(docker inspect -f '{{.State.StartedAt}}' "$api_cid")" = "$api_started" ] ||
    die "the api container was restarted ($restarts)"
[ "$(docker inspect -f '{{.RestartCount}}' "$vl_cid")" = 0 ] || die "the vaultlet container was restarted"
pass compose_api_answers_every_request_across_rotations "$((${#users[@]} - 1)) rotations, $ok requests, 0 failed, api container never restarted"

step "compose: vaultlet container hardening"
insp() { docker inspect -f "$1" "$vl_cid"; }
[ "$(insp '{{.HostConfig.ReadonlyRootfs}}')" = true ] || die "vaultlet root file system is writable"
[ "$(insp '{{.HostConfig.SecurityOpt}}')" = "[no-new-privileges:true]" ] || die "no-new-privileges not set"
pid=$(insp '{{.State.Pid}}')
status=$(cat "/proc/$pid/status")
field() { printf '%s\n' "$status" | awk -v k="$1:" '$1 == k { print $2; exit }'; }
say "pid $pid: Uid $(field Uid) Gid $(field Gid) CapEff $(field CapEff) CapBnd $(field CapBnd) NoNewPrivs $(field NoNewPrivs) VmLck $(field VmLck) kB"
[ "$(field Uid)" = 65532 ] && [ "$(field Gid)" = 65532 ] || die "vaultlet does not run as 65532:65532"
for c in CapInh CapPrm CapEff CapBnd CapAmb; do
    [ "$(field $c)" = 0000000000000000 ] || die "$c is $(field $c)"
done
[ "$(field NoNewPrivs)" = 1 ] || die "NoNewPrivs is not 1"
if [ "$memlock_full" = 1 ]; then
    [ "$(field VmLck)" -gt 0 ] || die "vaultlet locked no memory (VmLck 0)"
    locked="$(field VmLck) kB locked"
else
    # What vaultlet does without the limit it needs: warns, locks nothing.
    [ "$(field VmLck)" = 0 ] || die "VmLck $(field VmLck) with a $memlock_hard KiB limit"
    grep -q 'RLIMIT_MEMLOCK is' <<<"$(docker logs "$vl_cid" 2>&1)" || die "vaultlet did not warn that memory is not locked"
    locked="memory NOT locked: memlock hard limit $memlock_hard KiB on this machine, and vaultlet warned"
    printf '  SKIP memory lock through the memlock ulimit: this machine allows at most %s KiB and no CAP_SYS_RESOURCE\n' "$memlock_hard"
fi
# As the kernel sees it: the container's / is mounted read-only.
root_opts=$(awk '$5 == "/" { print $6; exit }' "/proc/$pid/mountinfo")
[[ "$root_opts" == ro,* || "$root_opts" == ro ]] || die "/ is mounted $root_opts"
pass compose_vaultlet_is_read_only_non_root_without_caps_and_locks_memory "read-only /, uid/gid 65532, no capabilities, no-new-privileges; $locked"

step "compose: socket volume owner and modes"
modes=$(in_volume 'stat -c "%n %u:%g %a %F" /v /v/vaultlet.sock /v/api.env')
printf '%s\n' "$modes" | sed 's/^/  /'
expect_mode() { printf '%s\n' "$modes" | grep -qx "$1" || die "expected: $1"; }
expect_mode "/v 65532:65532 750 directory"
expect_mode "/v/vaultlet.sock 65532:65532 660 socket"
expect_mode "/v/api.env 65532:65532 640 regular file"
pass compose_socket_volume_has_documented_owner_and_modes "/run/vaultlet 0750, socket 0660, api.env 0640, all 65532:65532"

step "compose: a container with a uid not on the allow list"
stranger_uid=2345
before=$(docker logs "$vl_cid" 2>&1 | grep -c "vaultlet::audit.*uid=$stranger_uid " || true)
code=$(docker run --rm --network none --user "$stranger_uid:$stranger_uid" --group-add 65532 \
    -v "$sock_vol:/run/vaultlet:ro" --entrypoint node vaultlet-node-api:dev -e '
    require("http").get({ socketPath: "/run/vaultlet/vaultlet.sock", path: "/v1/secrets/db" }, (r) => {
      let b = ""; r.on("data", (d) => (b += d)); r.on("end", () => { console.log(r.statusCode); console.error(b); });
    }).on("error", (e) => { console.log("error " + e.code); });' 2>"$work/stranger.err")
say "uid $stranger_uid asked for db: $code $(cat "$work/stranger.err")"
[ "$code" = 403 ] || die "expected 403, got $code"
grep -q 'password' "$work/stranger.err" && die "the 403 answer holds a password field"
audit=""
for _ in $(seq 1 300); do
    audit=$(docker logs "$vl_cid" 2>&1 | grep "vaultlet::audit.*uid=$stranger_uid " || true)
    [ "$(printf '%s\n' "$audit" | grep -c . || true)" -gt "$before" ] && break
    sleep 0.2
done
n=$(printf '%s\n' "$audit" | grep -c . || true)
say "audit: $audit"
[ "$n" -eq 1 ] || die "expected one audit line for uid $stranger_uid, got $n"
printf '%s\n' "$audit" | grep -q ' outcome=denied$' || die "the audit line does not say denied"
pass compose_uid_not_on_allow_list_gets_403_and_one_audit_line "uid $stranger_uid: 403, one audit line with outcome=denied"

step "compose: docker-compose down -v"
compose down -v >"$work/compose-down.log" 2>&1 || { cat "$work/compose-down.log" >&2; die "docker-compose down -v failed"; }
left=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
[ -z "$left" ] || die "containers left after down -v: $left"
vols=$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
[ -z "$vols" ] || die "volumes left after down -v: $vols"
nets=$(docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
[ -z "$nets" ] || die "networks left after down -v: $nets"
pass compose_down_leaves_nothing "no container, volume or network of the stack left"
