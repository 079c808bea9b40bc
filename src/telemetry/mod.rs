//! Telemetry in one place: JSON logs (`log`), counters and gauges (`metrics`).

pub mod log;
pub mod metrics;

pub use metrics::Metrics;
