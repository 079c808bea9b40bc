//! Telemetry in one place: JSON logs (`log`), counters and gauges (`metrics`), and
//! their export with traces over OTLP (`otel`).

pub mod log;
pub mod metrics;
pub mod otel;

pub use metrics::Metrics;
