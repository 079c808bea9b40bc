//! A minimal OTLP/gRPC receiver for benchmarks: accepts traces and metrics, counts
//! them, keeps nothing. Stands in for a collector where none can be installed
//! (`bench/otel-workloads.sh`).
//!
//!     cargo build --release --example otlp-sink
//!     target/release/examples/otlp-sink [PORT]     # default 0: any free port
//!
//! Prints `{"otlp_sink_listening":PORT}` once listening, and on SIGTERM/SIGINT
//! `{"spans":N,"span_requests":N,"metric_requests":N}`.

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
    span_requests: AtomicU64,
    metric_requests: AtomicU64,
}

#[derive(Clone, Default)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        self.0.span_requests.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metric_requests.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        None => 0,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            eprintln!("usage: otlp-sink [PORT]");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("otlp-sink: cannot listen on 127.0.0.1:{port}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("{{\"otlp_sink_listening\":{port}}}");
    let sink = Sink::default();
    let counts = sink.0.clone();
    let stop = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .add_service(MetricsServiceServer::new(sink))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await;
    println!(
        "{{\"spans\":{},\"span_requests\":{},\"metric_requests\":{}}}",
        counts.spans.load(Ordering::Relaxed),
        counts.span_requests.load(Ordering::Relaxed),
        counts.metric_requests.load(Ordering::Relaxed)
    );
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otlp-sink: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
