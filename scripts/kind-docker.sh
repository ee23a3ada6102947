#!/usr/bin/env bash
# A Docker engine for kind: yours when one answers, else a private one started here.
#
#   scripts/kind-docker.sh up     use the engine `docker info` reaches; when none does (and we
#                                 are root on Linux), install Debian's docker.io if missing
#                                 and start a private dockerd (below)
#   scripts/kind-docker.sh down   stop the private dockerd (its data stays cached)
#   scripts/kind-docker.sh status say which engine the kind scripts use
#
# The private engine, for machines without one (this project's VMs and CI):
# - dockerd runs in a network namespace of its own ($KIND_NETNS), so its bridges and
#   iptables rules never touch the host's; a veth pair joins it to the host (the host
#   reaches published ports, such as kind's API server, at $KIND_NS_ADDR) and the host
#   masquerades its traffic out (image builds fetch crates and Debian packages);
# - its data (images, build cache) is kept in $KIND_CACHE/docker, so node images and
#   build caches survive; socket and pid file are in $KIND_RUN;
# - its default runtime is scripts/kind-runc-wrapper.sh: runc minus the capabilities
#   this VM's bounding set lacks (else `docker run --privileged`, which kind needs, fails).
set -euo pipefail
KIND_LOG_TAG=kind-docker
. "$(dirname "$0")/kind-lib.sh"

sock="$KIND_RUN/docker.sock"
pidfile="$KIND_RUN/docker.pid"
log="$KIND_CACHE/dockerd.log"

private_up() { [ -S "$sock" ] && DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1; }

# The Docker CLI that matches the private engine: Debian's (20.10) speaks its API and runs
# its embedded BuildKit; a newer CLI earlier on PATH may need a buildx plugin for that.
link_debian_cli() {
  mkdir -p "$KIND_BIN"
  [ -x /usr/bin/docker ] && ln -sfn /usr/bin/docker "$KIND_BIN/docker"
  return 0
}

# The iptables rule RULE... in TABLE, added once (tagged, so `down` can find it).
host_rule() {
  local table=$1
  shift
  iptables -t "$table" -C "$@" -m comment --comment "$KIND_NETNS" 2>/dev/null ||
    iptables -t "$table" -A "$@" -m comment --comment "$KIND_NETNS"
}

netns_up() {
  ip netns list | grep -qw "$KIND_NETNS" || ip netns add "$KIND_NETNS"
  ip -n "$KIND_NETNS" link set lo up
  if ! ip link show "$KIND_VETH_HOST" >/dev/null 2>&1; then
    ip link add "$KIND_VETH_HOST" type veth peer name "$KIND_VETH_NS" netns "$KIND_NETNS"
    ip addr add "$KIND_HOST_ADDR/30" dev "$KIND_VETH_HOST"
    ip -n "$KIND_NETNS" addr add "$KIND_NS_ADDR/30" dev "$KIND_VETH_NS"
  fi
  ip link set "$KIND_VETH_HOST" up
  ip -n "$KIND_NETNS" link set "$KIND_VETH_NS" up
  ip -n "$KIND_NETNS" route replace default via "$KIND_HOST_ADDR"
  # Out through the host: forwarding on, the namespace's traffic masqueraded, and
  # accepted by FORWARD whatever its policy.
  sysctl -qw net.ipv4.ip_forward=1
  host_rule nat POSTROUTING -s "$KIND_NET_PREFIX.0/30" ! -o "$KIND_VETH_HOST" -j MASQUERADE
  host_rule filter FORWARD -i "$KIND_VETH_HOST" -j ACCEPT
  host_rule filter FORWARD -o "$KIND_VETH_HOST" -j ACCEPT
}

install_engine() {
  local need=()
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  [ -x /usr/bin/docker ] || need+=(docker.io)
  command -v jq >/dev/null 2>&1 || need+=(jq)
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  [ ${#need[@]} -eq 0 ] && return 0
  kind_log "installing ${need[*]} (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

start_private() {
  [ "$(uname -s)" = Linux ] || kind_die "no Docker engine answers (docker info failed): start Docker Desktop or your engine"
  [ "$(id -u)" = 0 ] || kind_die "no Docker engine answers (docker info failed), and starting one here needs root: start your engine, or run as root"
  install_engine
  link_debian_cli
  mkdir -p "$KIND_RUN" "$KIND_CACHE/docker" "$KIND_BIN"
  install -m 0755 "$KIND_ROOT/scripts/kind-runc-wrapper.sh" "$KIND_BIN/workpool-kind-runc"
  netns_up
  # A stale pid file of a dockerd that is gone would stop the new one from starting.
  if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then rm -f "$pidfile"; fi
  kind_log "starting dockerd in network namespace $KIND_NETNS (data in $KIND_CACHE/docker, log $log)"
  # setsid: the engine outlives this script and the terminal that ran it.
  WORKPOOL_KIND_REAL_RUNC=$(command -v runc) setsid nsenter --net="/run/netns/$KIND_NETNS" \
    dockerd --data-root "$KIND_CACHE/docker" --exec-root "$KIND_RUN/exec" \
    --pidfile "$pidfile" -H "unix://$sock" --storage-driver overlay2 \
    --add-runtime "workpool-kind-runc=$KIND_BIN/workpool-kind-runc" \
    --default-runtime workpool-kind-runc \
    </dev/null >>"$log" 2>&1 &
  local i
  for i in $(seq 1 60); do
    private_up && { kind_log "dockerd up after ${i}s"; return 0; }
    sleep 1
  done
  tail -30 "$log" >&2
  kind_die "dockerd did not answer within 60s (log: $log)"
}

stop_private() {
  [ -f "$pidfile" ] || { kind_log "no private dockerd running"; return 0; }
  local pid i
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { kind_log "dockerd $pid stopped"; rm -f "$pidfile"; return 0; }
    sleep 1
  done
  kind_die "dockerd $pid still running after 60s"
}

case "${1:-up}" in
up)
  if private_up; then
    link_debian_cli
    kind_log "using the private engine ($sock)"
  elif [ -z "${WORKPOOL_KIND_PRIVATE_DOCKER:-}" ] && docker info >/dev/null 2>&1; then
    kind_log "using your Docker engine ($(docker context show 2>/dev/null || echo "${DOCKER_HOST:-default}"))"
  else
    start_private
  fi
  ;;
down) stop_private ;;
status)
  if private_up; then echo "private engine: unix://$sock (network namespace $KIND_NETNS)"
  elif docker info >/dev/null 2>&1; then echo "your engine: ${DOCKER_HOST:-default}"
  else echo "no engine"; exit 1; fi
  ;;
*) kind_die "usage: kind-docker.sh up|down|status" ;;
esac
