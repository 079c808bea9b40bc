# syntax=docker/dockerfile:1
#
# The Concept Karaoke realtime server, built from source.
#
#   docker build -t karaoke-realtime .
#   docker run -p 8080:8080 -p 50051:50051 \
#     -e REALTIME_SHARED_SECRET=… -e ADMIN_TOKEN=… \
#     -v karaoke-data:/data karaoke-realtime
#
# Stage 1 compiles with cargo (the .proto is compiled by protox, so no protoc is
# needed); stage 2 is a slim Debian with the two binaries and nothing to build with.
# CI lints this file with hadolint (scripts/check-deploy); no container engine runs
# on the project's machines, so it is not built there. docs/deployment.md has more.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Only what the build reads: the manifest's targets (benches and bench/ are declared
# in Cargo.toml, so they must exist), the sources, the .proto and the migrations that
# sqlx::migrate! embeds.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY admin ./admin
COPY bench ./bench
COPY benches ./benches
COPY proto ./proto
COPY migrations ./migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin karaoke-realtime --bin karaoke-admin \
    && install -D -m 0755 target/release/karaoke-realtime /out/karaoke-realtime \
    && install -D -m 0755 target/release/karaoke-admin /out/karaoke-admin

FROM debian:bookworm-slim AS runtime
# A numeric, unprivileged user (Kubernetes' runAsNonRoot can check a number) and the
# one writable place, /data, for the default SQLite store.
RUN groupadd --system --gid 10001 karaoke \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin karaoke \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /out/karaoke-realtime /out/karaoke-admin /usr/local/bin/

ENV PORT=8080 \
    ADMIN_PORT=50051 \
    DATABASE_URL=sqlite:///data/karaoke.db
VOLUME ["/data"]
WORKDIR /data
EXPOSE 8080/tcp 50051/tcp
USER 10001:10001

# `health` GETs http://127.0.0.1:$PORT/health and exits 0 or 1: no curl in the image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/karaoke-realtime", "health", "--timeout-ms", "3000"]

# SIGTERM starts the graceful shutdown (sockets closed with 1012, writes flushed);
# give `docker stop` more than twice SHUTDOWN_GRACE_MS: `docker stop -t 30`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/karaoke-realtime"]
CMD ["serve"]
