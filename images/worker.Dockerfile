# The workpool worker: a static (musl) workpool-worker plus a static busybox for /bin/sh,
# on distroless/static, uid 65532.
#
#   docker build -f images/worker.Dockerfile -t ghcr.io/workpool-dev/workpool-worker:0.1.0 .
#
# This image is the base for handler images (see examples/handlers/ and docs/worker.md):
#   - a handler that is a static binary or a shell script: FROM this image, COPY it in,
#     and run `workpool-worker run --exec /app/handler` (or WORKPOOL_EXEC for sh -c);
#   - a handler that needs a runtime (Python, Node, a JVM): FROM that runtime and copy the
#     worker in, it is static and runs on any Linux base:
#       COPY --from=ghcr.io/workpool-dev/workpool-worker:0.1.0 /usr/local/bin/workpool-worker /usr/local/bin/
# /bin/sh is busybox: `--exec-shell`/WORKPOOL_EXEC need it, and so does the chart's
# `helm test` (sh, sleep, tr, sed).
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools busybox-static \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" -p workpool-worker --bin workpool-worker \
 && mkdir -p /rootfs/usr/local/bin /rootfs/bin \
 && cp "target/$target/release/workpool-worker" /rootfs/usr/local/bin/ \
 && /rootfs/usr/local/bin/workpool-worker --version
# busybox and the applets handler scripts commonly need, as symlinks in /usr/local/bin,
# and /bin/sh
RUN cp /bin/busybox /rootfs/usr/local/bin/busybox \
 && for applet in sh ash cat cp echo env grep head ls mkdir mv printf rm sed sleep sort tail tee test tr wc xargs; do \
      ln -s busybox "/rootfs/usr/local/bin/$applet"; \
    done \
 && ln -s /usr/local/bin/busybox /rootfs/bin/sh \
 && /rootfs/usr/local/bin/busybox --help >/dev/null \
 && mkdir -p /work

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /rootfs/ /
# a writable-by-the-user working directory (mount an emptyDir here with a read-only root)
COPY --from=build --chown=65532:65532 /work /work
WORKDIR /work
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/workpool-worker"]
