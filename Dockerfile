# vaultlet image: a static binary on distroless, run as nonroot; no shell.
#
#   docker build -t vaultlet .
#   docker run --rm -v /etc/vaultlet:/etc/vaultlet:ro -v vaultlet-run:/run/vaultlet vaultlet
#
# The default command is `run -c /etc/vaultlet/vaultlet.toml`; the socket and
# env files go to /run/vaultlet (a volume shared with the app container, owned
# by 65532). See docker-compose.yml for a complete set-up.
#
# Builds with the classic builder as well as BuildKit (no RUN --mount, no
# syntax line). Behind an air-gapped registry, name your mirrors of the two
# base images:
#
#   docker build --build-arg BUILDER_IMAGE=registry.example/rust:1-bookworm \
#                --build-arg RUNTIME_IMAGE=registry.example/distroless/static-debian12:nonroot .
#
# The builder needs cargo and a C compiler (the TLS crypto has C parts); the
# runtime image needs nothing at all: the binary is static, resolves host
# names itself (feature static-dns) and runs as 65532:65532.

ARG RUST_VERSION=1
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build
# Static glibc binary. The musl target would need `rustup target add`, which
# an offline builder cannot do; the explicit --target keeps crt-static away
# from build scripts and proc macros, which must stay dynamic.
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_BUILD_TARGET=x86_64-unknown-linux-gnu
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Dependencies first, against empty sources: this layer is reused for as long
# as Cargo.toml and Cargo.lock do not change (no BuildKit cache mounts here).
# Cargo.toml names the e2e test target; the manifest does not load without it.
RUN mkdir -p src tests/e2e \
 && echo 'fn main() {}' >src/main.rs \
 && touch src/lib.rs tests/e2e/main.rs \
 && cargo build --release --locked --features static-dns \
 && rm -rf src tests
COPY src ./src
COPY tests ./tests
# COPY keeps the files' own times, which may be older than the empty
# sources' build: touch them so cargo rebuilds the crate itself.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --features static-dns \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/vaultlet /out/vaultlet \
 && install -d -m 0750 /out/run-vaultlet \
 && /out/vaultlet --version
# COPY gives the folder it copies into mode 0755; copying the parent keeps
# /run/vaultlet's own 0750.
RUN mkdir -p /out/run && mv /out/run-vaultlet /out/run/vaultlet

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/vaultlet /usr/local/bin/vaultlet
# An empty /run/vaultlet (0750) owned by the runtime user: a fresh named
# volume mounted there starts with this owner and mode.
COPY --from=build --chown=65532:65532 /out/run/ /run/
USER 65532:65532
ENV VAULTLET_SOCKET=/run/vaultlet/vaultlet.sock
ENTRYPOINT ["/usr/local/bin/vaultlet"]
CMD ["run", "-c", "/etc/vaultlet/vaultlet.toml"]
