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
#
# `--build-arg BINARY=host` takes a workpool-worker built outside the image instead: the
# context is then a directory holding that binary (CI's kind step passes the build `make
# test` made, see scripts/kind-quickstart.sh, so the workspace is not compiled twice). A
# binary linked against glibc gets the libraries `ldd` lists, from Debian bookworm (built
# on a newer glibc it fails its --version run here).
ARG RUST_VERSION=1.95
ARG BINARY=source

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS binary-source
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" -p workpool-worker --bin workpool-worker \
 && mkdir -p /rootfs/usr/local/bin \
 && cp "target/$target/release/workpool-worker" /rootfs/usr/local/bin/ \
 && /rootfs/usr/local/bin/workpool-worker --version

FROM docker.io/library/debian:bookworm-slim AS binary-host
COPY workpool-worker /rootfs/usr/local/bin/workpool-worker
RUN bin=/rootfs/usr/local/bin/workpool-worker \
 && "$bin" --version \
 && for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do cp -L --parents "$lib" /rootfs; done

FROM binary-${BINARY} AS binary

# busybox and the applets handler scripts commonly need, as symlinks in /usr/local/bin,
# and /bin/sh
FROM docker.io/library/debian:bookworm-slim AS busybox
RUN apt-get update \
 && apt-get install -y --no-install-recommends busybox-static \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /rootfs/usr/local/bin /rootfs/bin /work \
 && cp /bin/busybox /rootfs/usr/local/bin/busybox \
 && for applet in sh ash cat cp echo env grep head ls mkdir mv printf rm sed sleep sort tail tee test tr wc xargs; do \
      ln -s busybox "/rootfs/usr/local/bin/$applet"; \
    done \
 && ln -s /usr/local/bin/busybox /rootfs/bin/sh \
 && /rootfs/usr/local/bin/busybox --help >/dev/null

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=busybox /rootfs/ /
COPY --from=binary /rootfs/ /
# a writable-by-the-user working directory (mount an emptyDir here with a read-only root)
COPY --from=busybox --chown=65532:65532 /work /work
WORKDIR /work
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/workpool-worker"]
