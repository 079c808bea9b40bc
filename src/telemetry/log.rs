//! One JSON object per line on stdout: `level`, `message`, `time`, then the event's
//! fields at top level (`roomCode`, `playerId`, …), as the Node service logged.
//!
//! A field named `metrics` whose value is JSON text is embedded as JSON, so the
//! `metrics_flush` line carries an object, not a string.
//!
//! Every other text field is cut to `FIELD_MAX_CHARS` characters, with a marker
//! saying how many were cut: fields often carry what a caller sent (a room code, an
//! error naming input), and a 1 MB value must not become a 1 MB log line.
//!
//! Writing is asynchronous and bounded: a line is rendered where it is logged and
//! handed to one writer thread through a queue of `QUEUE_LINES` lines, which writes
//! whatever has gathered with one `write(2)`. No task on the hot path (a join, a
//! message) ever waits on stdout; when the queue is full (stdout blocked, or a flood
//! of lines) a line is dropped and counted (`log_lines_dropped_total`), never
//! waited for. `flush` drains the queue at exit.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogLevel;
use crate::protocol::format_time;

/// Installs the JSON logger as the global subscriber. Safe to call more than once
/// (later calls are ignored), which tests that start several servers rely on.
pub fn init(level: LogLevel) {
    init_with(level, None)
}

/// Like `init`, with the spans of `otel::TARGET` exported through `tracer` (only
/// then are those spans enabled at all) and every line logged inside one of them
/// carrying its `traceId` and `spanId`.
pub fn init_with(level: LogLevel, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    let max = match level {
        LogLevel::Debug => tracing::level_filters::LevelFilter::DEBUG,
        LogLevel::Info => tracing::level_filters::LevelFilter::INFO,
        LogLevel::Warn => tracing::level_filters::LevelFilter::WARN,
        LogLevel::Error => tracing::level_filters::LevelFilter::ERROR,
    };
    // Only our own crate's events; dependencies' debug chatter stays out of the stream.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target(env!("CARGO_CRATE_NAME"), max)
        .with_default(tracing::level_filters::LevelFilter::WARN.min(max))
        // Export spans: without a tracer this target is off, so declaring such a span
        // on the message path costs one cached callsite check.
        .with_target(
            super::otel::TARGET,
            if tracer.is_some() {
                tracing::level_filters::LevelFilter::TRACE
            } else {
                tracing::level_filters::LevelFilter::OFF
            },
        );
    let with_ids = tracer.is_some();
    // No source location, thread, target or busy/idle timings on every span: the
    // spans carry what operators need, and each of these costs on the message path.
    let otel = tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_tracer(t)
    });
    // A global filter, not a per-layer one: with a per-layer filter, a dependency's
    // `tracing::enabled!` that answers false (sqlx asks before every query) left the
    // filter's per-thread state set, and the next event on that thread was dropped
    // (`rooms_restored` after loading rooms, for one).
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(JsonLines {
            with_ids,
            dispatch: OnceLock::new(),
        })
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(rx));
        // Without the thread, lines are written where they are logged (see on_event).
        if started.is_ok() {
            let _ = SINK.set(tx);
        }
    }
}

/// Lines queued for the writer thread at most; past it a line is dropped.
pub const QUEUE_LINES: usize = 8192;
/// Bytes the writer gathers into one write at most.
const WRITE_BATCH: usize = 64 * 1024;

enum Line {
    Text(String),
    /// Everything queued before this is written; then the sender is told.
    Flush(std::sync::mpsc::Sender<()>),
}

static SINK: OnceLock<SyncSender<Line>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because the queue was full, since the process started.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes everything queued so far, waiting at most `limit` (at exit: a `kill -9`
/// loses what is still queued, a normal exit does not).
pub fn flush(limit: Duration) {
    let Some(tx) = SINK.get() else { return };
    let (ack, done) = std::sync::mpsc::channel();
    let deadline = std::time::Instant::now() + limit;
    let mut marker = Line::Flush(ack);
    loop {
        match tx.try_send(marker) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                marker = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    let _ = done.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
}

/// The writer thread: takes every line that has gathered and writes them at once.
fn write_lines(rx: Receiver<Line>) {
    let mut stdout = std::io::stdout();
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut acks = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(line) = next.take() {
            match line {
                Line::Text(text) => batch.extend_from_slice(text.as_bytes()),
                Line::Flush(ack) => acks.push(ack),
            }
            if batch.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // A closed stdout must not take the server down.
        let _ = stdout.write_all(&batch);
        let _ = stdout.flush();
        batch.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

struct JsonLines {
    /// Spans are exported: lines inside one carry `traceId` and `spanId`.
    with_ids: bool,
    /// The subscriber this layer is part of, to ask the OpenTelemetry layer for a
    /// span's ids (set when the subscriber is installed).
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

/// Longest text field written, in characters (the server-made `metrics` excepted).
pub const FIELD_MAX_CHARS: usize = 256;

/// `text`, cut to `FIELD_MAX_CHARS` characters with `…[+N chars]` when longer.
fn bounded(name: &str, text: &str) -> serde_json::Value {
    if name == "metrics" {
        return text.into();
    }
    match text.char_indices().nth(FIELD_MAX_CHARS) {
        None => text.into(),
        Some((cut, _)) => {
            let dropped = text[cut..].chars().count();
            format!("{}…[+{dropped} chars]", &text[..cut]).into()
        }
    }
}

#[derive(Default)]
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.0
            .insert(field.name().to_string(), bounded(field.name(), &text));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), bounded(field.name(), value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

/// Cluster mode: this node's `NODE_ID`, on every line as `nodeId`, so the lines of
/// several nodes can be read together.
static NODE_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process's node on every later log line (once; later calls are ignored).
pub fn set_node_id(id: &str) {
    let _ = NODE_ID.set(id.to_string());
}

/// Renders one log line. Kept separate from the layer so it can be unit-tested.
fn render(level: &Level, mut fields: Fields, time: String) -> String {
    let mut line = serde_json::Map::new();
    let level = match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        _ => "debug",
    };
    line.insert("level".into(), level.into());
    let message = fields.0.remove("message").unwrap_or_default();
    line.insert("message".into(), message);
    line.insert("time".into(), time.into());
    if let Some(node) = NODE_ID.get() {
        line.insert("nodeId".into(), node.as_str().into());
    }
    // `metrics = %json` arrives as text; embed it as the object it is.
    if let Some(serde_json::Value::String(s)) = fields.0.get("metrics")
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(s)
    {
        fields.0.insert("metrics".into(), v);
    }
    line.extend(fields.0);
    let mut text = serde_json::Value::Object(line).to_string();
    text.push('\n');
    text
}

impl<S> Layer<S> for JsonLines
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if self.with_ids
            && let Some(span) = ctx.lookup_current()
            && let Some(dispatch) = self.dispatch.get().and_then(|d| d.upgrade())
            && let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)
        {
            use opentelemetry::trace::TraceContextExt;
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                fields
                    .0
                    .insert("traceId".into(), sc.trace_id().to_string().into());
                fields
                    .0
                    .insert("spanId".into(), sc.span_id().to_string().into());
            }
        }
        let text = render(
            event.metadata().level(),
            fields,
            format_time(time::OffsetDateTime::now_utc()),
        );
        match SINK.get() {
            Some(tx) => {
                if tx.try_send(Line::Text(text)).is_err() {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            // No writer thread (it could not start): one write per line, so
            // concurrent lines never interleave.
            None => {
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_operator_shape() {
        let mut f = Fields::default();
        f.0.insert("message".into(), "join_room_success".into());
        f.0.insert("roomCode".into(), "ABC".into());
        f.0.insert("metrics".into(), r#"{"a":1}"#.into());
        let line = render(&Level::INFO, f, "2026-01-01T00:00:00.000Z".into());
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["level"], "info");
        assert_eq!(v["message"], "join_room_success");
        assert_eq!(v["roomCode"], "ABC");
        assert_eq!(v["metrics"]["a"], 1);
        assert!(line.ends_with('\n'));
    }

    #[test]
    fn long_fields_are_cut_with_a_marker() {
        let long = "é".repeat(1_000_000);
        assert_eq!(
            bounded("roomCode", &long),
            serde_json::Value::from(format!(
                "{}…[+{} chars]",
                "é".repeat(FIELD_MAX_CHARS),
                1_000_000 - FIELD_MAX_CHARS
            ))
        );
        let exact = "x".repeat(FIELD_MAX_CHARS);
        assert_eq!(bounded("roomCode", &exact), serde_json::Value::from(exact));
        // The metrics object is the server's own and is embedded whole.
        let metrics = format!("{{\"a\":\"{}\"}}", "x".repeat(1000));
        assert_eq!(
            bounded("metrics", &metrics),
            serde_json::Value::from(metrics)
        );
    }
}
