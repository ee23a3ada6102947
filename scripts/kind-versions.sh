# The versions of everything the kind path builds or installs, in one place (sourced by
# scripts/kind-*.sh and tests/kind/run.sh). Go tools are built from these module
# versions through the Go module proxy; nothing prebuilt is downloaded.
#
# Kubernetes itself is not pinned here: the node image carries the release the test
# cluster is built from (tests/k8s/go.mod, built by scripts/k8s-bin.sh), so kind and the
# local test cluster never differ by version.

KIND_VERSION=v0.33.0          # sigs.k8s.io/kind (the CLI, and its node base files)
HELM_VERSION=v4.3.2           # helm.sh/helm/v4 (the real Helm CLI)
CRI_TOOLS_VERSION=v1.37.0     # sigs.k8s.io/cri-tools (crictl inside the node)
PROMETHEUS_OPERATOR_VERSION=v0.85.0   # github.com/prometheus-operator/prometheus-operator
LOCAL_PATH_PROVISIONER_VERSION=v0.0.30 # github.com/rancher/local-path-provisioner (kind's `standard` StorageClass)
# The Debian release of the node image's userspace (systemd, containerd, runc, CNI plugins)
# and of the base images made locally when they cannot be pulled.
DEBIAN_SUITE=bookworm
