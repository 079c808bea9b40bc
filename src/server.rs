//! Builds the application from settings and a bound listener, and stops it.

use crate::auth::TokenKeys;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::edge::admission::{AddressLimiter, ConnectionLimits};
use crate::observe::{Observer, Telemetry};
use crate::owner::RoomContext;
use crate::owner::WatcherCount;
use crate::registry::{ClusterParts, Registry};
use crate::store::writer::{self, WriterConfig, WriterHandle};
use crate::store::{Loaded, Store, StoreError};
use crate::telemetry::{Metrics, metrics, otel};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything a connection handler needs, shared by reference count.
pub struct App {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    pub keys: TokenKeys,
    /// Open connections on the players' port, in all and per address.
    pub limits: Arc<ConnectionLimits>,
    /// Client-seeded rooms per address per minute.
    pub seed_limiter: AddressLimiter,
    /// Failed broadcast-hook secrets per address per minute.
    pub hook_failures: AddressLimiter,
    /// Cancelled once, on SIGTERM/SIGINT or `ServerHandle::shutdown`: the accept loop
    /// stops, readiness turns 503, every socket closes with 1012.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them to finish.
    pub tasks: TaskTracker,
}

impl App {
    /// Shutdown has begun: new work is refused.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Why `/readyz` says 503, if it does: shutting down, or (cluster mode) out of
    /// touch with Redis (its own inbox probe has not come back lately).
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if self.shutdown.is_cancelled() {
            return Some("shutting down");
        }
        match self.registry.cluster() {
            Some(parts) if parts.is_handing_over() => Some("shutting down"),
            Some(parts) if !parts.cluster.is_ready() => Some("cluster unreachable"),
            _ => None,
        }
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
    /// The persistence writer, flushed at shutdown (`None` with `memory:`).
    writer: Option<WriterHandle>,
    /// Cluster mode: stops membership and lease upkeep, last.
    cluster_stop: Option<CancellationToken>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("admin plane TLS: {0}")]
    AdminTls(#[from] tonic::transport::Error),
    #[error("cluster mode: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Binds both ports, opens the store (migrations, restored rooms), starts serving.
pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
    start_with(config, Vec::new()).await
}

/// Like `start`, with more observers of every room's changes (embedding code, and
/// tests that need to see or disturb the change path).
pub async fn start_with(
    mut config: Config,
    observers: Vec<Arc<dyn Observer>>,
) -> Result<ServerHandle, StartError> {
    crate::admin::server_builder(&config)?;
    fit_connection_cap(&mut config);
    let (listener, admin_listener) = bind(&config).await?;
    let store = open_store(&config).await?;
    let stop_cluster = CancellationToken::new();
    let cluster = match &config.cluster {
        Some(settings) => {
            let metrics = Arc::new(Metrics::default());
            let (cluster, inbox) =
                Cluster::start(&config, settings, metrics.clone(), stop_cluster.clone()).await?;
            Some(ClusterStart {
                cluster,
                inbox,
                metrics,
                stop: stop_cluster,
            })
        }
        None => None,
    };
    Ok(serve(
        listener,
        admin_listener,
        config,
        store,
        observers,
        cluster,
    ))
}

/// Cluster mode's parts made before serving: the cluster, its inbox, the metrics it
/// already counts into (the node's own), and what stops its loops.
pub struct ClusterStart {
    cluster: Arc<Cluster>,
    inbox: tokio::sync::mpsc::Receiver<crate::cluster::wire::Message>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

/// File descriptors kept free of player connections: up to 64 refused connections
/// being answered (`edge::OVERFLOW_ANSWERED`), the database pool (4), the admin
/// plane's connections, listeners, epoll, stdout. 128 lets a common hard limit of
/// 20,000 hold 19,800 players.
const FD_RESERVE: u64 = 128;

/// Raises the soft open-file limit to the hard one, and lowers `MAX_CONNECTIONS` if
/// the limit cannot hold it: the cap must bite before `accept` runs out of file
/// descriptors, or the admin plane and the database would starve with it.
fn fit_connection_cap(config: &mut Config) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "fd_limit_unknown");
            return;
        }
    };
    let room = usize::try_from(limit.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX);
    if config.max_connections > room {
        tracing::warn!(
            configured = config.max_connections,
            used = room,
            fd_limit = limit,
            "max_connections_lowered_to_fit_the_fd_limit"
        );
        config.max_connections = room;
    }
}

/// Connects to the configured database, applies migrations and loads every open
/// room; rooms that cannot be restored are reported, one line each.
pub async fn open_store(config: &Config) -> Result<Option<(Store, Loaded)>, StoreError> {
    let span = otel::restore_span(config.database.system_name());
    tracing::Instrument::instrument(open_store_in(config, &span), span.clone()).await
}

async fn open_store_in(
    config: &Config,
    span: &tracing::Span,
) -> Result<Option<(Store, Loaded)>, StoreError> {
    let Some(store) = Store::connect(&config.database, config.persist_statement_timeout).await?
    else {
        tracing::info!("persistence_disabled");
        return Ok(None);
    };
    store.migrate().await?;
    if config.cluster.is_some() {
        // Cluster mode takes rooms over one at a time, on demand and as nodes leave:
        // the store is the truth for every node, none loads it all.
        tracing::info!(backend = ?config.database, "rooms_taken_over_on_demand");
        return Ok(Some((store, Loaded::default())));
    }
    let loaded = store.load().await?;
    for failure in &loaded.failures {
        tracing::error!(
            roomCode = %failure.room_code,
            version = failure.version,
            reason = %failure.reason,
            "room_restore_failed"
        );
    }
    span.record("karaoke.rooms.restored", loaded.rooms.len() as u64);
    span.record("karaoke.rooms.failed", loaded.failures.len() as u64);
    tracing::info!(
        backend = ?config.database,
        restored = loaded.rooms.len(),
        failed = loaded.failures.len(),
        "rooms_restored"
    );
    Ok(Some((store, loaded)))
}

async fn bind(config: &Config) -> std::io::Result<(TcpListener, TcpListener)> {
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
    Ok((listener, admin_listener))
}

/// Connections the kernel queues before `accept` takes them. `TcpListener::bind`
/// uses 128, which a reconnect storm (every client of a restarted node at once)
/// overflows: the dropped SYNs are retried only after a second. The kernel caps
/// this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Starts serving on already bound listeners (players' port, admin port), with the
/// store and the rooms it loaded, if persistence is on.
pub fn serve(
    listener: TcpListener,
    admin_listener: TcpListener,
    config: Config,
    store: Option<(Store, Loaded)>,
    extra_observers: Vec<Arc<dyn Observer>>,
    cluster: Option<ClusterStart>,
) -> ServerHandle {
    let metrics = cluster
        .as_ref()
        .map(|c| c.metrics.clone())
        .unwrap_or_default();
    // The OTLP metrics read these very counters (no-op unless exported).
    otel::observe(&metrics);
    let shutdown = CancellationToken::new();
    let mut observers: Vec<Arc<dyn Observer>> = vec![Arc::new(Telemetry(metrics.clone()))];
    // Cluster mode: the writer tells the registry of rooms another node has fenced.
    let fenced: Arc<std::sync::OnceLock<std::sync::Weak<Registry>>> = Arc::default();
    let mut parts = None;
    let (writer, loaded) = match store {
        Some((store, loaded)) => {
            let on_fenced = cluster.as_ref().map(|_| {
                let fenced = fenced.clone();
                Box::new(move |code: &str, epoch: u64| {
                    if let Some(registry) = fenced.get().and_then(|r| r.upgrade()) {
                        registry.lost(code, Some(epoch), "another node took the room over");
                    }
                }) as writer::OnFenced
            });
            let (persistence, writer) = writer::start(
                store.clone(),
                WriterConfig {
                    limit: config.persist_queue_limit,
                    queue_bytes: config.persist_queue_bytes,
                    batch_max: config.persist_batch_max,
                    batch_bytes: config.persist_batch_bytes,
                    flush_interval: config.persist_flush_interval,
                    on_fenced,
                },
                metrics.clone(),
            );
            if let Some(c) = &cluster {
                parts = Some(ClusterParts::new(
                    c.cluster.clone(),
                    store,
                    persistence.clone(),
                ));
            }
            observers.push(persistence);
            (Some(writer), loaded)
        }
        None => (None, Loaded::default()),
    };
    observers.extend(extra_observers);
    let ctx = Arc::new(RoomContext {
        metrics: metrics.clone(),
        observers: observers.into(),
        heartbeat_interval: config.heartbeat_interval,
        history_limit: config.room_history_limit,
        // Half a socket's queue: the rest is for hello_ack.
        history_bytes: config.outbound_queue_bytes / 2,
        max_sockets: config.max_sockets_per_room,
        max_sockets_per_player: config.max_sockets_per_player,
        checkpoint_interval: config.snapshot_interval,
        shutdown: shutdown.clone(),
        watchers: Arc::new(WatcherCount {
            open: std::sync::atomic::AtomicUsize::new(0),
            max: config.max_watchers,
            max_per_room: config.max_watchers_per_room,
        }),
        seeded_idle_ttl: config.seeded_room_idle_ttl,
        socket_queue: (config.outbound_queue_limit, config.outbound_queue_bytes),
        cluster: cluster.as_ref().map(|c| c.cluster.clone()),
    });
    let mut registry = Registry::new(ctx, loaded.known_codes, config.max_seeded_rooms);
    if let Some(parts) = parts {
        registry = registry.with_cluster(parts);
    }
    let registry = Arc::new(registry);
    for room in loaded.rooms {
        registry.restore(room);
    }
    let mut cluster_stop = None;
    if let Some(ClusterStart {
        mut inbox, stop, ..
    }) = cluster
    {
        let _ = fenced.set(Arc::downgrade(&registry));
        tokio::spawn(crate::registry::upkeep(
            Arc::downgrade(&registry),
            stop.clone(),
        ));
        let weak = Arc::downgrade(&registry);
        tokio::spawn(async move {
            while let Some(message) = inbox.recv().await {
                let Some(registry) = weak.upgrade() else {
                    break;
                };
                registry.dispatch(message);
            }
        });
        cluster_stop = Some(stop);
    }
    let app = Arc::new(App {
        keys: TokenKeys::new(&config.shared_secret.0, config.token_ttl_max_secs),
        limits: ConnectionLimits::new(config.max_connections, config.max_connections_per_ip),
        seed_limiter: AddressLimiter::new(config.seeded_rooms_per_ip_per_minute),
        hook_failures: AddressLimiter::new(crate::edge::hook::FAILED_SECRETS_PER_MINUTE),
        registry,
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
    if app.config.broadcast_secret.is_some() {
        tracing::warn!(
            "REALTIME_BROADCAST_SECRET is set: POST /api/broadcast is open on the players' \
             port (a migration bridge; its secret travels in request bodies; move the backend \
             to the admin plane)"
        );
    }
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
        writer,
        cluster_stop,
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
        let span = otel::shutdown_span();
        tracing::Instrument::instrument(self.shutdown_in(&span), span.clone()).await
    }

    async fn shutdown_in(self, span: &tracing::Span) {
        tracing::info!("shutdown_started");
        crate::admin::set_not_serving(&self.admin_health).await;
        // Cluster mode: every room goes to its next owner now, saved first, so that
        // nobody waits for a lease to expire.
        self.app
            .registry
            .hand_over_all(self.app.config.shutdown_grace)
            .await;
        self.app.shutdown.cancel();
        self.app.tasks.close();
        let drained = tokio::time::timeout(self.app.config.shutdown_grace, self.app.tasks.wait())
            .await
            .is_ok();
        // Every room's final state, then everything queued, reaches the database.
        for room in self.app.registry.handles() {
            room.checkpoint().await;
        }
        if let Some(writer) = self.writer {
            let unwritten = writer.finish(self.app.config.shutdown_grace).await;
            if unwritten > 0 {
                tracing::error!(unwritten, "persist_queue_lost_at_shutdown");
            } else {
                tracing::info!("persist_flushed");
            }
        }
        self.stop_accepting.cancel();
        let _ = self.accept.await;
        crate::admin::end_health_watches(&self.admin_health).await;
        self.admin_stop.cancel();
        let _ = self.admin.await;
        if let Some(stop) = &self.cluster_stop {
            stop.cancel();
        }
        span.record("karaoke.shutdown.drained", drained);
        tracing::info!(drained, "shutdown_complete");
    }
}
