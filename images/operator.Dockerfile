# The workpool operator: one static (musl) binary on distroless/static, uid 65532.
#
#   docker build -f images/operator.Dockerfile -t ghcr.io/workpool-dev/workpool-operator:0.1.0 .
#
# Built from the repository root (the whole Cargo workspace is the context;
# images/operator.Dockerfile.dockerignore keeps target/ and .git out of it).
#
# `--build-arg BINARY=host` takes a workpool-operator built outside the image instead: the
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
 && cargo build --release --locked --target "$target" -p workpool-operator --bin workpool-operator \
 && mkdir -p /rootfs/usr/local/bin \
 && cp "target/$target/release/workpool-operator" /rootfs/usr/local/bin/ \
 && /rootfs/usr/local/bin/workpool-operator --version

FROM docker.io/library/debian:bookworm-slim AS binary-host
COPY workpool-operator /rootfs/usr/local/bin/workpool-operator
RUN bin=/rootfs/usr/local/bin/workpool-operator \
 && "$bin" --version \
 && for lib in $(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' || true); do cp -L --parents "$lib" /rootfs; done

FROM binary-${BINARY} AS binary

# distroless/static: CA certificates, /etc/passwd with nonroot (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=binary /rootfs/ /
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/workpool-operator"]
