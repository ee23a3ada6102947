#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: a Rust toolchain with rustfmt and
# clippy, redis-server (the tests start their own on a free loopback port), kubectl (the
# conformance tests drive the API double with the real client) and python3.
set -euo pipefail

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# Debian's kubectl package is old (1.20) but real; images that ship a newer one keep it.
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-test-deps: installing ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-test-deps: cargo is missing; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "install-test-deps: redis-server $(redis-server --version | awk '{print $3}'), \
kubectl $(kubectl version --client 2>/dev/null | awk 'NR==1{print $3}'), $(cargo --version)"
