#!/usr/bin/env bash
# Builds the kind node image for the Kubernetes release of the test cluster
# (tests/k8s/go.mod) without pulling anything, and caches it keyed by its inputs: it is
# rebuilt only when one of them changes.
#
#   scripts/kind-node-image.sh          build when missing or stale; prints the image reference
#   scripts/kind-node-image.sh --key    print the input key only (builds the inputs)
#   scripts/kind-node-image.sh --debian make the Debian trees only (network, no compiling)
#
# kind's own `kind build node-image` starts from images pulled from registries; here:
#   - userspace: a Debian ($DEBIAN_SUITE) tree made by debootstrap from the Debian archive
#     (systemd, containerd, runc, CNI plugins, iptables), plus kind's base files (the
#     entrypoint, systemd units, containerd config) from the kind module at $KIND_VERSION;
#   - Kubernetes: kubelet, kubectl and the control plane from scripts/k8s-bin.sh, kubeadm,
#     crictl and CoreDNS built from their modules (scripts/kind-tools.sh);
#   - the images kubeadm asks for (`kubeadm config images list`) built from those static
#     binaries (kube-proxy on a slim Debian tree with iptables), pause compiled from the
#     Kubernetes module's pause.c, all preloaded into the node's containerd;
#   - kind's `standard` StorageClass: local-path-provisioner built from its module, with
#     its own deploy manifest (as kind's node images have it);
#   - the pod network: images/kind-node/pod-network.sh in a DaemonSet (per-node podCIDR
#     config + routes, what kindnetd does; kindnetd's source is not served here).
# Changes from kind's base for this kind of host: containerd clamps oom_score_adj (no
# CAP_SYS_RESOURCE in the VM's bounding set), the kubelet runs on cgroup v1
# (--fail-cgroupv1=false).
#
# Needs root (debootstrap, chroot), debootstrap, gcc with a static libc, Go, a Docker engine.
set -euo pipefail
KIND_LOG_TAG=kind-node-image
. "$(dirname "$0")/kind-lib.sh"
kind_use_env

work="$KIND_CACHE/node"
mkdir -p "$work"
k8s_version=$(kind_k8s_version)
image="kindest/node:$k8s_version"
key_label=dev.workpool.kind.node-key

[ "$(id -u)" = 0 ] || kind_die "building the node image needs root (debootstrap, chroot); or set NODE_IMAGE to a kind node image for Kubernetes $k8s_version"

# The packages of the two Debian trees (a change of either list makes new trees).
node_packages=systemd,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins,socat
slim_packages=iptables,nftables,conntrack,ca-certificates,iproute2,busybox-static

node_tree=$(kind_debian_tree node "$node_packages")
slim_tree=$(kind_debian_tree slim "$slim_packages")
if [ "${1:-}" = "--debian" ]; then exit 0; fi

# ---------------------------------------------------------------------------- inputs
k8s_bin=$("$KIND_ROOT/scripts/k8s-bin.sh" | tail -1)
"$KIND_ROOT/scripts/kind-tools.sh" kind kubeadm crictl coredns local-path-provisioner
tool() { readlink -f "$KIND_BIN/$1"; }

kind_files=$(GOFLAGS=-mod=mod GOPROXY=$(go env GOPROXY | cut -d, -f1) \
  go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)/images/base/files
k8s_src=$(cd "$KIND_ROOT/tests/k8s" && go mod download -json "k8s.io/kubernetes@$k8s_version" | jq -r .Dir)
local_path_src=$(cd "$KIND_CACHE/src/local-path-provisioner-$LOCAL_PATH_PROVISIONER_VERSION" &&
  go list -m -f '{{.Dir}}' github.com/rancher/local-path-provisioner)
[ -d "$kind_files" ] && [ -f "$k8s_src/build/pause/linux/pause.c" ] && [ -f "$local_path_src/deploy/local-path-storage.yaml" ] ||
  kind_die "kind base files, pause.c or local-path-storage.yaml not found in the module cache"

# pause, compiled as a static binary at the version kubeadm pins.
pause_version=$("$(tool kubeadm)" config images list --kubernetes-version "$k8s_version" 2>/dev/null |
  awk -F: '/\/pause:/{print $2}')
[ -n "$pause_version" ] || kind_die "kubeadm config images list names no pause image"
pause_bin="$work/pause-$pause_version-$(sha256sum <"$k8s_src/build/pause/linux/pause.c" | cut -c1-12)"
if [ ! -x "$pause_bin" ]; then
  command -v gcc >/dev/null 2>&1 || kind_die "gcc is needed to compile pause (apt-get install gcc libc6-dev)"
  gcc -Os -Wall -Werror -static -DVERSION="v$pause_version" -o "$pause_bin.partial" "$k8s_src/build/pause/linux/pause.c"
  strip "$pause_bin.partial"
  mv "$pause_bin.partial" "$pause_bin"
fi

binaries=("$k8s_bin/kubelet" "$k8s_bin/kubectl" "$k8s_bin/kube-apiserver" "$k8s_bin/kube-controller-manager"
  "$k8s_bin/kube-scheduler" "$k8s_bin/kube-proxy" "$k8s_bin/etcd"
  "$(tool kubeadm)" "$(tool crictl)" "$(tool coredns)" "$(tool local-path-provisioner)" "$pause_bin")
key=$({
  cat "$0" "$KIND_ROOT/scripts/kind-versions.sh" "$KIND_ROOT"/images/kind-node/*
  echo "$node_packages $slim_packages $DEBIAN_SUITE"
  sha256sum "${binaries[@]}" | awk '{print $1}'
  (cd "$kind_files" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
} | sha256sum | cut -c1-16)

if [ "${1:-}" = "--key" ]; then echo "$key"; exit 0; fi
if [ "$(docker image inspect -f "{{index .Config.Labels \"$key_label\"}}" "$image" 2>/dev/null)" = "$key" ]; then
  kind_log "$image is current (key $key)"
  echo "$image"
  exit 0
fi
start=$(date +%s)
kind_log "building $image (key $key)"

# ------------------------------------------------------ control-plane images
ctx="$work/images"
rm -rf "$ctx"
mkdir -p "$ctx"

# A base for the static binaries: users and groups (root, nobody, nonroot 65532), CA
# certificates, /tmp; the binaries run as root, as kubeadm's static pods expect.
mkdir -p "$ctx/static/rootfs/etc/ssl/certs" "$ctx/static/rootfs/tmp" "$ctx/static/rootfs/usr/local/bin"
chmod 1777 "$ctx/static/rootfs/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  >"$ctx/static/rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$ctx/static/rootfs/etc/group"
echo 'hosts: files dns' >"$ctx/static/rootfs/etc/nsswitch.conf"
cp "$node_tree/etc/ssl/certs/ca-certificates.crt" "$ctx/static/rootfs/etc/ssl/certs/"
printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin\nUSER 0:0\n' >"$ctx/static/Dockerfile"
docker build -q -t "workpool.local/kind-static:$key" "$ctx/static" >/dev/null

# The slim tree, for kube-proxy (iptables, conntrack).
tar -C "$slim_tree" --exclude=./.complete -c . |
  docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "workpool.local/kind-slim:$key" >/dev/null

# `cp_image REF BINARY BASE [ENTRYPOINT-JSON] [DEST]`
cp_image() {
  local ref=$1 bin=$2 base=$3 entrypoint=${4:-} dest=${5:-/usr/local/bin/$(basename "$2")}
  local dir
  dir="$ctx/$(echo "$ref" | tr '/:' '__')"
  mkdir -p "$dir"
  cp "$bin" "$dir/"
  {
    echo "FROM $base"
    echo "COPY $(basename "$bin") $dest"
    [ -z "$entrypoint" ] || echo "ENTRYPOINT $entrypoint"
  } >"$dir/Dockerfile"
  docker build -q -t "$ref" "$dir" >/dev/null
  kind_log "image $ref"
}
images=$("$(tool kubeadm)" config images list --kubernetes-version "$k8s_version")
preload=()
for ref in $images; do
  name=${ref%:*}
  name=${name##*/}
  case $name in
  kube-apiserver | kube-controller-manager | kube-scheduler)
    cp_image "$ref" "$k8s_bin/$name" "workpool.local/kind-static:$key" "[\"/usr/local/bin/$name\"]" ;;
  kube-proxy) cp_image "$ref" "$k8s_bin/kube-proxy" "workpool.local/kind-slim:$key" '["/usr/local/bin/kube-proxy"]' ;;
  etcd) cp_image "$ref" "$k8s_bin/etcd" "workpool.local/kind-static:$key" ;;
  coredns) cp_image "$ref" "$(tool coredns)" "workpool.local/kind-static:$key" '["/coredns"]' /coredns ;;
  pause) cp_image "$ref" "$pause_bin" scratch '["/pause"]' /pause ;;
  *) kind_die "kubeadm asks for an image this script does not build: $ref" ;;
  esac
  preload+=("$ref")
  [ "$name" = pause ] && pause_ref=$ref
done

# kind's default StorageClass `standard`: local-path-provisioner (PVs on the node the pod
# runs on, with node affinity) and its helper pod's image (busybox: sh, mkdir, rm).
provisioner_ref="docker.io/rancher/local-path-provisioner:$LOCAL_PATH_PROVISIONER_VERSION"
cp_image "$provisioner_ref" "$(tool local-path-provisioner)" "workpool.local/kind-static:$key"
helper_ref="workpool.local/kind-busybox:$key"
mkdir -p "$ctx/busybox/rootfs/bin" "$ctx/busybox/rootfs/tmp"
cp "$slim_tree/bin/busybox" "$ctx/busybox/rootfs/bin/"
for applet in sh mkdir rm rmdir chmod chown ls cat echo test du; do ln -s busybox "$ctx/busybox/rootfs/bin/$applet"; done
printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n' >"$ctx/busybox/Dockerfile"
docker build -q -t "$helper_ref" "$ctx/busybox" >/dev/null
preload+=("$provisioner_ref" "$helper_ref")

pod_network_ref="workpool.local/kind-pod-network:$key"
mkdir -p "$ctx/pod-network"
cp "$k8s_bin/kubectl" "$KIND_ROOT/images/kind-node/pod-network.sh" "$ctx/pod-network/"
printf 'FROM workpool.local/kind-slim:%s\nCOPY kubectl /usr/local/bin/kubectl\nCOPY pod-network.sh /usr/local/bin/workpool-pod-network\n' "$key" \
  >"$ctx/pod-network/Dockerfile"
docker build -q -t "$pod_network_ref" "$ctx/pod-network" >/dev/null
preload+=("$pod_network_ref")

# --------------------------------------------------------------- the node tree
stage="$work/stage"
rm -rf "$stage"
cp -a "$node_tree" "$stage"
rm -f "$stage/.complete"

# kind's base files, with the modes kind's Dockerfile gives them.
install -m 0755 "$kind_files"/usr/local/bin/* "$stage/usr/local/bin/"
mkdir -p "$stage/kind/bin" "$stage/etc/containerd" "$stage/etc/systemd/system/kubelet.service.d" "$stage/LICENSES"
install -m 0644 "$kind_files/kind/README.txt" "$stage/kind/"
install -m 0755 "$kind_files"/kind/bin/* "$stage/kind/bin/"
install -m 0644 "$kind_files"/LICENSES/* "$stage/LICENSES/"
install -m 0644 "$kind_files/etc/crictl.yaml" "$stage/etc/"
install -m 0644 "$kind_files/etc/containerd/config.toml" "$stage/etc/containerd/"
install -m 0644 "$kind_files/etc/default/kubelet" "$stage/etc/default/"
install -m 0644 "$kind_files"/etc/sysctl.d/* "$stage/etc/sysctl.d/"
install -m 0644 "$kind_files"/etc/systemd/system/*.service "$kind_files"/etc/systemd/system/*.slice "$stage/etc/systemd/system/"
install -m 0644 "$kind_files"/etc/systemd/system/kubelet.service.d/* "$stage/etc/systemd/system/kubelet.service.d/"

# systemd as kind's Dockerfile trims it.
find "$stage/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$stage"/lib/systemd/system/multi-user.target.wants/* "$stage"/etc/systemd/system/*.wants/* \
  "$stage"/lib/systemd/system/local-fs.target.wants/* "$stage"/lib/systemd/system/sockets.target.wants/*udev* \
  "$stage"/lib/systemd/system/sockets.target.wants/*initctl* "$stage"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$stage/etc/systemd/journald.conf"
ln -sfn /usr/lib/systemd/systemd "$stage/sbin/init"

# containerd, runc and the CNI plugins from Debian, where kind's units and config look.
for b in containerd ctr containerd-shim-runc-v2; do ln -sfn "/usr/bin/$b" "$stage/usr/local/bin/$b"; done
mkdir -p "$stage/usr/local/sbin" "$stage/opt/cni/bin"
ln -sfn /usr/sbin/runc "$stage/usr/local/sbin/runc"
cp -a "$stage"/usr/lib/cni/. "$stage/opt/cni/bin/"
chroot "$stage" ctr oci spec |
  jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
  jq 'del(.process.rlimits)' >"$stage/etc/containerd/cri-base.json"
# The sandbox image kubeadm pins; oom_score_adj clamped to containerd's own (runc cannot
# lower it without CAP_SYS_RESOURCE, and its init dies: "can't get final child's PID").
sed -i -e "s#sandbox_image = .*#sandbox_image = \"$pause_ref\"#" \
  -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$stage/etc/containerd/config.toml"

# Kubernetes.
install -m 0755 "$k8s_bin/kubelet" "$k8s_bin/kubectl" "$(tool kubeadm)" "$stage/usr/bin/"
install -m 0755 "$(tool crictl)" "$stage/usr/local/bin/"
echo -n "$k8s_version" >"$stage/kind/version"
mkdir -p "$stage/etc/kubernetes/manifests"
echo 'KUBELET_EXTRA_ARGS=--runtime-cgroups=/system.slice/containerd.service --fail-cgroupv1=false' >"$stage/etc/default/kubelet"

# The pod network: images/kind-node/pod-network.sh in a DaemonSet (default-cni.yaml), its
# image the slim tree with kubectl and the script.
mkdir -p "$stage/etc/cni/net.d" "$stage/kind/manifests"
sed "s#image: POD_NETWORK_IMAGE#image: $pod_network_ref#" "$KIND_ROOT/images/kind-node/default-cni.yaml" \
  >"$stage/kind/manifests/default-cni.yaml"

# The storage manifest kind applies (/kind/manifests/default-storage.yaml): the
# provisioner's own deploy manifest, its StorageClass named `standard` and made the
# default as kind's is, the volumes under /var/local-path-provisioner, our images.
sed -e "s#image: rancher/local-path-provisioner:.*#image: $provisioner_ref#" \
  -e "s#image: busybox\$#image: $helper_ref#" \
  -e 's#/opt/local-path-provisioner#/var/local-path-provisioner#' \
  -e 's#^  name: local-path$#  name: standard\n  annotations:\n    storageclass.kubernetes.io/is-default-class: "true"#' \
  "$local_path_src/deploy/local-path-storage.yaml" >"$stage/kind/manifests/default-storage.yaml"
grep -q "name: standard" "$stage/kind/manifests/default-storage.yaml" && grep -q "$helper_ref" "$stage/kind/manifests/default-storage.yaml" ||
  kind_die "local-path-storage.yaml did not take the edits (its layout changed?)"

chroot "$stage" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
chroot "$stage" systemctl mask systemd-binfmt.service >/dev/null 2>&1

# Preload the images into the node's containerd (content and image records; the kubelet's
# containerd unpacks them on first use): the node's own containerd, run in the tree with
# only what an import needs, in a mount namespace that takes its mounts away on exit.
saved="$work/images.tar"
docker save "${preload[@]}" >"$saved"
unshare --mount --propagation private --fork bash -euc '
  stage=$1 saved=$2
  mount -t proc proc "$stage/proc"
  mount -t tmpfs tmpfs "$stage/run"
  mount --rbind /dev "$stage/dev"
  mkdir -p "$stage/run/preload"
  printf "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n" >"$stage/run/preload/config.toml"
  chroot "$stage" containerd --config /run/preload/config.toml --address /run/preload/sock \
    --root /var/lib/containerd --state /run/preload/state >"$stage/run/preload/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do chroot "$stage" ctr -a /run/preload/sock version >/dev/null 2>&1 && break; sleep 0.2; done
  chroot "$stage" ctr -a /run/preload/sock -n k8s.io images import --all-platforms --no-unpack --digests - <"$saved" >/dev/null
  chroot "$stage" ctr -a /run/preload/sock -n k8s.io images list -q
  kill "$pid"; wait "$pid" || true
' preload "$stage" "$saved" | sed "s/^/[preloaded] /" >&2
rm -f "$saved"

# ------------------------------------------------------------------ the image
tar -C "$stage" -c . | docker import \
  -c 'ENV container=docker' \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
  - "workpool.local/kind-node-rootfs:$key" >/dev/null
# STOPSIGNAL (systemd's) and the key, in a build: `docker import -c` cannot set STOPSIGNAL.
printf 'FROM workpool.local/kind-node-rootfs:%s\nSTOPSIGNAL SIGRTMIN+3\nLABEL %s=%s\n' "$key" "$key_label" "$key" |
  docker build -q -t "$image" - >/dev/null
docker rmi "workpool.local/kind-node-rootfs:$key" >/dev/null 2>&1 || true
rm -rf "$stage" "$ctx"
kind_log "built $image in $(($(date +%s) - start))s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f GB", $1/1e9}'))"
echo "$image"
