# The workpool operator: one static (musl) binary on distroless/static, uid 65532.
#
#   docker build -f images/operator.Dockerfile -t ghcr.io/workpool-dev/workpool-operator:0.1.0 .
#
# Built from the repository root (the whole Cargo workspace is the context;
# images/operator.Dockerfile.dockerignore keeps target/ and .git out of it).
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
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
 && mkdir -p /out \
 && cp "target/$target/release/workpool-operator" /out/ \
 && /out/workpool-operator --version

# distroless/static: CA certificates, /etc/passwd with nonroot (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/workpool-operator /usr/local/bin/workpool-operator
USER 65532:65532
# /metrics, /healthz, /readyz
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/workpool-operator"]
