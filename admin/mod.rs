//! The admin plane: a tonic gRPC service on its own port for the Next.js backend and
//! operators (see docs/admin-api.md and proto/karaoke/admin/v1/admin.proto).
//!
//! Every mutating call becomes a command applied by the room's owner, exactly like a
//! player's message (`Origin::Server`), so versions, broadcasts, metrics and log lines
//! are the same whichever way a change arrives.

pub mod auth;
pub mod codec;
pub mod convert;
pub mod service;

/// Code generated from the .proto, and its descriptor set for server reflection.
pub mod pb {
    tonic::include_proto!("karaoke.admin.v1");

    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
}

use crate::server::App;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest admin request accepted, in bytes (tonic's default, stated so it is a
/// decision): a larger one is refused by tonic with OUT_OF_RANGE before it is decoded.
/// The largest real request, a CreateRoom with a host and settings, is a few KiB.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The admin plane's health reporter, so readiness can follow the server's.
pub type Health = tonic_health::server::HealthReporter;

/// Serves the admin plane on `listener` until `stop` is cancelled.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    health: Health,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let admin = tonic::service::interceptor::InterceptedService::new(
        pb::room_admin_server::RoomAdminServer::new(service::AdminService::new(app.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        auth::BearerAuth::new(app.config.admin_token.as_ref()),
    );
    health
        .set_serving::<pb::room_admin_server::RoomAdminServer<service::AdminService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    server_builder(&app.config)?
        // telemetry: a span per call, continuing the caller's `traceparent`.
        .trace_fn(crate::telemetry::otel::admin_span)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // telemetry: each call's gRPC status on its span.
        .add_service(crate::telemetry::otel::RecordStatus(admin))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.cancelled_owned(),
        )
        .await?;
    Ok(())
}

/// The transport, with TLS when configured. Building it parses the certificates, so
/// start-up calls it too: a bad certificate stops the server instead of leaving the
/// admin plane silently down.
pub fn server_builder(
    config: &crate::config::Config,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let builder = tonic::transport::Server::builder();
    let Some(tls) = &config.admin_tls else {
        return Ok(builder);
    };
    let mut tls_config = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem.0),
    );
    if let Some(ca) = &tls.client_ca_pem {
        tls_config = tls_config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
    }
    builder.tls_config(tls_config)
}

/// Marks the admin plane not serving (shutdown has begun).
pub async fn set_not_serving(health: &Health) {
    health
        .set_not_serving::<pb::room_admin_server::RoomAdminServer<service::AdminService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// Ends every open health `Watch` stream by forgetting the statuses (their senders
/// are dropped). Called just before the admin plane stops: its graceful stop waits
/// for every open stream, and a health watcher's stream would otherwise never end.
pub async fn end_health_watches(health: &Health) {
    use tonic::server::NamedService;
    type Admin = pb::room_admin_server::RoomAdminServer<service::AdminService>;
    let mut health = health.clone();
    health.clear_service_status("").await;
    health.clear_service_status(Admin::NAME).await;
}
