#!/usr/bin/env bash
# Step 0 of the kind quickstart: gets what the README's kind steps need, and prints the
# environment to run them in (for `eval`):
#
#   eval "$(scripts/kind-env.sh)"
#
#   - a Docker engine: yours when `docker info` answers, else a private one
#     (scripts/kind-docker.sh: Debian's docker.io, dockerd in its own network namespace);
#   - kind, helm and kubectl at the pinned versions (scripts/kind-versions.sh), built from
#     their Go modules into ~/.cache/workpool/kind/bin (scripts/kind-tools.sh);
#   - the node image kindest/node:<release of tests/k8s/go.mod>, built here and cached
#     (scripts/kind-node-image.sh), unless NODE_IMAGE names one to use instead;
#   - the base images of images/*.Dockerfile, made here when they cannot be pulled
#     (scripts/kind-base-images.sh);
#   - .kind/cluster.yaml: tests/kind/cluster.yaml with that node image and the API server
#     address the host can reach.
# Prints only `export` lines on stdout (PATH, DOCKER_HOST, DOCKER_BUILDKIT, KUBECONFIG, and
# WORKPOOL_KIND_ENV=1 last, so a caller can tell it all went well);
# progress goes to stderr.
set -euo pipefail
KIND_LOG_TAG=kind-env
. "$(dirname "$0")/kind-lib.sh"

"$KIND_ROOT/scripts/kind-docker.sh" up
kind_use_env

# The Go tools compile (CPU) in the background while the Debian trees of the base and node
# images download (network); the node image's script waits for the tools it needs (each
# tool is built once, under a lock). What is built already is only linked.
tools=(kind helm kubectl)
[ -n "${NODE_IMAGE:-}" ] || tools=(kind kubeadm crictl coredns local-path-provisioner "${tools[@]:1}")
[ -n "${KIND_SKIP_MONITORING:-}" ] || tools+=(prometheus-operator prometheus-config-reloader)
tools_log="$KIND_CACHE/tools.log"
mkdir -p "$KIND_CACHE"
{
  "$KIND_ROOT/scripts/kind-tools.sh" "${tools[@]}" &&
    # step 7a's `go run` of tests/kind/dashboard-schema (Grafana's dashboard types)
    (cd "$KIND_ROOT/tests/kind/dashboard-schema" && nice -n 10 go build -o /dev/null .)
} >"$tools_log" 2>&1 &
tools_pid=$!
trap 'kill "$tools_pid" 2>/dev/null || true' EXIT
"$KIND_ROOT/scripts/kind-base-images.sh"
node_image=${NODE_IMAGE:-$("$KIND_ROOT/scripts/kind-node-image.sh" | tail -1)}
wait "$tools_pid" || { tail -30 "$tools_log" >&2; kind_die "building the kind tools failed (log: $tools_log)"; }
trap - EXIT
grep -h "built " "$tools_log" >&2 || true

mkdir -p "$KIND_ROOT/.kind"
# kind's defaults (127.0.0.1, a free port); with the private engine the API server is
# published in its network namespace, at the address the host reaches it by, on a fixed
# port (kind looks for a free port on the host, where that address does not exist).
api_address=127.0.0.1 api_port=0
kind_private_engine && api_address=$KIND_NS_ADDR api_port=6443
sed -e "s#^\(  apiServerAddress:\).*#\1 $api_address#" \
  -e "s#^\(  apiServerPort:\).*#\1 $api_port#" \
  -e "s#^\(    image:\).*#\1 $node_image#" \
  -e "s#^\(name:\).*#\1 $KIND_CLUSTER#" \
  "$KIND_ROOT/tests/kind/cluster.yaml" >"$KIND_ROOT/.kind/cluster.yaml"

echo "export PATH=\"$KIND_BIN:\$PATH\""
[ -n "${DOCKER_HOST:-}" ] && echo "export DOCKER_HOST=\"$DOCKER_HOST\""
echo "export DOCKER_BUILDKIT=1"
echo "export KUBECONFIG=\"$KIND_KUBECONFIG\""
echo "export WORKPOOL_KIND_ENV=1"
