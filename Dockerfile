# syntax=docker/dockerfile:1
# vaultlet image: a static (musl) binary on distroless, run as nonroot; no shell.
#
#   docker build -t vaultlet .
#   docker run --rm -v /etc/vaultlet:/etc/vaultlet:ro -v vaultlet-run:/run/vaultlet vaultlet
#
# The default command is `run -c /etc/vaultlet/vaultlet.toml`; the socket and
# env files go to /run/vaultlet (a volume shared with the app container, owned
# by 65532). See docker-compose.yml for a complete set-up.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
# musl-gcc for the C parts of the TLS crypto (ring, aws-lc).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names the e2e test target; the manifest does not load without it.
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/vaultlet /out/vaultlet \
 && install -d -m 0750 /out/run-vaultlet

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/vaultlet /usr/local/bin/vaultlet
# An empty /run/vaultlet owned by the runtime user: a fresh named volume
# mounted there starts with this owner and mode.
COPY --from=build --chown=65532:65532 /out/run-vaultlet /run/vaultlet
USER 65532:65532
ENV VAULTLET_SOCKET=/run/vaultlet/vaultlet.sock
ENTRYPOINT ["/usr/local/bin/vaultlet"]
CMD ["run", "-c", "/etc/vaultlet/vaultlet.toml"]
