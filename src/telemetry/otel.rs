//! OpenTelemetry export: traces and metrics over OTLP/gRPC to a collector.
//!
//! Configured by the standard `OTEL_*` variables, read in `config.rs`
//! (`Config::otel`). Without an endpoint nothing here runs: no exporter, no
//! `tracing-opentelemetry` layer, and every span the server declares uses the target
//! [`TARGET`], which the global filter turns off, so a span on the message path is one
//! cached callsite check that answers "disabled".
//!
//! With an endpoint:
//!
//! - finished spans go into a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`) that one
//!   exporter thread drains in batches; a full queue drops the span and counts it,
//!   never waits (`otel_spans_dropped_total`). Each export is bounded by
//!   `OTEL_EXPORTER_OTLP_TIMEOUT`; a failed one counts
//!   (`otel_export_failures_total`) and its spans count as dropped.
//! - metrics are read from the same atomics the `metrics_flush` line reports, by
//!   observable instruments, every `OTEL_METRIC_EXPORT_INTERVAL`.
//! - an outage (failed exports, or spans dropped) is logged once when it starts
//!   (`otel_export_failed`, `otel_span_queue_full`) and once when every signal
//!   exports again (`otel_export_recovered`), never per span or per batch.
//! - new traces are sampled before their span exists (`sample_root`), so at a small
//!   ratio an unsampled message costs a random number, not a span.
//! - shutdown flushes what is queued within a bound, on a thread of its own: the
//!   SDK's blocking shutdown never runs on a runtime worker.

use crate::config::{Otel as OtelConfig, OtelSampler};
use crate::telemetry::Metrics;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::{Resource, trace::SpanProcessor};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The tracing target of every span meant for export. The global filter enables it
/// only when traces are exported (see `log::init`).
pub const TARGET: &str = "karaoke_otel";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True when traces are exported: callers skip the work of building a span's
/// attributes or timing a step otherwise (one relaxed load).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Export health, process-wide (the exporter threads are).
#[derive(Default)]
struct Health {
    /// What is failing now, one bit per cause (`TRACES`, `METRICS`, `QUEUE`): an
    /// outage starts when the first bit is set (one line) and ends when the last is
    /// cleared (one line), so a signal that keeps failing while the other works does
    /// not log at every export.
    failing: std::sync::atomic::AtomicU8,
    /// Set by the span queue when it dropped a span; the exporter thread reports it
    /// (logging inside a span's end would re-enter the subscriber and be lost).
    overflowed: AtomicBool,
    spans_dropped: AtomicU64,
    export_failures: AtomicU64,
    /// When the queue last overflowed (ms since `EPOCH`, plus one; 0: never): an
    /// overflow ends only after
    /// `QUEUE_QUIET` without one, so sustained overload is one outage, not a pair of
    /// lines per batch.
    last_overflow_ms: AtomicU64,
}

const QUEUE_QUIET: Duration = Duration::from_secs(10);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

const TRACES: u8 = 1;
const METRICS: u8 = 2;
const QUEUE: u8 = 4;

static HEALTH: OnceLock<Health> = OnceLock::new();

fn health() -> &'static Health {
    HEALTH.get_or_init(Health::default)
}

/// Spans dropped (queue full, or their export failed) since the process started.
pub fn spans_dropped() -> u64 {
    HEALTH
        .get()
        .map_or(0, |h| h.spans_dropped.load(Ordering::Relaxed))
}

/// Failed exports (traces and metrics) since the process started.
pub fn export_failures() -> u64 {
    HEALTH
        .get()
        .map_or(0, |h| h.export_failures.load(Ordering::Relaxed))
}

impl Health {
    fn failed(&self, cause: u8, error: &str, lost: usize) {
        self.export_failures.fetch_add(1, Ordering::Relaxed);
        self.spans_dropped.fetch_add(lost as u64, Ordering::Relaxed);
        if self.failing.fetch_or(cause, Ordering::AcqRel) == 0 {
            let signal = if cause == TRACES { "traces" } else { "metrics" };
            tracing::warn!(signal, error = %error, "otel_export_failed");
        }
    }

    /// An export of `cause`'s signal succeeded (a trace export also ends a queue
    /// overflow: the queue drains again).
    fn succeeded(&self, cause: u8) {
        let last = self.last_overflow_ms.load(Ordering::Relaxed);
        let quiet =
            last == 0 || now_ms().saturating_sub(last - 1) >= QUEUE_QUIET.as_millis() as u64;
        let clear = match cause {
            TRACES if quiet => TRACES | QUEUE,
            other => other,
        };
        let before = self.failing.fetch_and(!clear, Ordering::AcqRel);
        if before != 0 && before & !clear == 0 {
            tracing::info!(
                spansDropped = self.spans_dropped.load(Ordering::Relaxed),
                exportFailures = self.export_failures.load(Ordering::Relaxed),
                "otel_export_recovered"
            );
        }
    }

    /// Called by the exporter thread: a queue overflow is an outage of its own.
    fn check_overflow(&self) {
        if !self.overflowed.swap(false, Ordering::AcqRel) {
            return;
        }
        self.last_overflow_ms.store(now_ms() + 1, Ordering::Relaxed);
        if self.failing.fetch_or(QUEUE, Ordering::AcqRel) == 0 {
            tracing::warn!(
                spansDropped = self.spans_dropped.load(Ordering::Relaxed),
                "otel_span_queue_full"
            );
        }
    }
}

/// Histograms recorded on the hot paths, only while exporting.
struct Histograms {
    message: Histogram<f64>,
    fanout: Histogram<f64>,
    persist_batch: Histogram<f64>,
}

static HISTOGRAMS: OnceLock<Histograms> = OnceLock::new();
static METER: OnceLock<opentelemetry::metrics::Meter> = OnceLock::new();

/// Handling time of one command in its room's owner (a player's message or an
/// admin change), in seconds.
pub fn record_message(elapsed: Duration) {
    if let Some(h) = HISTOGRAMS.get() {
        h.message.record(elapsed.as_secs_f64(), &[]);
    }
}

/// Time to put one publication into every recipient's queue.
pub fn record_fanout(elapsed: Duration) {
    if let Some(h) = HISTOGRAMS.get() {
        h.fanout.record(elapsed.as_secs_f64(), &[]);
    }
}

/// One persistence round trip.
pub fn record_persist_batch(elapsed: Duration) {
    if let Some(h) = HISTOGRAMS.get() {
        h.persist_batch.record(elapsed.as_secs_f64(), &[]);
    }
}

/// Whether metrics are exported (the histograms above are only then recorded).
pub fn metrics_enabled() -> bool {
    HISTOGRAMS.get().is_some()
}

/// What `init` set up; `shutdown` flushes and stops it.
pub struct Otel {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

/// Sets up the exporters. Must run inside the tokio runtime (the gRPC channel's
/// worker is spawned on it). Returns the tracer for `log::init`'s layer.
pub fn init(config: &OtelConfig) -> Result<(Otel, Option<SdkTracer>), String> {
    let resource = resource(config);
    let metadata = metadata(config)?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "telemetry export needs the tokio runtime".to_string())?;
    let mut tracer = None;
    let tracer_provider = match &config.traces_endpoint {
        None => None,
        Some(endpoint) => {
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(config.export_timeout)
                .with_metadata(metadata.clone())
                .build()
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}"))?;
            exporter.set_resource(&resource);
            let processor = BoundedSpans::start(exporter, config, runtime.clone())?;
            let provider = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_sampler(sampler(config.sampler))
                .with_resource(resource.clone())
                .build();
            tracer = Some(provider.tracer("karaoke-realtime"));
            ROOT_RATIO.store(root_ratio(config.sampler).to_bits(), Ordering::Relaxed);
            PARENT_BASED.store(
                matches!(
                    config.sampler,
                    OtelSampler::ParentBasedAlwaysOn
                        | OtelSampler::ParentBasedAlwaysOff
                        | OtelSampler::ParentBasedTraceIdRatio(_)
                ),
                Ordering::Relaxed,
            );
            ENABLED.store(true, Ordering::Relaxed);
            Some(provider)
        }
    };
    let meter_provider = match &config.metrics_endpoint {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(config.export_timeout)
                .with_metadata(metadata)
                .with_temporality(Temporality::Cumulative)
                .build()
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: {e}"))?;
            let watched = WatchedMetrics {
                exporter,
                runtime: runtime.clone(),
                timeout: config.export_timeout,
            };
            let reader = PeriodicReader::builder(watched)
                .with_interval(config.metric_export_interval)
                .build();
            let provider = SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(resource)
                .build();
            let meter = provider.meter("karaoke-realtime");
            let _ = HISTOGRAMS.set(histograms(&meter));
            let _ = METER.set(meter);
            Some(provider)
        }
    };
    Ok((
        Otel {
            tracer_provider,
            meter_provider,
        },
        tracer,
    ))
}

fn resource(config: &OtelConfig) -> Resource {
    Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.name", "opentelemetry"),
        ])
        .build()
}

fn metadata(config: &OtelConfig) -> Result<tonic::metadata::MetadataMap, String> {
    let mut map = tonic::metadata::MetadataMap::new();
    for (k, v) in &config.headers.0 {
        let key = tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: {k:?} is not a header name"))?;
        // The value is never echoed: it usually is an API key.
        let value = v.parse().map_err(|_| {
            format!("OTEL_EXPORTER_OTLP_HEADERS: the value of {k:?} is not a header value")
        })?;
        map.insert(key, value);
    }
    Ok(map)
}

/// The SDK's sampler for `s`. Roots are decided before their span exists
/// (`sample_root`, at the ratio `root_ratio` gives), so a root reaching the SDK is
/// already chosen: the SDK keeps it, and follows the parent's decision for the rest.
fn sampler(s: OtelSampler) -> Sampler {
    match s {
        OtelSampler::AlwaysOff => Sampler::AlwaysOff,
        OtelSampler::AlwaysOn | OtelSampler::TraceIdRatio(_) => Sampler::AlwaysOn,
        OtelSampler::ParentBasedAlwaysOn | OtelSampler::ParentBasedTraceIdRatio(_) => {
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
        }
        OtelSampler::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
    }
}

/// The share of new traces (spans without a parent) that are recorded.
fn root_ratio(s: OtelSampler) -> f64 {
    match s {
        OtelSampler::AlwaysOn | OtelSampler::ParentBasedAlwaysOn => 1.0,
        OtelSampler::AlwaysOff | OtelSampler::ParentBasedAlwaysOff => 0.0,
        OtelSampler::TraceIdRatio(r) | OtelSampler::ParentBasedTraceIdRatio(r) => r,
    }
}

/// `f64` bits of `root_ratio`; 0 until `init`.
static ROOT_RATIO: AtomicU64 = AtomicU64::new(0);
/// Whether the configured sampler follows a caller's sampling decision.
static PARENT_BASED: AtomicBool = AtomicBool::new(false);

/// Whether a new trace is recorded, decided before any span exists: a message that
/// is not sampled costs no span at all (at 1% sampling, 99 of 100 messages pay one
/// random number), instead of a span built and then dropped by the SDK.
fn sample_root() -> bool {
    let ratio = f64::from_bits(ROOT_RATIO.load(Ordering::Relaxed));
    if ratio >= 1.0 {
        return true;
    }
    ratio > 0.0 && rand::random::<f64>() < ratio
}

fn histograms(meter: &opentelemetry::metrics::Meter) -> Histograms {
    // From 10 µs to 10 s: a message takes microseconds, a stalled database seconds.
    let bounds = vec![
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let h = |name: &'static str, description: &'static str| {
        meter
            .f64_histogram(name)
            .with_unit("s")
            .with_description(description)
            .with_boundaries(bounds.clone())
            .build()
    };
    Histograms {
        message: h(
            "message_handling_seconds",
            "Time one command (a player's message, an admin change) takes in its room's owner",
        ),
        fanout: h(
            "broadcast_fanout_seconds",
            "Time to queue one publication for every socket and watcher of its room",
        ),
        persist_batch: h(
            "persist_batch_seconds",
            "Time of one persistence round trip (a batch of rows)",
        ),
    }
}

/// Exposes one server's counters and gauges as observable instruments: the OTLP
/// numbers are the very atomics the `metrics_flush` line reads. No-op without
/// metrics export.
pub fn observe(metrics: &Arc<Metrics>) {
    let Some(meter) = METER.get() else { return };
    for (i, (name, _)) in metrics.counters.read().into_iter().enumerate() {
        let m = metrics.clone();
        meter
            .u64_observable_counter(name)
            .with_callback(move |o| {
                let value = match name {
                    "log_lines_dropped_total" => super::log::dropped(),
                    "otel_spans_dropped_total" => spans_dropped(),
                    "otel_export_failures_total" => export_failures(),
                    _ => m.counters.read().get(i).map_or(0, |(_, v)| *v),
                };
                o.observe(value, &[]);
            })
            .build();
    }
    let gauge = |name: &'static str,
                 description: &'static str,
                 read: Box<dyn Fn() -> i64 + Send + Sync>| {
        meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |o| o.observe(read(), &[]))
            .build();
    };
    let m = metrics.clone();
    gauge(
        "rooms_live",
        "Live rooms on this node",
        Box::new(move || m.rooms_live.load(Ordering::Relaxed)),
    );
    let m = metrics.clone();
    gauge(
        "ws_connections_live",
        "Open WebSocket connections on this node",
        Box::new(move || m.connections_live.load(Ordering::Relaxed)),
    );
    let m = metrics.clone();
    gauge(
        "persist_queue_depth",
        "Rows waiting to be written to the database",
        Box::new(move || {
            i64::try_from(m.persist_queue_depth.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
        }),
    );
    let m = metrics.clone();
    gauge(
        "persist_queue_bytes",
        "Bytes of the rows waiting to be written to the database",
        Box::new(move || {
            i64::try_from(m.persist_queue_bytes.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
        }),
    );
}

impl Otel {
    /// Exports what is queued and stops, within `limit`, on a thread of its own (the
    /// SDK's shutdown blocks). Past `limit` the process goes on without it.
    pub async fn shutdown(self, limit: Duration) {
        let (done, wait) = tokio::sync::oneshot::channel();
        let started = std::thread::Builder::new()
            .name("otel-shutdown".into())
            .spawn(move || {
                // Side by side, each within `limit`: a dead collector that takes the
                // traces' whole budget must not leave none for the last metrics.
                let traces = || {
                    if let Some(p) = &self.tracer_provider {
                        let _ = p.shutdown_with_timeout(limit);
                    }
                };
                let metrics = || {
                    if let Some(p) = &self.meter_provider {
                        let _ = p.shutdown_with_timeout(limit);
                    }
                };
                std::thread::scope(|scope| {
                    let beside = std::thread::Builder::new()
                        .name("otel-shutdown-traces".into())
                        .spawn_scoped(scope, traces);
                    metrics();
                    if beside.is_err() {
                        traces();
                    }
                });
                let _ = done.send(());
            });
        if started.is_err() {
            return;
        }
        let flushed = tokio::time::timeout(limit + Duration::from_millis(100), wait)
            .await
            .is_ok();
        if !flushed {
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "otel_shutdown_timed_out"
            );
        }
    }
}

// ---- the span queue -------------------------------------------------------------

enum Queued {
    Span(Box<SpanData>),
    /// Export everything queued before this, then answer.
    Flush(SyncSender<()>),
    /// Export everything queued, shut the exporter down, answer, stop.
    Stop(SyncSender<()>),
}

/// A span processor with a bounded queue and one exporter thread. The SDK's batch
/// processor also bounds its queue, but does not say what it dropped; this one counts
/// every dropped span and never waits in `on_end`.
#[derive(Debug)]
struct BoundedSpans {
    tx: SyncSender<Queued>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl BoundedSpans {
    fn start<E: SpanExporter + 'static>(
        exporter: E,
        config: &OtelConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<BoundedSpans, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.span_queue_limit);
        let exporting = Exporting {
            exporter,
            runtime,
            delay: config.span_batch_delay,
            batch_max: config.span_batch_max,
            timeout: config.export_timeout,
        };
        let thread = std::thread::Builder::new()
            .name("otel-spans".into())
            .spawn(move || exporting.run(rx))
            .map_err(|e| format!("cannot start the span exporter thread: {e}"))?;
        Ok(BoundedSpans {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Sends a control message, retrying while the queue is full, until `deadline`.
    fn control(&self, make: impl Fn(SyncSender<()>) -> Queued, deadline: Instant) -> OTelSdkResult {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        let mut msg = make(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(Duration::ZERO)),
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(Duration::ZERO))
    }
}

impl SpanProcessor for BoundedSpans {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(Queued::Span(Box::new(span))).is_err() {
            let h = health();
            h.spans_dropped.fetch_add(1, Ordering::Relaxed);
            h.overflowed.store(true, Ordering::Release);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Queued::Flush, Instant::now() + Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.control(Queued::Stop, Instant::now() + timeout);
        if result.is_ok()
            && let Ok(mut thread) = self.thread.lock()
            && let Some(thread) = thread.take()
        {
            let _ = thread.join();
        }
        result
    }
}

/// The exporter thread's side.
struct Exporting<E> {
    exporter: E,
    runtime: tokio::runtime::Handle,
    delay: Duration,
    batch_max: usize,
    timeout: Duration,
}

impl<E: SpanExporter> Exporting<E> {
    fn run(self, rx: Receiver<Queued>) {
        // Grown as spans come: OTEL_BSP_MAX_EXPORT_BATCH_SIZE may be a million.
        let mut batch: Vec<SpanData> = Vec::new();
        let mut due = Instant::now() + self.delay;
        // A control message a drain met behind the spans: handled next, never lost.
        let mut pending: Option<Queued> = None;
        loop {
            let msg = match pending.take() {
                Some(msg) => Ok(msg),
                None => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            health().check_overflow();
            match msg {
                Ok(Queued::Span(span)) => {
                    batch.push(*span);
                    if batch.len() >= self.batch_max {
                        self.export(&mut batch);
                    }
                }
                Ok(Queued::Flush(ack)) => {
                    pending = self.drain(&rx, &mut batch);
                    let _ = ack.send(());
                }
                Ok(Queued::Stop(ack)) => {
                    let behind = self.drain(&rx, &mut batch);
                    let _ = self
                        .exporter
                        .shutdown_with_timeout(Duration::from_millis(100));
                    let _ = ack.send(());
                    // Whoever asked after the stop is answered too (nothing is left).
                    if let Some(Queued::Flush(ack) | Queued::Stop(ack)) = behind {
                        let _ = ack.send(());
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export(&mut batch);
                    due = Instant::now() + self.delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.export(&mut batch);
                    return;
                }
            }
        }
    }

    /// Exports every span already queued, up to the first control message behind
    /// them, which it returns so that its turn still comes.
    fn drain(&self, rx: &Receiver<Queued>, batch: &mut Vec<SpanData>) -> Option<Queued> {
        let mut control = None;
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Queued::Span(span) => {
                    batch.push(*span);
                    if batch.len() >= self.batch_max {
                        self.export(batch);
                    }
                }
                other => {
                    control = Some(other);
                    break;
                }
            }
        }
        self.export(batch);
        control
    }

    fn export(&self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let lost = spans.len();
        // The timer is the runtime's: build it inside `block_on`'s context.
        let call = async { tokio::time::timeout(self.timeout, self.exporter.export(spans)).await };
        match self.runtime.block_on(call) {
            Ok(Ok(())) => health().succeeded(TRACES),
            Ok(Err(e)) => health().failed(TRACES, &e.to_string(), lost),
            Err(_) => health().failed(TRACES, "timed out", lost),
        }
    }
}

/// The metrics exporter, watched for failures like the span exporter, and bounded
/// like it: the SDK's reader puts no time limit on an export, and tonic's request
/// timeout does not cover a collector that connects, answers its headers and then
/// stalls (or a connect that hangs until the kernel gives up).
struct WatchedMetrics<E> {
    exporter: E,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl<E: PushMetricExporter> PushMetricExporter for WatchedMetrics<E> {
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> OTelSdkResult {
        // The reader polls this on its own thread: the timer needs the runtime's
        // context, entered for the timer's creation.
        let timed = {
            let _context = self.runtime.enter();
            tokio::time::timeout(self.timeout, self.exporter.export(metrics))
        };
        let result = match timed.await {
            Ok(result) => result,
            Err(_) => Err(opentelemetry_sdk::error::OTelSdkError::Timeout(
                self.timeout,
            )),
        };
        match &result {
            Ok(()) => health().succeeded(METRICS),
            Err(opentelemetry_sdk::error::OTelSdkError::Timeout(_)) => {
                health().failed(METRICS, "timed out", 0)
            }
            Err(e) => health().failed(METRICS, &e.to_string(), 0),
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.exporter.temporality()
    }
}

// ---- the spans ----------------------------------------------------------------------
//
// Attribute names follow the semantic conventions where one exists (`rpc.*`,
// `db.*`, `error.type`); the game's own are under `karaoke.*`. Each constructor
// returns `Span::none()` at the cost of one load when traces are not exported.

/// A room owner's span for one command: a player's message (a root: players send no
/// trace context) or an admin change (a child of the admin call's span).
pub fn command_span(
    cause: Option<&tracing::Span>,
    room_code: &str,
    origin: &crate::observe::Origin,
    action: &crate::room::Action,
) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    if cause.is_none() && !sample_root() {
        return tracing::Span::none();
    }
    let kind = action_kind(action);
    let (name, player) = match origin {
        crate::observe::Origin::Socket { player_id, .. } => ("ws.message", player_id.as_str()),
        _ => ("room.command", ""),
    };
    let parent = cause.and_then(|c| c.id());
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "room_command",
        otel.name = %format!("{name} {kind}"),
        otel.kind = if name == "ws.message" { "server" } else { "internal" },
        karaoke.room.code = %room_code,
        karaoke.player.id = %player,
        "karaoke.message.type" = %kind,
        karaoke.outcome = tracing::field::Empty,
        karaoke.room.version = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        // Declared so that `record` can set it: tracing ignores undeclared fields.
        otel.status_code = tracing::field::Empty,
    )
}

/// A command's outcome on the current span (`command_span`'s).
pub fn record_outcome(result: &Result<crate::room::Applied, crate::protocol::Rejection>) {
    if !enabled() {
        return;
    }
    let span = tracing::Span::current();
    match result {
        Ok(applied) => {
            span.record("karaoke.outcome", "applied");
            span.record("karaoke.room.version", applied.version);
        }
        Err(why) => {
            span.record("karaoke.outcome", "rejected");
            span.record("error.type", why.code.as_str());
            span.record("otel.status_code", "error");
        }
    }
}

/// The fan-out of one event to a room's sockets and watchers.
pub fn broadcast_span(room_code: &str, kind: &str, version: u64, sockets: usize) -> tracing::Span {
    // Only inside a recorded command: a broadcast is never a trace of its own.
    if !enabled() || tracing::Span::current().is_disabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "room_broadcast",
        otel.name = %format!("room.broadcast {kind}"),
        karaoke.room.code = %room_code,
        "karaoke.event.type" = %kind,
        karaoke.room.version = version,
        karaoke.broadcast.sockets = sockets as u64,
    )
}

/// A socket's join: filled in with `record_join` once its outcome is known.
pub fn join_span(room_code: &str, player_id: &str, token: Option<&str>) -> tracing::Span {
    if !enabled() || !sample_root() {
        return tracing::Span::none();
    }
    let token_form = token_form(token);
    tracing::info_span!(
        target: TARGET,
        "ws_join",
        otel.name = "ws.join",
        otel.kind = "server",
        karaoke.room.code = %room_code,
        karaoke.player.id = %player_id,
        karaoke.token.form = %token_form,
        karaoke.outcome = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
    )
}

/// How a join's token is written, by its dot-separated parts (as `auth` reads it):
/// three a JWT, two the legacy form.
pub fn token_form(token: Option<&str>) -> &'static str {
    match token
        .filter(|t| !t.is_empty())
        .map(|t| t.split('.').count())
    {
        None | Some(0) => "none",
        Some(3) => "jwt",
        Some(2) => "legacy",
        Some(_) => "malformed",
    }
}

/// A join's outcome: `None` joined, `Some(code)` refused with that error code.
pub fn record_join(span: &tracing::Span, refused: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    match refused {
        None => {
            span.record("karaoke.outcome", "joined");
        }
        Some(code) => {
            span.record("karaoke.outcome", "refused");
            span.record("error.type", code);
        }
    }
}

/// One persistence round trip: a child of the first stored row's trace, linked to
/// the other rows' (`join_traces`); `traced` says whether any row has a trace,
/// otherwise the batch is a new trace, sampled like any.
pub fn persist_span(backend: &str, rows: usize, traced: bool) -> tracing::Span {
    if !enabled() || (!traced && !sample_root()) {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "persist_batch",
        otel.name = "persist.batch",
        otel.kind = "client",
        db.system.name = %backend,
        db.operation.name = "write_batch",
        db.operation.batch.size = rows as u64,
        karaoke.persist.rows = rows as u64,
        karaoke.outcome = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// A persistence round trip's outcome.
pub fn record_persist(span: &tracing::Span, outcome: &str, error: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    span.record("karaoke.outcome", outcome);
    if let Some(error) = error {
        span.record("error.type", error);
        span.record("otel.status_code", "error");
    }
}

/// Start-up: the store opened, migrated, rooms loaded and replayed.
pub fn restore_span(backend: &str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "rooms_restore",
        otel.name = "rooms.restore",
        db.system.name = %backend,
        karaoke.rooms.restored = tracing::field::Empty,
        karaoke.rooms.failed = tracing::field::Empty,
    )
}

/// Graceful shutdown, from `shutdown_started` to `shutdown_complete`.
pub fn shutdown_span() -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "server_shutdown",
        otel.name = "server.shutdown",
        karaoke.shutdown.drained = tracing::field::Empty,
    )
}

/// `SetReady` → `set_ready`: the action's name, as the event log spells kinds.
/// Reads only the variant's name from its `Debug` output: formatting stops at the
/// first character after it, so a large action (canvas operations) costs nothing.
fn action_kind(action: &crate::room::Action) -> String {
    use std::fmt::Write as _;
    struct Name(String);
    impl std::fmt::Write for Name {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for c in s.chars() {
                if !c.is_ascii_alphanumeric() {
                    return Err(std::fmt::Error);
                }
                if c.is_ascii_uppercase() {
                    if !self.0.is_empty() {
                        self.0.push('_');
                    }
                    self.0.push(c.to_ascii_lowercase());
                } else {
                    self.0.push(c);
                }
            }
            Ok(())
        }
    }
    let mut name = Name(String::with_capacity(24));
    let _ = write!(name, "{action:?}");
    name.0
}

// ---- trace context ------------------------------------------------------------------

/// The current span, to be continued by a room's owner (an admin call's command).
/// `None` when not exporting, so a room's command costs nothing more.
pub fn cause() -> Option<Box<tracing::Span>> {
    if !enabled() {
        return None;
    }
    let span = tracing::Span::current();
    (!span.is_disabled()).then(|| Box::new(span))
}

/// The current span's context if it is sampled: stored with a row so that the
/// persistence batch that writes it joins the row's trace.
pub fn current_link() -> Option<Box<SpanContext>> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| Box::new(sc))
}

/// Makes `span` a child of the first sampled context in `links` and links it to the
/// others (a batch stores rows of many traces), at most `MAX_LINKS`.
pub fn join_traces<'a>(span: &tracing::Span, links: impl Iterator<Item = &'a SpanContext>) {
    const MAX_LINKS: usize = 32;
    let mut parent_set = false;
    for sc in links.take(MAX_LINKS + 1) {
        if !parent_set {
            let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
            parent_set = span.set_parent(cx).is_ok();
        } else {
            span.add_link(sc.clone());
        }
    }
}

/// Reads a W3C `traceparent` (and `tracestate`) from request headers.
struct Headers<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one admin call (`tonic`'s `trace_fn`): a server span named by its
/// gRPC method, a child of the caller's trace when the call carries `traceparent`.
pub fn admin_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    // Health probes and reflection are not admin calls.
    if !enabled() || path.starts_with("/grpc.") {
        return tracing::Span::none();
    }
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    let context = parent.span().span_context().clone();
    let continued = context.is_valid();
    // A caller's sampled trace is followed only where the sampler is parent-based;
    // otherwise (and for an unsampled caller) the call is sampled like a new trace,
    // so a caller cannot make every call recorded by setting the flag.
    let follow = continued && context.is_sampled() && PARENT_BASED.load(Ordering::Relaxed);
    if !follow && !sample_root() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "admin_call",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if continued {
        let _ = span.set_parent(parent);
    }
    span
}

/// Wraps the admin service: records each call's gRPC status on its span
/// (`rpc.grpc.status_code`; the span is an error for the codes the semantic
/// conventions call server errors). A refused call answers in its headers; a
/// successful one only in its trailers, after the body, so a 200 without
/// `grpc-status` in the headers counts as OK.
#[derive(Clone)]
pub struct RecordStatus<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for RecordStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tonic::codegen::Service<tonic::codegen::http::Request<B>> for RecordStatus<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<R>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<S::Response, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let call = self.0.call(request);
        Box::pin(async move {
            let response = call.await;
            if enabled()
                && let Ok(response) = &response
            {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(if response.status().is_success() { 0 } else { 2 });
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code);
                // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
                // DATA_LOSS: the server failed, not the caller.
                if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
                    span.record("otel.status_code", "error");
                }
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_map_to_the_sdk() {
        assert!(matches!(sampler(OtelSampler::AlwaysOn), Sampler::AlwaysOn));
        assert!(matches!(
            sampler(OtelSampler::ParentBasedTraceIdRatio(0.01)),
            Sampler::ParentBased(_)
        ));
        assert_eq!(root_ratio(OtelSampler::ParentBasedTraceIdRatio(0.01)), 0.01);
        assert_eq!(root_ratio(OtelSampler::ParentBasedAlwaysOff), 0.0);
        assert_eq!(root_ratio(OtelSampler::TraceIdRatio(0.5)), 0.5);
    }

    #[test]
    fn token_forms_are_told_apart_by_their_parts() {
        assert_eq!(token_form(None), "none");
        assert_eq!(token_form(Some("")), "none");
        assert_eq!(token_form(Some("a.b.c")), "jwt");
        assert_eq!(token_form(Some("a.b")), "legacy");
        assert_eq!(token_form(Some("abc")), "malformed");
    }

    #[test]
    fn action_kinds_are_snake_case() {
        assert_eq!(action_kind(&crate::room::Action::Connect), "connect");
        assert_eq!(
            action_kind(&crate::room::Action::SetReady { is_ready: true }),
            "set_ready"
        );
    }

    #[test]
    fn an_outage_starts_once_and_ends_when_every_signal_works_again() {
        let h = Health::default();
        h.failed(TRACES, "down", 3);
        h.failed(METRICS, "down", 0);
        assert_eq!(h.failing.load(Ordering::Relaxed), TRACES | METRICS);
        // Traces work again, metrics still fail: the outage goes on.
        h.succeeded(TRACES);
        assert_eq!(h.failing.load(Ordering::Relaxed), METRICS);
        h.succeeded(METRICS);
        assert_eq!(h.failing.load(Ordering::Relaxed), 0);
        assert_eq!(h.spans_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(h.export_failures.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_queue_overflow_lasts_until_the_queue_has_been_quiet() {
        let h = Health::default();
        h.overflowed.store(true, Ordering::Relaxed);
        h.check_overflow();
        assert_eq!(h.failing.load(Ordering::Relaxed), QUEUE);
        // Exports still succeed under overload: the outage goes on.
        h.succeeded(TRACES);
        assert_eq!(h.failing.load(Ordering::Relaxed), QUEUE);
        // Quiet for long enough (as if the last overflow were long ago): the next
        // export ends it.
        h.last_overflow_ms.store(0, Ordering::Relaxed);
        h.succeeded(TRACES);
        assert_eq!(h.failing.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn disabled_telemetry_captures_nothing() {
        assert!(!enabled());
        assert!(cause().is_none());
        assert!(current_link().is_none());
    }
}
