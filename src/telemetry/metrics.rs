//! Counters under the exact names operators alert on, plus live gauges.
//!
//! Counters are plain atomics: incrementing one never takes a lock, so the message
//! path pays one relaxed add. The `metrics_flush` line reports deltas since the last
//! flush, as the Node service did.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Monotonic counters, one field per operator-facing name.
        #[derive(Debug, Default)]
        pub struct Counters {
            $(pub $name: AtomicU64,)*
        }

        impl Counters {
            /// Every counter as (name, value).
            pub fn read(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters!(
    ws_connections_total,
    ws_messages_total,
    ws_message_parse_failures_total,
    ws_message_handler_failures_total,
    join_room_attempts_total,
    join_room_success_total,
    join_room_failures_total,
    auth_failures_total,
    ready_update_attempts_total,
    ready_update_success_total,
    ready_update_failures_total,
    phase_change_attempts_total,
    phase_change_success_total,
    phase_change_failures_total,
    heartbeat_timeouts_total,
    snapshots_persisted_total,
    event_persist_success_total,
    event_persist_failures_total,
    canvases_persisted_total,
    persist_dead_letters_total,
    persist_batches_total,
    persist_batch_micros_total,
    rate_limited_total,
    slow_consumer_closes_total,
    oversized_frames_total,
    room_events_total,
    protocol_errors_total,
    accept_failures_total,
    connections_refused_total,
    room_owner_panics_total,
    seeded_rooms_refused_total,
    http_broadcast_attempts_total,
    http_broadcast_success_total,
    http_broadcast_failures_total,
    http_broadcast_auth_failures_total,
    log_lines_dropped_total,
    otel_spans_dropped_total,
    otel_export_failures_total,
    persist_fenced_rows_total,
    cluster_forwarded_total,
    cluster_relayed_total,
    cluster_resyncs_total,
    cluster_redis_errors_total,
    cluster_messages_dropped_total,
    cluster_takeovers_total,
    cluster_rooms_lost_total,
);

#[derive(Debug, Default)]
pub struct Metrics {
    pub counters: Counters,
    /// Live rooms on this node.
    pub rooms_live: AtomicI64,
    /// Open WebSocket connections on this node.
    pub connections_live: AtomicI64,
    /// Rows waiting to be written to the database (shared with the writer).
    pub persist_queue_depth: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Bytes of those rows (shared with the writer).
    pub persist_queue_bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One database round trip of the writer (count and total time: the flush line's
    /// deltas give the mean batch time).
    pub fn record_persist_batch(&self, elapsed: std::time::Duration) {
        Metrics::inc(&self.counters.persist_batches_total);
        self.counters
            .persist_batch_micros_total
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        super::otel::record_persist_batch(elapsed);
    }

    /// The body of one `metrics_flush` line: counter deltas since `previous`
    /// (updated in place) and the gauges' current values.
    pub fn flush_delta(&self, previous: &mut Vec<(&'static str, u64)>) -> serde_json::Value {
        // The logger is the process's; its count is mirrored here to be reported.
        self.counters
            .log_lines_dropped_total
            .store(super::log::dropped(), Ordering::Relaxed);
        // So are the OTLP exporter's (zero while nothing is exported).
        self.counters
            .otel_spans_dropped_total
            .store(super::otel::spans_dropped(), Ordering::Relaxed);
        self.counters
            .otel_export_failures_total
            .store(super::otel::export_failures(), Ordering::Relaxed);
        let now = self.counters.read();
        let mut out = serde_json::Map::new();
        for (i, (name, value)) in now.iter().enumerate() {
            let before = previous.get(i).map(|(_, v)| *v).unwrap_or(0);
            out.insert((*name).to_string(), (value - before).into());
        }
        out.insert(
            "rooms_live".into(),
            self.rooms_live.load(Ordering::Relaxed).into(),
        );
        out.insert(
            "ws_connections_live".into(),
            self.connections_live.load(Ordering::Relaxed).into(),
        );
        out.insert(
            "persist_queue_depth".into(),
            self.persist_queue_depth.load(Ordering::Relaxed).into(),
        );
        out.insert(
            "persist_queue_bytes".into(),
            self.persist_queue_bytes.load(Ordering::Relaxed).into(),
        );
        *previous = now;
        serde_json::Value::Object(out)
    }
}

/// Logs `metrics_flush` every `interval` until shutdown, then once more.
pub async fn flush_loop(
    metrics: std::sync::Arc<Metrics>,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut previous = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let body = metrics.flush_delta(&mut previous);
        tracing::info!(metrics = %body, "metrics_flush");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_reports_deltas() {
        let m = Metrics::default();
        let mut prev = Vec::new();
        Metrics::inc(&m.counters.ws_messages_total);
        Metrics::inc(&m.counters.ws_messages_total);
        assert_eq!(m.flush_delta(&mut prev)["ws_messages_total"], 2);
        Metrics::inc(&m.counters.ws_messages_total);
        let second = m.flush_delta(&mut prev);
        assert_eq!(second["ws_messages_total"], 1);
        assert_eq!(second["join_room_attempts_total"], 0);
    }
}
