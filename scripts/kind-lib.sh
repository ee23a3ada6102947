# Shared by scripts/kind-*.sh and tests/kind/run.sh (sourced, not run): where the kind path
# keeps its state, logging, and the environment that points docker/kind/helm/kubectl at
# the engine and cluster these scripts manage.
#
# State lives outside the git tree, beside scripts/k8s-bin.sh's cache:
#   $KIND_CACHE/bin        kind, helm, crictl, kubeadm, ... (built from their Go modules)
#   $KIND_CACHE/docker     the private Docker engine's data (images, build cache), when one
#                          is started here (scripts/kind-docker.sh)
#   $KIND_CACHE/node       node image inputs (debootstrap trees, pause, the key)
# Runtime state of a private engine (socket, pid, exec root) is under $KIND_RUN.

KIND_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/kind-versions.sh
. "$KIND_ROOT/scripts/kind-versions.sh"

KIND_CACHE=${WORKPOOL_KIND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workpool/kind}
KIND_RUN=${WORKPOOL_KIND_RUN:-/run/workpool-kind}
KIND_BIN="$KIND_CACHE/bin"
# The private engine's network namespace and the veth pair that joins it to the host
# (the host reaches the kind API server at $KIND_NS_ADDR; builds reach package
# registries through the host, masqueraded).
KIND_NETNS=${WORKPOOL_KIND_NETNS:-workpool-kind}
KIND_NET_PREFIX=${WORKPOOL_KIND_NET:-10.213.0}     # a /30: .1 host side, .2 namespace side
KIND_HOST_ADDR="$KIND_NET_PREFIX.1"
KIND_NS_ADDR="$KIND_NET_PREFIX.2"
KIND_VETH_HOST=wpkind0
KIND_VETH_NS=wpkind1

# The cluster `make kind` creates and the names the README uses.
KIND_CLUSTER=${KIND_CLUSTER:-workpool}
KIND_KUBECONFIG="$KIND_ROOT/.kind/kubeconfig"

kind_log() { echo "[$(date +%H:%M:%S)] ${KIND_LOG_TAG:-kind}: $*" >&2; }
kind_die() { echo "${KIND_LOG_TAG:-kind}: $*" >&2; exit 1; }

# `kind_timed NAME CMD...`: run CMD, log how long it took (the figures in the README).
kind_timed() {
  local name=$1 start rc=0
  shift
  start=$(date +%s)
  "$@" || rc=$?
  if [ "$rc" = 0 ]; then kind_log "$name: $(($(date +%s) - start))s"
  else kind_log "$name: failed (exit $rc) after $(($(date +%s) - start))s"; fi
  return "$rc"
}

# `kind_quiet LOG CMD...`: run CMD with its output in LOG, shown (the end) when it fails.
kind_quiet() {
  local log=$1 rc=0
  shift
  "$@" >"$log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || { tail -25 "$log" >&2; kind_log "failed (exit $rc): $* (log: $log)"; }
  return "$rc"
}

# The Kubernetes release of the node image: the one the test cluster is built from.
kind_k8s_version() {
  awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3; exit} $1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' \
    "$KIND_ROOT/tests/k8s/go.mod"
}

# The chart's appVersion: the tag of our three images.
kind_app_version() {
  awk -F'"' '/^appVersion:/{print $2}' "$KIND_ROOT/charts/workpool/Chart.yaml"
}

# Point docker, kind, helm and kubectl at what kind-docker.sh started (when it did) and at
# the tools built here. Prints nothing; idempotent.
kind_use_env() {
  case ":$PATH:" in *":$KIND_BIN:"*) ;; *) export PATH="$KIND_BIN:$PATH" ;; esac
  if [ -S "$KIND_RUN/docker.sock" ] && DOCKER_HOST="unix://$KIND_RUN/docker.sock" docker info >/dev/null 2>&1; then
    export DOCKER_HOST="unix://$KIND_RUN/docker.sock"
  fi
  # RUN --mount=type=cache in images/*.Dockerfile needs BuildKit (the default from Docker
  # 23 on; Docker 20.10 needs this).
  export DOCKER_BUILDKIT=1
}

# True when the engine in use is the private one scripts/kind-docker.sh started.
kind_private_engine() { [ "${DOCKER_HOST:-}" = "unix://$KIND_RUN/docker.sock" ]; }

# `kind_debian_tree NAME PACKAGES`: a Debian $DEBIAN_SUITE tree made by debootstrap
# (minbase plus PACKAGES, comma-separated) from the host's Debian mirror, cached in
# $KIND_CACHE/debian by suite and package list; prints its directory. Needs root.
kind_debian_tree() {
  local name=$1 packages=$2 dir mirror
  dir="$KIND_CACHE/debian/$name-$(echo "$DEBIAN_SUITE $packages" | sha256sum | cut -c1-12)"
  if [ ! -f "$dir/.complete" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
      kind_log "installing debootstrap (Debian)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    mirror=$(grep -hoE '(^deb|^URIs:) +https?://[^ ]*/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
      grep -oE 'https?://[^ ]+' | head -1) || true
    mirror=${mirror:-http://deb.debian.org/debian}
    rm -rf "$dir"
    mkdir -p "$KIND_CACHE/debian/debs"
    kind_log "debootstrap $DEBIAN_SUITE ($name) from $mirror"
    kind_timed "debootstrap $name" kind_quiet "$KIND_CACHE/debian/$name.log" \
      nice -n 10 debootstrap --variant=minbase --cache-dir="$KIND_CACHE/debian/debs" \
      ${packages:+--include="$packages"} "$DEBIAN_SUITE" "$dir" "$mirror" || return 1
    rm -rf "$dir"/var/lib/apt/lists/*_*
    touch "$dir/.complete"
  fi
  echo "$dir"
}
