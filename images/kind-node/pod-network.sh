#!/bin/bash
# The pod network of the workpool kind node image (kindnetd's job; kindnetd's own source
# is not served by the Go module proxy): run on every node by the DaemonSet
# kube-system/workpool-pod-network (default-cni.yaml, host network), it keeps
#   - /etc/cni/net.d/10-workpool.conflist: ptp + host-local IPAM over this node's
#     spec.podCIDR (each pod a veth with a /32 route, as kindnet does), portmap;
#   - a route to every other node's podCIDR via that node's InternalIP (all nodes share
#     kind's Docker network, so that is one hop);
#   - masquerading of pod traffic that leaves the pods' CIDRs (DNS upstream, the host).
# It reads the nodes with its service account (ClusterRole workpool-pod-network: list
# nodes), from the API server at CONTROL_PLANE_ENDPOINT (which kind fills in), so that it
# needs neither kube-proxy nor the pod network it is making.
set -u
conf=/etc/cni/net.d/10-workpool.conflist
self=${NODE_NAME:?NODE_NAME: the downward API spec.nodeName}
chain=WORKPOOL-POD-MASQ
sa=/var/run/secrets/kubernetes.io/serviceaccount
# kubectl with the service account's token (read afresh each time: it is rotated)
api() {
  if [ -n "${CONTROL_PLANE_ENDPOINT:-}" ]; then
    kubectl --server "https://$CONTROL_PLANE_ENDPOINT" --certificate-authority "$sa/ca.crt" \
      --token "$(cat "$sa/token")" "$@"
  else
    kubectl "$@"
  fi
}
[ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || echo 1 >/proc/sys/net/ipv4/ip_forward

write_cni_config() {
  local cidr=$1 tmp
  tmp=$(mktemp /etc/cni/net.d/.workpool.XXXXXX)
  cat >"$tmp" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "workpool-kind",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni-ipam-state",
        "ranges": [[{"subnet": "$cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  chmod 0644 "$tmp"
  mv "$tmp" "$conf"
  echo "pod-network: CNI config for $self: $cidr"
}

# Masquerade what leaves the pod CIDRs: the chain returns for every pod CIDR, then
# masquerades; rebuilt when the set of CIDRs changes.
set_masquerade() {
  local own=$1
  shift
  iptables -t nat -N "$chain" 2>/dev/null || iptables -t nat -F "$chain"
  local c
  for c in "$@"; do iptables -t nat -A "$chain" -d "$c" -j RETURN; done
  iptables -t nat -A "$chain" -j MASQUERADE
  iptables -t nat -C POSTROUTING -s "$own" -j "$chain" 2>/dev/null ||
    iptables -t nat -A POSTROUTING -s "$own" -j "$chain"
}

# Applied when the nodes change, and every minute anyway (a route or rule removed by hand
# comes back).
last_state="" rounds=0
while :; do
  rounds=$((rounds + 1))
  if nodes=$(api get nodes -o \
      jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.podCIDR}{" "}{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>/dev/null) &&
    { [ "$nodes" != "$last_state" ] || [ $((rounds % 20)) = 0 ]; }; then
    own="" cidrs=() ok=1
    while read -r name cidr ip; do
      [ -n "$cidr" ] || continue
      cidrs+=("$cidr")
      if [ "$name" = "$self" ]; then
        own=$cidr
      elif [ -n "$ip" ]; then
        if ! ip route show "$cidr" | grep -q "via $ip "; then
          ip route replace "$cidr" via "$ip" && echo "pod-network: route $cidr via $ip ($name)" || ok=0
        fi
      fi
    done <<<"$nodes"
    if [ -n "$own" ]; then
      grep -q "\"$own\"" "$conf" 2>/dev/null || write_cni_config "$own" || ok=0
      set_masquerade "$own" "${cidrs[@]}" || ok=0
      [ "$ok" = 1 ] && last_state=$nodes
    fi
  fi
  sleep 3
done
