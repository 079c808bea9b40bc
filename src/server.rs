//! Builds the application from settings and a bound listener, and stops it.

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::observe::{Observer, Telemetry};
use crate::owner::RoomContext;
use crate::registry::Registry;
use crate::telemetry::{Metrics, metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything a connection handler needs, shared by reference count.
pub struct App {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub keys: TokenKeys,
    /// Cancelled once, on SIGTERM/SIGINT or `ServerHandle::shutdown`: the accept loop
    /// stops, readiness turns 503, every socket closes with 1012.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them to finish.
    pub tasks: TaskTracker,
}

impl App {
    pub fn is_ready(&self) -> bool {
        !self.shutdown.is_cancelled()
    }
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    accept: tokio::task::JoinHandle<()>,
    /// Closes the players' port; cancelled after the sockets have drained.
    stop_accepting: CancellationToken,
    /// The admin plane's gRPC address.
    pub admin_addr: SocketAddr,
    admin: tokio::task::JoinHandle<()>,
    admin_health: crate::admin::Health,
    /// Stops the admin plane; cancelled last, after sockets have drained.
    admin_stop: CancellationToken,
}

/// Binds the players' port and starts serving.
pub async fn start(config: Config) -> std::io::Result<ServerHandle> {
    let addr = SocketAddr::new(config.bind_addr, config.port);
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    // Without an admin token the admin plane must not be reachable from the network.
    let admin_ip = match config.admin_token {
        Some(_) => config.admin_bind_addr,
        None => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    };
    let admin_listener = TcpListener::bind((admin_ip, config.admin_port)).await?;
    Ok(serve(listener, admin_listener, config))
}

/// Connections the kernel queues before `accept` takes them. `TcpListener::bind`
/// uses 128, which a reconnect storm (every client of a restarted node at once)
/// overflows: the dropped SYNs are retried only after a second. The kernel caps
/// this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Starts serving on already bound listeners (players' port, admin port).
pub fn serve(listener: TcpListener, admin_listener: TcpListener, config: Config) -> ServerHandle {
    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    let observers: Vec<Arc<dyn Observer>> = vec![Arc::new(Telemetry(metrics.clone()))];
    let ctx = Arc::new(RoomContext {
        metrics: metrics.clone(),
        observers: observers.into(),
        heartbeat_interval: config.heartbeat_interval,
        history_limit: config.room_history_limit,
        max_sockets: config.max_sockets_per_room,
        shutdown: shutdown.clone(),
    });
    let app = Arc::new(App {
        keys: TokenKeys::new(&config.shared_secret.0),
        registry: Registry::new(ctx),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
        config,
    });
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    if let Some(interval) = app.config.metrics_flush_interval {
        tokio::spawn(metrics::flush_loop(metrics, interval, shutdown));
    }
    tracing::info!(port = addr.port(), addr = %addr, "realtime_server_listening");
    let stop_accepting = CancellationToken::new();
    let accept = tokio::spawn(crate::edge::accept_loop(
        listener,
        app.clone(),
        stop_accepting.clone(),
    ));
    let admin_addr = admin_listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    if app.config.admin_token.is_none() {
        tracing::warn!(
            port = admin_addr.port(),
            "ADMIN_TOKEN is not set: the admin plane listens on loopback only"
        );
    }
    tracing::info!(
        port = admin_addr.port(),
        addr = %admin_addr,
        tls = app.config.admin_tls.is_some(),
        "admin_plane_listening"
    );
    let (admin_health, health_service) = tonic_health::server::health_reporter();
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn({
        let (app, health, stop) = (app.clone(), admin_health.clone(), admin_stop.clone());
        async move {
            if let Err(e) =
                crate::admin::serve(app, admin_listener, health, health_service, stop).await
            {
                tracing::error!(error = %e, "admin_plane_failed");
            }
        }
    });
    ServerHandle {
        addr,
        app,
        accept,
        stop_accepting,
        admin_addr,
        admin,
        admin_health,
        admin_stop,
    }
}

impl ServerHandle {
    pub fn registry(&self) -> &Registry {
        &self.app.registry
    }

    /// Graceful shutdown: readiness 503 and no new sockets, close open sockets with
    /// 1012 once their queued frames are written, wait for them (up to the
    /// configured grace), then close the port.
    pub async fn shutdown(self) {
        tracing::info!("shutdown_started");
        crate::admin::set_not_serving(&self.admin_health).await;
        self.app.shutdown.cancel();
        self.app.tasks.close();
        let drained = tokio::time::timeout(self.app.config.shutdown_grace, self.app.tasks.wait())
            .await
            .is_ok();
        self.stop_accepting.cancel();
        let _ = self.accept.await;
        crate::admin::end_health_watches(&self.admin_health).await;
        self.admin_stop.cancel();
        let _ = self.admin.await;
        tracing::info!(drained, "shutdown_complete");
    }
}
