# The callstore server image.
#
#   docker build -t callstore:0.1.0 .
#   docker run --rm -p 50051:50051 -e DATABASE_URL=postgres://user:password@host:5432/callstore callstore:0.1.0
#
# The image holds only the binary: it has no PostgreSQL, so DATABASE_URL must name a server.
# helm/callstore deploys it (and runs `callstore migrate` before the server starts).

# --- build ---------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer, rebuilt only when Cargo.toml or Cargo.lock change:
# build a placeholder crate with the real manifest. Every target the manifest names needs a
# file (the [[bench]] sections), and a placeholder build.rs makes the build dependencies
# (protox, tonic-prost-build) compile here too.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > build.rs \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in $(awk '/^\[\[bench\]\]/ { in_bench = 1; next } /^\[/ { in_bench = 0 } in_bench && $1 == "name" { gsub(/"/, "", $3); print $3 }' Cargo.toml); do \
         echo 'fn main() {}' > "benches/${bench}.rs"; \
       done \
    && cargo build --release --locked --bin callstore \
    && rm -rf build.rs src

# The real sources: build.rs compiles proto/, and the migrations are embedded in the binary.
COPY build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
# Forget the placeholder's build of callstore itself (file times cannot be trusted to tell the
# real sources from it), keep the dependencies'.
RUN cargo clean --release --package callstore \
    && cargo build --release --locked --bin callstore \
    && install -D -m 0755 target/release/callstore /out/callstore

# --- runtime -------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# CA certificates for TLS to PostgreSQL (sslmode=verify-full) and other servers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 callstore \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin callstore

COPY --from=builder /out/callstore /usr/local/bin/callstore

LABEL org.opencontainers.image.title="callstore" \
      org.opencontainers.image.description="System of record for the results of AI outbound phone calls, served over gRPC" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# Numeric, so Kubernetes can check runAsNonRoot without the image's /etc/passwd.
USER 10001:10001

# gRPC, webhooks (--webhook-listen), Prometheus metrics (--metrics-listen).
EXPOSE 50051 8080 9090

ENTRYPOINT ["callstore"]
CMD ["serve", "--listen", "0.0.0.0:50051", "--log-format", "json"]
