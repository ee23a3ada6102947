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
"$KIND_ROOT/scripts/kind-tools.sh" kind helm kubectl
node_image=${NODE_IMAGE:-$("$KIND_ROOT/scripts/kind-node-image.sh" | tail -1)}
"$KIND_ROOT/scripts/kind-base-images.sh"

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
