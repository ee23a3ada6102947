#!/usr/bin/env bash
# Local demo of the queue protocol and worker runtime, no cluster needed: starts a real
# redis-server on a free loopback port, two workpool-worker processes, submits tasks and
# prints the queue stats until the backlog is drained. Everything stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

tasks=${TASKS:-2000}
cargo build -q -p workpool-worker
bin=target/debug/workpool-worker
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="redis://127.0.0.1:$port/0"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
  >"$dir/redis.log" 2>&1 &
pids+=($!)
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
echo "redis-server on 127.0.0.1:$port"

for i in 1 2; do
  "$bin" run --redis-url "$url" --stream demo --group demo --consumer "worker-$i" \
    --builtin sleep --concurrency 20 --metrics-addr 127.0.0.1:0 >"$dir/worker-$i.log" 2>&1 &
  pids+=($!)
done
echo "two workers started (logs in $dir)"

"$bin" submit --redis-url "$url" --stream demo --payload '{"ms": 20}' --count "$tasks"
while :; do
  "$bin" stats --redis-url "$url" --stream demo --group demo
  backlog=$("$bin" stats --redis-url "$url" --stream demo --group demo --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["backlog"])')
  [ "$backlog" = 0 ] && break
  sleep 1
done
echo "all $tasks tasks done; stopping the workers with SIGTERM"
