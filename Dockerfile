# The NomadWave ingest binaries in one image: sink-clickhouse, ingest-wave, ingest-wx,
# ingest-carbon and edge-sim, all in /usr/local/bin.
#
#   docker build -t nomadwave-ingest:local .
#   docker run --rm nomadwave-ingest:local sink-clickhouse --help
#
# There is no ENTRYPOINT: every container names the binary and subcommand it runs (see
# compose.yaml). Works with BuildKit and with the classic builder.

# --- skeleton: the workspace's manifests with stub sources ------------------------------------
# Rerun on every source change (it takes a second), but its output changes only when a manifest
# or the lockfile does, so the dependency layer below stays cached across code edits.
FROM rust:1.95-slim-bookworm AS skeleton
WORKDIR /src
COPY . .
RUN sh deploy/docker/cargo-skeleton.sh /src /skeleton

# --- builder -----------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never

# The packages whose binaries the image ships.
ARG PACKAGES="-p sink-clickhouse -p ingest-wave -p ingest-wx -p ingest-carbon -p edge-sim"

# Dependencies only, from the skeleton: the slow part, cached until Cargo.toml/Cargo.lock change.
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked --bins $PACKAGES

# Our sources. The stubs compiled above may look newer to cargo than the real files (COPY keeps
# the files' own times), so every source is touched to force our crates to be rebuilt.
COPY . .
RUN find . -path ./target -prune -o -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bins $PACKAGES

# --- runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates for TLS to real upstreams and servers; curl for the compose health checks
# (`curl -f http://127.0.0.1:9464/readyz`).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged user: no binary needs root, and the uid is stable for volume permissions.
RUN groupadd --system --gid 10001 nomadwave \
    && useradd --system --uid 10001 --gid nomadwave --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nomadwave

COPY --from=builder /src/target/release/sink-clickhouse /usr/local/bin/sink-clickhouse
COPY --from=builder /src/target/release/ingest-wave /usr/local/bin/ingest-wave
COPY --from=builder /src/target/release/ingest-wx /usr/local/bin/ingest-wx
COPY --from=builder /src/target/release/ingest-carbon /usr/local/bin/ingest-carbon
COPY --from=builder /src/target/release/edge-sim /usr/local/bin/edge-sim

# Numeric, so Kubernetes' runAsNonRoot and other checks that cannot read /etc/passwd see a non-root
# user: the uid and gid of the nomadwave user created above (the jobs' templates render secrets for it).
USER 10001:10001
# Every long-running command serves /metrics, /healthz and /readyz here when HTTP_LISTEN says so.
EXPOSE 9464
