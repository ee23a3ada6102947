#!/usr/bin/env bash
# The OCI runtime of the private Docker engine (scripts/kind-docker.sh registers a copy as
# dockerd's default runtime): runc, after removing from the container's capability sets
# every capability this machine's own bounding set lacks.
#
# Why: `docker run --privileged` (kind's node containers) asks runc for all capabilities.
# On a VM whose bounding set lacks one (here CAP_SYS_RESOURCE) runc fails with "unable to
# apply caps: operation not permitted", since no process can gain a capability outside its
# bounding set. Dropping the ones that cannot be had gives the container exactly what the
# host can give. Nothing else in the spec changes; with a full bounding set this is runc.
set -euo pipefail
real_runc=${WORKPOOL_KIND_REAL_RUNC:-$(command -v runc)}

# Capability names by number (linux/capability.h), as they appear in OCI specs.
cap_names=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP
  LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER
  SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE
  SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP
  MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF
  CHECKPOINT_RESTORE)

unavailable_caps_json() {
  local bounding n out=()
  bounding=$((16#$(awk '$1=="CapBnd:"{print $2}' /proc/self/status)))
  for n in "${!cap_names[@]}"; do
    (((bounding >> n) & 1)) || out+=("\"CAP_${cap_names[n]}\"")
  done
  local IFS=,
  echo "[${out[*]}]"
}

# Remove the unavailable capabilities from every capability list in FILE: a bundle's
# config.json ({"process": {"capabilities": ...}}) or an exec's process.json.
drop_unavailable() {
  local file=$1 drop
  [ -f "$file" ] || return 0
  drop=$(unavailable_caps_json)
  [ "$drop" = "[]" ] && return 0
  jq --argjson drop "$drop" '
    (if has("process") then .process.capabilities else .capabilities end) as $c
    | if $c == null then . else
        (if has("process") then .process.capabilities else .capabilities end)
          |= with_entries(.value |= map(select(. as $x | $drop | index($x) | not)))
      end' "$file" >"$file.wpkind"
  mv "$file.wpkind" "$file"
}

args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
  --bundle | -b) drop_unavailable "${args[i + 1]}/config.json" ;;
  --bundle=*) drop_unavailable "${args[i]#--bundle=}/config.json" ;;
  --process | -p) drop_unavailable "${args[i + 1]}" ;;
  --process=*) drop_unavailable "${args[i]#--process=}" ;;
  esac
done
exec "$real_runc" "$@"
