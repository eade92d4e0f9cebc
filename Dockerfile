# openim-callback-receiver: multi-stage build, small non-root runtime image.
#   docker build -t openim-callback-receiver .
#   docker run --rm -p 10006:10006 openim-callback-receiver
#
# Base images are pinned by digest (the tag, in the comment above each FROM, is
# for people): a rebuild uses the same bytes. To move to a newer image, look the
# tag's digest up and change both together:
#   docker buildx imagetools inspect rust:1.95-slim-bookworm --format '{{json .Manifest.Digest}}'

# rust:1.95-slim-bookworm
FROM rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
WORKDIR /src
# Dependencies first, against placeholder sources, so this layer is reused
# until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
# The manifest names its benches, so they need placeholders too.
RUN mkdir -p src benches /out/data \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in hot_path allocations stats_scale; do echo 'fn main() {}' > benches/$bench.rs; done \
    && cargo build --release --locked --bin openim-callback-receiver \
    && rm -rf src
COPY src ./src
COPY config ./config
# touch: make cargo rebuild the crate itself, not reuse the placeholder.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin openim-callback-receiver

# distroless/cc: glibc and libgcc only, no shell; the nonroot tag runs as uid 65532.
# gcr.io/distroless/cc-debian12:nonroot
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
COPY --from=build /src/target/release/openim-callback-receiver /usr/local/bin/openim-callback-receiver
# A working directory the non-root user owns (mount a volume here for state).
COPY --from=build --chown=65532:65532 /out/data /data
# Inside the container the receiver must be reachable from OpenIM's container.
ENV OPENIM_CALLBACK__SERVER__LISTEN=0.0.0.0:10006
# The journal (every accepted message, until every sink has it) and the stats snapshot live in
# the /data volume: mount a named volume there, or they are gone with the container.
ENV OPENIM_CALLBACK__JOURNAL__DIR=/data/journal
ENV OPENIM_CALLBACK__STATS__SNAPSHOT_PATH=/data/stats.snapshot
# The archive (every message, kept for good, searchable at /messages): SQLite in the same volume.
ENV OPENIM_CALLBACK__SINKS__SQL__URL=sqlite:///data/archive.sqlite3
# A config file, when you mount one: read by the server and by the healthcheck alike, so the
# probe goes to the address the file sets.
#   docker run -v ./receiver.toml:/etc/openim-callback-receiver.toml:ro \
#     -e OPENIM_CALLBACK_CONFIG=/etc/openim-callback-receiver.toml openim-callback-receiver
WORKDIR /data
VOLUME /data
EXPOSE 10006
USER nonroot
# No shell or curl in the image: the binary probes its own /healthz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/openim-callback-receiver", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/openim-callback-receiver"]
