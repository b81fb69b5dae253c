# syntax=docker/dockerfile:1
# Build: the Rust toolchain image (protoc comes from the protoc-bin-vendored crate).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs diesel.toml ./
COPY proto ./proto
COPY migrations ./migrations
COPY src ./src
RUN cargo build --release --locked --bin gcdr-data \
 && strip target/release/gcdr-data

# Run: a small Debian with CA certificates and an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gcdr
COPY --from=build /src/target/release/gcdr-data /usr/local/bin/gcdr-data
USER 10001:10001
ENV GCDR_LISTEN_ADDR=0.0.0.0:50051 \
    GCDR_LOG_FORMAT=json
EXPOSE 50051
# SIGTERM: health goes NOT_SERVING, in-flight calls finish, then the process exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gcdr-data"]
CMD ["serve"]
