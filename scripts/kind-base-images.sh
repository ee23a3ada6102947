#!/usr/bin/env bash
# Makes sure the base images of images/*.Dockerfile are in the Docker engine, so that the
# README's `docker build -f images/X.Dockerfile ...` lines run unchanged: each `FROM` image
# is used when present, pulled when it can be, and otherwise made here under the same
# name (no image registry is reachable on the project's machines and CI):
#
#   debian:bookworm-slim               a debootstrap minbase tree (apt sources: the
#                                      Debian archive, as in the real image)
#   rust:<V>-bookworm                  that tree with a C toolchain, plus this machine's
#                                      Rust toolchain <V> (rustup layout of the official
#                                      image: RUSTUP_HOME=/usr/local/rustup,
#                                      CARGO_HOME=/usr/local/cargo); `rustup target add`
#                                      and cargo still download from the network as they
#                                      would in the real image, trusting the CAs this
#                                      machine trusts
#   gcr.io/distroless/static-debian12:nonroot
#                                      the files distroless/static has (passwd and group
#                                      with nonroot 65532, CA certificates, tzdata,
#                                      /etc/services, /tmp, /home/nonroot), user 65532
#
# Images made here carry the label dev.workpool.kind.local-base (what they stand in for);
# one pulled from its registry is never replaced.
#
#   scripts/kind-base-images.sh        ensure every base image (prints what it did)
set -euo pipefail
KIND_LOG_TAG=kind-base-images
. "$(dirname "$0")/kind-lib.sh"
kind_use_env

label=dev.workpool.kind.local-base
# The recipes' own key: this script and the Debian release (a rebuilt base image would
# invalidate every build cache on top of it, so nothing else goes in).
recipe_key=$({ cat "$0"; echo "$DEBIAN_SUITE"; } | sha256sum | cut -c1-12)

# The FROM images of a Dockerfile, with ARG defaults substituted (stage names skipped).
from_images() {
  awk '
    /^ARG [A-Za-z_]+=/ { split(substr($0, 5), kv, "="); args[kv[1]] = kv[2] }
    /^FROM / {
      ref = $2
      if (ref ~ /^--platform/) ref = $3
      for (a in args) { gsub("\\$\\{" a "\\}", args[a], ref); gsub("\\$" a, args[a], ref) }
      print ref
    }' "$@" | sort -u
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# `import_tree TREE REF [CHANGE...]`: TREE as a one-layer image REF.
import_tree() {
  local tree=$1 ref=$2
  shift 2
  local changes=() c
  for c in "$@"; do changes+=(-c "$c"); done
  tar -C "$tree" --exclude=./.complete -c . | docker import "${changes[@]}" -c "LABEL $label=$ref" \
    -c "LABEL $label-recipe=$recipe_key" - "$ref" >/dev/null
}

# The CA certificates this machine trusts beyond Debian's own set (a TLS-inspecting egress
# proxy's, a company CA), added to TREE the Debian way (/usr/local/share/ca-certificates),
# so downloads made during image builds, which go out through this machine, are trusted
# as they are here. A machine that trusts only Debian's set adds nothing.
add_host_cas() {
  local tree=$1 host_bundle=/etc/ssl/certs/ca-certificates.crt n=0 cert
  [ -f "$host_bundle" ] && [ -f "$tree/etc/ssl/certs/ca-certificates.crt" ] || return 0
  mkdir -p "$tmp/cas" "$tree/usr/local/share/ca-certificates"
  awk -v dir="$tmp/cas" '/BEGIN CERT/{n++} n{print > (dir "/" n ".pem")} /END CERT/{close(dir "/" n ".pem")}' "$host_bundle"
  for cert in "$tmp"/cas/*.pem; do
    # In the tree's bundle already (compared without line endings)?
    if ! grep -qF "$(sed -n 2p "$cert")" "$tree/etc/ssl/certs/ca-certificates.crt"; then
      n=$((n + 1))
      cp "$cert" "$tree/usr/local/share/ca-certificates/host-$n.crt"
    fi
  done
  rm -rf "$tmp/cas"
  if [ "$n" -gt 0 ]; then
    chroot "$tree" update-ca-certificates >/dev/null
    kind_log "added $n CA certificate(s) this machine trusts to the image's trust store"
  fi
}

make_debian_slim() {
  local ref=$1 tree
  tree=$(kind_debian_tree minbase "")
  import_tree "$tree" "$ref" 'CMD ["bash"]'
}

make_rust() {
  local ref=$1 version=$2 tree stage toolchain rustc_version
  toolchain=$(rustc --print sysroot 2>/dev/null) || kind_die "no Rust toolchain here to make $ref from"
  rustc_version=$(rustc --version | awk '{print $2}')
  case $rustc_version in
  "$version" | "$version".*) ;;
  *) kind_die "$ref needs Rust $version; this machine has $rustc_version (rustup toolchain install $version)" ;;
  esac
  tree=$(kind_debian_tree rust-build "ca-certificates,curl,gcc,libc6-dev,make,pkg-config,git,xz-utils")
  stage="$tmp/rust"
  cp -a "$tree" "$stage"
  add_host_cas "$stage"
  local triple=x86_64-unknown-linux-gnu name
  triple=$(rustc -vV | awk '/^host:/{print $2}')
  name="$rustc_version-$triple"
  mkdir -p "$stage/usr/local/rustup/toolchains" "$stage/usr/local/cargo/bin"
  # The toolchain without its documentation (as rustup's minimal profile installs it).
  tar -C "$toolchain" --exclude=./share/doc --exclude=./share/html -c . |
    tar -C "$stage/usr/local/rustup/toolchains" --one-top-level="$name" -x
  install -m 0755 "$(command -v rustup)" "$stage/usr/local/cargo/bin/rustup"
  local proxy
  for proxy in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
    ln -s rustup "$stage/usr/local/cargo/bin/$proxy"
  done
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$name" >"$stage/usr/local/rustup/settings.toml"
  chmod -R a+w "$stage/usr/local/rustup" "$stage/usr/local/cargo"
  import_tree "$stage" "$ref" \
    'ENV RUSTUP_HOME=/usr/local/rustup' 'ENV CARGO_HOME=/usr/local/cargo' \
    'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "ENV RUST_VERSION=$rustc_version" 'CMD ["bash"]'
  rm -rf "$stage"
}

make_distroless_static() {
  local ref=$1 tree root="$tmp/distroless"
  tree=$(kind_debian_tree minbase "")
  mkdir -p "$root/etc/ssl/certs" "$root/usr/share" "$root/tmp" "$root/home/nonroot" "$root/root"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/home/nonroot" "$root/root"
  chown 65532:65532 "$root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n' >"$root/etc/group"
  echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
  cp "$tree/etc/services" "$tree/etc/os-release" "$root/etc/" 2>/dev/null || cp "$tree/usr/lib/os-release" "$root/etc/"
  cp -a "$tree/usr/share/zoneinfo" "$root/usr/share/"
  # ca-certificates is not in minbase: the bundle from the host (Debian's own package).
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  import_tree "$root" "$ref" 'USER 65532:65532' 'WORKDIR /home/nonroot' \
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
  rm -rf "$root"
}

for ref in $(from_images "$KIND_ROOT"/images/*.Dockerfile); do
  case $ref in *[A-Z]* | scratch) continue ;; esac # a stage name, or no image at all
  if recipe=$(docker image inspect -f "{{index .Config.Labels \"$label-recipe\"}}" "$ref" 2>/dev/null); then
    # Present: pulled (no label) or made here by this recipe; else made by an older one.
    case $recipe in "" | "<no value>" | "$recipe_key") continue ;; esac
    kind_log "$ref: made here by an older recipe, making it again"
  elif docker pull -q "$ref" >/dev/null 2>&1; then
    kind_log "$ref: pulled"
    continue
  fi
  [ "$(id -u)" = 0 ] || kind_die "$ref cannot be pulled, and making it here needs root (debootstrap)"
  kind_log "$ref: not pullable, making it here"
  case $ref in
  *library/debian:*-slim | debian:*-slim) kind_timed "$ref" make_debian_slim "$ref" ;;
  *library/rust:*-"$DEBIAN_SUITE" | rust:*-"$DEBIAN_SUITE")
    v=${ref##*:}
    kind_timed "$ref" make_rust "$ref" "${v%-"$DEBIAN_SUITE"}"
    ;;
  gcr.io/distroless/static-debian12:nonroot) kind_timed "$ref" make_distroless_static "$ref" ;;
  *) kind_die "$ref: cannot be pulled, and there is no recipe to make it here" ;;
  esac
done
