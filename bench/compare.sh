#!/usr/bin/env bash
# Runs the docs/benchmarks.md workloads against two server binaries in the same run
# (before and after a change), alternating them, RUNS times each (default 3); prints
# one JSON line per run, tagged "<workload>/<label>/<run>".
#
#   bench/compare.sh BEFORE_BIN AFTER_BIN [WORKLOAD ...] > results.jsonl
#   bench/summarize.py < results.jsonl
#
# Workloads: broadcast-closed broadcast-20 broadcast-5 ready-postgres ready-sqlite
# join-19800 idle-15000 (default: all). Each server is pinned to core 0 and the load
# generator (this build's karaoke-bench) to core 1. Settings are the shipped defaults
# except where a workload is a closed loop (beyond any sane rate limit): those raise
# the per-socket rate limit, and say so below. Needs PostgreSQL on 127.0.0.1:5432 for
# ready-postgres (a fresh database per run, dropped after).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE="$1"
AFTER="$2"
shift 2
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(broadcast-closed broadcast-20 broadcast-5 ready-postgres ready-sqlite join-19800 idle-15000)
RUNS="${RUNS:-3}"
BENCH="${BENCH:-${CARGO_TARGET_DIR:-target}/release/karaoke-bench}"
export REALTIME_SHARED_SECRET="bench-secret-0123456789abcdef"
# 19,800 sockets need more than a 20,000 descriptor limit: the server keeps 256 of its
# limit free of player connections (and lowers MAX_CONNECTIONS to fit). Root may raise
# the hard limit; elsewhere the join-19800 workload is refused past the fitted cap.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

# Starts BIN on core 0 with the shipped defaults plus the extra env given; sets
# SERVER_PID, PORT_USED and SCRATCH (its working directory, for the SQLite file).
start_server() {
  local bin="$1"
  shift
  SCRATCH=$(mktemp -d)
  (cd "$SCRATCH" && exec env ALLOW_CLIENT_SEEDED_ROOMS=true PORT=0 ADMIN_PORT=0 LOG_LEVEL=info \
      METRICS_FLUSH_INTERVAL_MS=0 "$@" taskset -c 0 "$bin" >"$SCRATCH/log" 2>&1) &
  SERVER_PID=$!
  for _ in $(seq 1 400); do
    PORT_USED=$(grep -m1 realtime_server_listening "$SCRATCH/log" 2>/dev/null | sed -E 's/.*"port":([0-9]+).*/\1/' || true)
    [ -n "$PORT_USED" ] && return 0
    sleep 0.05
  done
  echo "server did not start: $(cat "$SCRATCH/log")" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$SCRATCH"
}

bench() {
  taskset -c 1 "$BENCH" --url "ws://127.0.0.1:$PORT_USED/" --server-pid "$SERVER_PID" "$@"
}

# A closed loop is beyond any sane per-socket rate limit: only there is it raised.
CLOSED_LOOP=(RATE_LIMIT_PER_SEC=1000000 RATE_LIMIT_BURST=1000000)

run_workload() {
  local workload="$1" bin="$2" tag="$3"
  case "$workload" in
    broadcast-closed)
      start_server "$bin" DATABASE_URL=memory: "${CLOSED_LOOP[@]}"
      bench --scenario broadcast --rooms 100 --players 8 --rate 0 --duration 10 --tag "$tag"
      ;;
    broadcast-20)
      start_server "$bin"
      bench --scenario broadcast --rooms 250 --players 8 --rate 20 --duration 10 --tag "$tag"
      ;;
    broadcast-5)
      start_server "$bin"
      bench --scenario broadcast --rooms 250 --players 8 --rate 5 --duration 10 --tag "$tag"
      ;;
    ready-postgres)
      local db="karaoke_bench_$$_${RANDOM}"
      psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null
      start_server "$bin" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" "${CLOSED_LOOP[@]}"
      bench --scenario ready --rooms 100 --players 8 --duration 10 --tag "$tag"
      stop_server
      psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE $db WITH (FORCE)" >/dev/null
      return
      ;;
    ready-sqlite)
      start_server "$bin" "${CLOSED_LOOP[@]}"
      bench --scenario ready --rooms 100 --players 8 --duration 10 --tag "$tag"
      ;;
    join-19800)
      start_server "$bin" DATABASE_URL=memory:
      bench --scenario join --rooms 2475 --players 8 --concurrency 200 --tag "$tag"
      ;;
    idle-15000)
      start_server "$bin" DATABASE_URL=memory:
      bench --scenario join --rooms 1875 --players 8 --concurrency 200 --hold 20 --tag "$tag"
      ;;
    *)
      echo "unknown workload $workload" >&2
      exit 2
      ;;
  esac
  stop_server
}

for workload in "${WORKLOADS[@]}"; do
  for run in $(seq 1 "$RUNS"); do
    run_workload "$workload" "$BEFORE" "$workload/before/$run"
    run_workload "$workload" "$AFTER" "$workload/after/$run"
  done
done
