#!/usr/bin/env bash
# The telemetry benchmarks of docs/benchmarks.md: the closed-loop broadcast and the
# 20 msg/s workloads, each with OTLP export in four settings, alternating the
# settings within each run, RUNS times (default 3); one JSON line per run on stdout,
# tagged "<workload>/<setting>/<run>":
#
#   unset      no OTEL_* variable: nothing exported (the baseline)
#   ratio      OTLP to a live receiver, OTEL_TRACES_SAMPLER=parentbased_traceidratio,
#              OTEL_TRACES_SAMPLER_ARG=$RATIO (default 0.01, the documented setting)
#   always-on  OTLP to the live receiver, OTEL_TRACES_SAMPLER=always_on
#   dead       as ratio, but to a port nobody listens on (every export fails)
#
#   cargo build --release --bins --example otlp-sink
#   bench/otel-workloads.sh > otel.jsonl      # RUNS, RATIO, DURATION, SETTINGS, WORKLOADS
#   bench/summarize.py < otel.jsonl
#
# The server runs on core 0; karaoke-bench and the receiver (examples/otlp-sink, a
# counting OTLP/gRPC server standing in for a collector) share core 1. Settings are
# the shipped defaults, except the closed loop's raised per-socket rate limit (as in
# bench/compare.sh) and a 5 s metric export interval, so that metrics are exported
# during each 10 s run too. Each run's receiver totals go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-3}"
RATIO="${RATIO:-0.01}"
DURATION="${DURATION:-10}"
TARGET="${CARGO_TARGET_DIR:-target}/release"
BIN="${BIN:-$TARGET/karaoke-realtime}"
BENCH="${BENCH:-$TARGET/karaoke-bench}"
SINK="${SINK:-$TARGET/examples/otlp-sink}"
SETTINGS=(${SETTINGS:-unset ratio always-on dead})
WORKLOADS=(${WORKLOADS:-broadcast-closed broadcast-20})
export REALTIME_SHARED_SECRET="bench-secret-0123456789abcdef"
ulimit -n "$(ulimit -Hn)"
for f in "$BIN" "$BENCH" "$SINK"; do
  [ -x "$f" ] || { echo "missing $f: cargo build --release --bins --example otlp-sink" >&2; exit 2; }
done

SINK_LOG=$(mktemp)
taskset -c 1 "$SINK" 0 >"$SINK_LOG" 2>&1 &
SINK_PID=$!
for _ in $(seq 1 200); do
  SINK_PORT=$(grep -m1 otlp_sink_listening "$SINK_LOG" 2>/dev/null | sed -E 's/.*:([0-9]+)}.*/\1/' || true)
  [ -n "$SINK_PORT" ] && break
  sleep 0.05
done
[ -n "${SINK_PORT:-}" ] || { echo "otlp-sink did not start: $(cat "$SINK_LOG")" >&2; exit 1; }
# A port that was free a moment ago and that nothing listens on: the dead endpoint.
DEAD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { kill -TERM "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true; cat "$SINK_LOG" >&2; rm -f "$SINK_LOG"; }
trap cleanup EXIT

# Starts the server on core 0 with the shipped defaults plus the env given; sets
# SERVER_PID, PORT_USED and SCRATCH.
start_server() {
  SCRATCH=$(mktemp -d)
  (cd "$SCRATCH" && exec env ALLOW_CLIENT_SEEDED_ROOMS=true PORT=0 ADMIN_PORT=0 LOG_LEVEL=info \
      METRICS_FLUSH_INTERVAL_MS=0 DATABASE_URL=memory: "$@" taskset -c 0 "$BIN" >"$SCRATCH/log" 2>&1) &
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
  # What the exporter lost, for the record (zero unless the endpoint is dead).
  grep -h '"otel_export_failed"\|"otel_span_queue_full"' "$SCRATCH/log" | head -2 >&2 || true
  rm -rf "$SCRATCH"
}

otel_env() {
  local live=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_METRIC_EXPORT_INTERVAL=5000)
  case "$1" in
    unset) ;;
    ratio) echo "${live[@]}" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="$RATIO" ;;
    always-on) echo "${live[@]}" OTEL_TRACES_SAMPLER=always_on ;;
    dead) echo OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$DEAD_PORT" OTEL_METRIC_EXPORT_INTERVAL=5000 \
        OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="$RATIO" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}

bench() {
  taskset -c 1 "$BENCH" --url "ws://127.0.0.1:$PORT_USED/" --server-pid "$SERVER_PID" "$@"
}

for run in $(seq 1 "$RUNS"); do
  for workload in "${WORKLOADS[@]}"; do
    for setting in "${SETTINGS[@]}"; do
      tag="$workload/$setting/$run"
      # shellcheck disable=SC2046 # the settings are words without spaces
      case "$workload" in
        broadcast-closed)
          start_server RATE_LIMIT_PER_SEC=1000000 RATE_LIMIT_BURST=1000000 $(otel_env "$setting")
          bench --scenario broadcast --rooms 100 --players 8 --rate 0 --duration "$DURATION" --tag "$tag"
          ;;
        broadcast-20)
          start_server $(otel_env "$setting")
          bench --scenario broadcast --rooms 250 --players 8 --rate 20 --duration "$DURATION" --tag "$tag"
          ;;
        *) echo "unknown workload $workload" >&2; exit 2 ;;
      esac
      stop_server
    done
  done
done
