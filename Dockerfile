# Strait in a container: a small non-root image, data on a volume.
#   docker build -t strait .
#   docker run -p 1883:1883 -v strait-data:/var/lib/strait strait
# The default config (deploy/docker/strait.hocon) is a single node; mount your own at
# /etc/strait/strait.hocon (paths in it are relative to /etc/strait). deploy/compose.yaml runs
# the two-region quick start; deploy/k8s/ a StatefulSet.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN CARGO_BUILD_JOBS=2 cargo build --release --locked --bin strait && strip target/release/strait

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/strait strait \
    && mkdir -p /var/lib/strait /etc/strait \
    && chown strait /var/lib/strait
COPY --from=build /src/target/release/strait /usr/local/bin/strait
COPY deploy/docker/strait.hocon /etc/strait/strait.hocon
USER strait
WORKDIR /etc/strait
VOLUME /var/lib/strait
# MQTT, link listener, Raft/gRPC, HTTP API
EXPOSE 1883 11883 7101 18083
ENTRYPOINT ["strait"]
CMD ["run", "--config", "/etc/strait/strait.hocon"]
