#!/usr/bin/env bash
# Starts, stops or shows a local Oxbow cluster on 127.0.0.1: 3 controllers,
# 3 brokers and an s3s-fs object store, state under $OXBOW_CLUSTER_DIR
# (default ./cluster-data). For trying a multi-node cluster on one machine.
#   scripts/cluster.sh start|stop|status
# Kafka clients bootstrap from 127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${OXBOW_CLUSTER_DIR:-$root/cluster-data}
bin=${OXBOW_BIN:-$root/target/release/oxbow}
tools=${OXBOW_TOOLS:-$HOME/.cache/oxbow-tools}
s3_port=19000
voters="1=127.0.0.1:19301,2=127.0.0.1:19302,3=127.0.0.1:19303"
controllers="127.0.0.1:19301,127.0.0.1:19302,127.0.0.1:19303"
export AWS_ACCESS_KEY_ID=oxbow AWS_SECRET_ACCESS_KEY=oxbow-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_one() { # name, command...
  local name=$1; shift
  if running "$dir/$name.pid"; then echo "$name already running"; return; fi
  "$@" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

wait_log() { # name, pattern
  for _ in $(seq 1 300); do
    grep -q "$2" "$dir/$1.log" 2>/dev/null && return 0
    running "$dir/$1.pid" || { echo "cluster.sh: $1 exited; see $dir/$1.log" >&2; exit 1; }
    sleep 0.2
  done
  echo "cluster.sh: $1 not ready after 60 s; see $dir/$1.log" >&2; exit 1
}

case "${1:-}" in
  start)
    [ -x "$bin" ] || { echo "cluster.sh: no oxbow binary at $bin (cargo build --release -p oxbow, or set OXBOW_BIN)" >&2; exit 1; }
    [ -x "$tools/bin/s3s-fs" ] || "$root/scripts/setup.sh"
    mkdir -p "$dir/s3/oxbow"
    start_one s3s-fs "$tools/bin/s3s-fs" --host 127.0.0.1 --port $s3_port \
      --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$dir/s3"
    for i in 1 2 3; do
      start_one controller-$i "$bin" controller --node-id $i --listen 127.0.0.1:1930$i \
        --voters "$voters" --data-dir "$dir/controller-$i"
    done
    for i in 1 2 3; do wait_log controller-$i "oxbow controller ready"; done
    for i in 1 2 3; do
      start_one broker-$i "$bin" broker --node-id $i --controllers "$controllers" \
        --data-dir "$dir/broker-$i" --kafka-listen 127.0.0.1:1909$i \
        --metrics-listen 127.0.0.1:1946$i --object-store s3://oxbow/cluster
    done
    for i in 1 2 3; do wait_log broker-$i "oxbow ready"; done
    echo "cluster up: bootstrap 127.0.0.1:19091,127.0.0.1:19092,127.0.0.1:19093 (logs in $dir)"
    ;;
  stop)
    for name in broker-1 broker-2 broker-3 controller-1 controller-2 controller-3 s3s-fs; do
      if running "$dir/$name.pid"; then
        pid=$(cat "$dir/$name.pid"); kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "stopped $name"
      fi
      rm -f "$dir/$name.pid"
    done
    ;;
  status)
    for name in s3s-fs controller-1 controller-2 controller-3 broker-1 broker-2 broker-3; do
      if running "$dir/$name.pid"; then echo "$name: running (pid $(cat "$dir/$name.pid"))"; else echo "$name: stopped"; fi
    done
    ;;
  *) echo "usage: scripts/cluster.sh start|stop|status" >&2; exit 2 ;;
esac
