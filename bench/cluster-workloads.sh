#!/usr/bin/env bash
# The cost of cross-node fan-out: the step-7 broadcast workloads on one node and on
# a three-node cluster on this machine, every room's players spread over all three
# (seat i on node i mod 3), in the same run, RUNS times each (default 3). Prints one
# JSON line per run, tagged "<workload>/<setup>/<run>"; bench/summarize.py gives the
# medians.
#
#   bench/cluster-workloads.sh BIN [WORKLOAD ...] > results.jsonl
#
# Workloads: broadcast-closed broadcast-20 broadcast-5 (default: all).
# Setups, all on PostgreSQL (cluster mode needs it; the one-node figures use it too,
# so that only the cluster differs):
#   single     one node, no Redis
#   cluster-1  one node in cluster mode (its own Redis; nothing crosses nodes)
#   cluster-3  three nodes in cluster mode on one Redis
# Every server process and the Redis of the run are pinned to core 0, the load
# generator to core 1; the CPU figures (`deliveries_per_server_cpu_sec`,
# `server_cpu_cores`) sum every node and Redis. Shipped defaults, except the closed
# loop's per-socket rate limit (beyond any sane limit, as in bench/compare.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$1"
shift
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(broadcast-closed broadcast-20 broadcast-5)
RUNS="${RUNS:-3}"
BENCH="${BENCH:-${CARGO_TARGET_DIR:-target}/release/karaoke-bench}"
export REALTIME_SHARED_SECRET="bench-secret-0123456789abcdef"
ulimit -n "$(ulimit -Hn)"
CLOSED_LOOP=(RATE_LIMIT_PER_SEC=1000000 RATE_LIMIT_BURST=1000000)

PIDS=()
PORTS=()
SCRATCH=""
REDIS_PID=""
DB=""

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_redis() {
  REDIS_PORT=$(free_port)
  taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    >"$SCRATCH/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 200); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "redis-server did not start" >&2
  exit 1
}

# Starts one node on core 0 with the shipped defaults plus the env given.
start_node() {
  local name="$1"
  shift
  local dir="$SCRATCH/$name"
  mkdir -p "$dir"
  (cd "$dir" && exec env ALLOW_CLIENT_SEEDED_ROOMS=true PORT=0 ADMIN_PORT=0 LOG_LEVEL=info \
    METRICS_FLUSH_INTERVAL_MS=0 DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" "$@" \
    taskset -c 0 "$BIN" >"$dir/log" 2>&1) &
  PIDS+=($!)
  local port=""
  for _ in $(seq 1 400); do
    port=$(grep -m1 realtime_server_listening "$dir/log" 2>/dev/null | sed -E 's/.*"port":([0-9]+).*/\1/' || true)
    [ -n "$port" ] && break
    sleep 0.05
  done
  [ -n "$port" ] || { echo "node $name did not start: $(cat "$dir/log")" >&2; exit 1; }
  PORTS+=("$port")
}

# Every node ready, and (cluster-3) seeing all three: rooms made before membership
# settles would be handed over as it does, and the run would measure that instead.
await_ready() {
  local nodes=${#PORTS[@]}
  if [ -n "$REDIS_PID" ] && [ "$nodes" -gt 1 ]; then
    for dir in "$SCRATCH"/n*; do
      for _ in $(seq 1 200); do
        grep -q "\"live\":$nodes" "$dir/log" 2>/dev/null && break
        sleep 0.05
      done
    done
  fi
  for port in "${PORTS[@]}"; do
    for _ in $(seq 1 200); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && break
      sleep 0.05
    done
  done
}

start_setup() {
  local setup="$1"
  shift
  SCRATCH=$(mktemp -d)
  DB="karaoke_bench_cluster_$$_${RANDOM}"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $DB" >/dev/null
  PIDS=()
  PORTS=()
  REDIS_PID=""
  case "$setup" in
    single) start_node n1 "$@" ;;
    cluster-1)
      start_redis
      start_node n1 REDIS_URL="redis://127.0.0.1:$REDIS_PORT" NODE_ID=n1 "$@"
      ;;
    cluster-3)
      start_redis
      for n in n1 n2 n3; do
        start_node "$n" REDIS_URL="redis://127.0.0.1:$REDIS_PORT" NODE_ID="$n" "$@"
      done
      ;;
  esac
  await_ready
}

stop_setup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; fi
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE $DB WITH (FORCE)" >/dev/null
  [ -n "${KEEP_LOGS:-}" ] && cp -r "$SCRATCH" "$KEEP_LOGS/$(date +%s%N)" || true
  rm -rf "$SCRATCH"
}

bench() {
  local urls pids
  urls=$(printf 'ws://127.0.0.1:%s/,' "${PORTS[@]}")
  pids=$(printf '%s,' "${PIDS[@]}" ${REDIS_PID:+"$REDIS_PID"})
  taskset -c 1 "$BENCH" --url "${urls%,}" --server-pid "${pids%,}" "$@"
}

run_workload() {
  local workload="$1" setup="$2" tag="$3"
  case "$workload" in
    broadcast-closed)
      start_setup "$setup" "${CLOSED_LOOP[@]}"
      bench --scenario broadcast --rooms 100 --players 8 --rate 0 --duration 10 --tag "$tag"
      ;;
    broadcast-20)
      start_setup "$setup"
      bench --scenario broadcast --rooms 250 --players 8 --rate 20 --duration 10 --tag "$tag"
      ;;
    broadcast-5)
      start_setup "$setup"
      bench --scenario broadcast --rooms 250 --players 8 --rate 5 --duration 10 --tag "$tag"
      ;;
    *)
      echo "unknown workload $workload" >&2
      exit 2
      ;;
  esac
  stop_setup
}

for workload in "${WORKLOADS[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    for setup in single cluster-1 cluster-3; do
      run_workload "$workload" "$setup" "$workload/$setup/$run"
    done
  done
done
