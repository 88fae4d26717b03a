# The regcache image the Helm chart (helm/regcache) runs:
#   docker build -t ghcr.io/regcache/regcache:0.1.0 .
# Build stage: the workspace's pinned dependencies (Cargo.lock), release
# profile. Final stage: the binary alone on distroless (glibc, CA
# certificates for https upstreams, no shell), as a non-root user.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p regcache \
    && install -D -m 0755 target/release/regcache /out/regcache

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/regcache /usr/local/bin/regcache
# The chart's podSecurityContext runs as this user too (distroless nonroot).
USER 65532:65532
# 5000: the registry pull API, /metrics, /healthz, /readyz, /status.json.
# 5001: the cluster port (Raft and peer streaming; members only).
EXPOSE 5000 5001
VOLUME /var/lib/regcache
WORKDIR /var/lib/regcache
ENTRYPOINT ["/usr/local/bin/regcache"]
CMD ["serve", "--data-dir", "/var/lib/regcache"]
LABEL org.opencontainers.image.title="regcache" \
      org.opencontainers.image.description="A clustered pull-through cache for container registries" \
      org.opencontainers.image.source="https://github.com/regcache/regcache" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
