#!/usr/bin/env bash
# Runs the docs/benchmarks.md workloads: the server pinned to core 0, karaoke-bench
# pinned to core 1, each workload RUNS times (default 3); prints one JSON line per run.
# Needs: a release build (cargo build --release), PostgreSQL on 127.0.0.1:5432 for the
# `ready` workload (a fresh database is created and dropped).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
BIN="${CARGO_TARGET_DIR:-target}/release"
export REALTIME_SHARED_SECRET="bench-secret-0123456789abcdef"
ulimit -n "$(ulimit -Hn)"

# Starts the server on core 0 with extra env; sets SERVER_PID and PORT_USED.
start_server() {
  local log
  log=$(mktemp)
  env ALLOW_CLIENT_SEEDED_ROOMS=true PORT=0 ADMIN_PORT=0 LOG_LEVEL=info \
      METRICS_FLUSH_INTERVAL_MS=0 HEARTBEAT_INTERVAL_MS=600000 HEARTBEAT_TIMEOUT_MS=1200000 \
      RATE_LIMIT_PER_SEC=1000000 RATE_LIMIT_BURST=1000000 OUTBOUND_QUEUE_LIMIT=4096 \
      "$@" taskset -c 0 "$BIN/karaoke-realtime" >"$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    PORT_USED=$(grep -m1 realtime_server_listening "$log" | sed -E 's/.*"port":([0-9]+).*/\1/' || true)
    [ -n "$PORT_USED" ] && return 0
    sleep 0.05
  done
  echo "server did not start: $(cat "$log")" >&2
  exit 1
}

stop_server() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; }

bench() {
  taskset -c 1 "$BIN/karaoke-bench" --url "ws://127.0.0.1:$PORT_USED/" \
    --server-pid "$SERVER_PID" "$@"
}

for run in $(seq 1 "$RUNS"); do
  start_server DATABASE_URL=memory:
  bench --scenario broadcast --rooms 100 --players 8 --rate 0 --duration 10 --tag "broadcast-closed-$run"
  stop_server

  start_server DATABASE_URL=memory:
  bench --scenario broadcast --rooms 250 --players 8 --rate 20 --duration 10 --tag "broadcast-20-$run"
  stop_server

  start_server DATABASE_URL=memory:
  bench --scenario broadcast --rooms 250 --players 8 --rate 5 --duration 10 --tag "broadcast-5-$run"
  stop_server

  db="karaoke_bench_$$_$run"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null
  start_server DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
  bench --scenario ready --rooms 100 --players 8 --duration 10 --tag "ready-postgres-$run"
  stop_server
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE $db" >/dev/null

  start_server DATABASE_URL=memory:
  bench --scenario join --rooms 2437 --players 8 --concurrency 200 --tag "join-19500-$run"
  stop_server
done
