//! Settings, read once from the environment and validated before anything starts.
//!
//! Each bad value produces one line naming the variable; the server never starts
//! half-configured. docs/configuration.md lists every variable. [`SETTINGS`] names
//! them for the command line, which offers each as a flag (`src/cli.rs`) and hands
//! the values to the same [`Config::from_lookup`].

use crate::protocol::canvas::ImagePolicy;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// Address the players' port binds to (`BIND_ADDR`).
    pub bind_addr: IpAddr,
    /// Players' HTTP/WebSocket port (`PORT`); 0 picks a free port.
    pub port: u16,
    /// gRPC admin plane port (`ADMIN_PORT`); 0 picks a free port.
    pub admin_port: u16,
    /// Bearer token the admin plane requires (`ADMIN_TOKEN`). `None`: the admin plane
    /// binds to loopback only.
    pub admin_token: Option<Secret>,
    /// Address the admin plane binds to when a token is set (`ADMIN_BIND_ADDR`).
    pub admin_bind_addr: IpAddr,
    /// TLS for the admin plane (`ADMIN_TLS_CERT_FILE` + `ADMIN_TLS_KEY_FILE`, and
    /// `ADMIN_TLS_CLIENT_CA_FILE` to require client certificates).
    pub admin_tls: Option<AdminTls>,
    /// Lifetime of minted join tokens when the caller gives none.
    pub token_ttl_default_secs: u64,
    /// Longest lifetime a caller may ask for.
    pub token_ttl_max_secs: u64,
    pub log_level: LogLevel,
    /// Period of the `metrics_flush` log line; `None` disables it.
    pub metrics_flush_interval: Option<Duration>,
    /// HMAC secret for join tokens.
    pub shared_secret: Secret,
    /// True when no secret was configured and a random one was made.
    pub secret_is_random: bool,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub allow_client_seeded_rooms: bool,
    /// Largest accepted WebSocket message (close 1009 above it).
    pub max_message_bytes: usize,
    /// Sustained messages per second one socket may send.
    pub rate_limit_per_sec: u32,
    /// Messages a socket may send in a burst above the sustained rate.
    pub rate_limit_burst: u32,
    /// Frames queued for one socket before it is closed with 1013.
    pub outbound_queue_limit: usize,
    /// Events each room keeps for `lastVersion` resume.
    pub room_history_limit: usize,
    /// Live sockets one room accepts.
    pub max_sockets_per_room: usize,
    /// Live sockets one player may have in one room.
    pub max_sockets_per_player: usize,
    /// How long shutdown waits for sockets to close and writes to flush.
    pub shutdown_grace: Duration,
    /// Where rooms are persisted (`DATABASE_URL`).
    pub database: Database,
    /// Writes (events + snapshots) queued while the database is slow or down; at the
    /// bound state changes are refused with `unavailable`.
    pub persist_queue_limit: usize,
    /// Rows written in one round trip at most.
    pub persist_batch_max: usize,
    /// How long the writer waits to fill a batch: the most a `kill -9` can lose.
    pub persist_flush_interval: Duration,
    /// How often a changed room's whole state is snapshotted.
    pub snapshot_interval: Duration,
    /// Bytes of rows queued for the database at most (with `persist_queue_limit`).
    pub persist_queue_bytes: usize,
    /// Bytes one write round trip carries at most, so no batch holds the database long.
    pub persist_batch_bytes: usize,
    /// Longest any one database statement may take before it is abandoned and retried
    /// on a fresh connection.
    pub persist_statement_timeout: Duration,
    /// Bytes queued for one socket before it is closed with 1013 (with
    /// `outbound_queue_limit`).
    pub outbound_queue_bytes: usize,
    /// Open connections on the players' port at most; past it new ones get HTTP 503.
    pub max_connections: usize,
    /// Open connections from one source address at most.
    pub max_connections_per_ip: usize,
    /// How long a connection may take to send a request's headers, and how long an
    /// idle keep-alive connection is kept.
    pub http_header_timeout: Duration,
    /// How long an upgraded socket may go without a successful `join_room`.
    pub join_timeout: Duration,
    /// Live client-seeded rooms at most.
    pub max_seeded_rooms: usize,
    /// Rooms one source address may seed per minute.
    pub seeded_rooms_per_ip_per_minute: u32,
    /// A client-seeded room with no socket for this long is closed.
    pub seeded_room_idle_ttl: Duration,
    /// The secret of the existing backend's HTTP broadcast hook
    /// (`REALTIME_BROADCAST_SECRET`); `None`: `/api/broadcast` does not exist.
    pub broadcast_secret: Option<Secret>,
    /// Open `WatchRoom` streams at most, in all and per room.
    pub max_watchers: usize,
    pub max_watchers_per_room: usize,
    /// Where canvas images may come from (`IMAGE_SOURCES`, default `self,data`).
    pub image_sources: ImagePolicy,
    /// OpenTelemetry export (the standard `OTEL_*` variables); `None`: nothing is
    /// exported (no endpoint set, or `OTEL_SDK_DISABLED=true`).
    pub otel: Option<Otel>,
    /// Cluster mode (`REDIS_URL` set): several nodes share rooms over Redis, with
    /// Postgres as the shared store. `None`: one node.
    pub cluster: Option<Cluster>,
}

/// Settings of cluster mode (docs/cluster.md).
#[derive(Clone)]
pub struct Cluster {
    /// `REDIS_URL` (`redis://…` or `rediss://…`); may hold a password, never printed.
    pub redis_url: Secret,
    /// `NODE_ID`: this node's stable name in the cluster (default: host name plus a
    /// random suffix). Letters, digits, `-`, `_`, `.`; at most 64.
    pub node_id: String,
    /// `REDIS_KEY_PREFIX`: every key and channel this cluster uses starts with it, so
    /// several clusters (or tests) can share one Redis.
    pub key_prefix: String,
    /// `CLUSTER_LEASE_TTL_MS`: how long a room's lease and a node's membership live
    /// without renewal; a dead node's rooms move after about this long.
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// Where and how traces and metrics are exported over OTLP/gRPC.
#[derive(Debug, Clone, PartialEq)]
pub struct Otel {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// `None`: no traces (`OTEL_TRACES_EXPORTER=none`, or only metrics configured).
    pub traces_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub metrics_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,…`, values percent-decoded): sent
    /// with every export, often an API key, so never printed.
    pub headers: OtelHeaders,
    /// `OTEL_SERVICE_NAME`, else `service.name` of the resource attributes, else
    /// `karaoke-realtime`.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES` (`key=value,…`), without `service.name`.
    pub resource_attributes: Vec<(String, String)>,
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler: OtelSampler,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60000).
    pub metric_export_interval: std::time::Duration,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (ms, default 10000): the most one export may take.
    pub export_timeout: std::time::Duration,
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms, default 5000): how long finished spans wait to
    /// be sent in one batch.
    pub span_batch_delay: std::time::Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048): spans waiting at most; more are
    /// dropped and counted (`otel_spans_dropped_total`).
    pub span_queue_limit: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512).
    pub span_batch_max: usize,
}

/// Export headers; the values never print.
#[derive(Clone, Default, PartialEq)]
pub struct OtelHeaders(pub Vec<(String, String)>);

impl std::fmt::Debug for OtelHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=<redacted>")))
            .finish()
    }
}

/// The samplers of the OpenTelemetry specification that need no remote service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OtelSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

/// The persistence backend, chosen by the scheme of `DATABASE_URL`.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// `memory:`: no persistence; rooms live and die with the process.
    Memory,
    /// `sqlite://path` (the default, `sqlite://data/karaoke.db`).
    Sqlite(String),
    /// `postgres://…` or `postgresql://…` (Supabase is Postgres).
    Postgres(String),
}

impl Database {
    /// The backend's name, as OpenTelemetry's `db.system.name` spells it.
    pub fn system_name(&self) -> &'static str {
        match self {
            Database::Memory => "memory",
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgresql",
        }
    }
}

impl std::fmt::Debug for Database {
    // The URL can hold a password: show only the backend.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Database::Memory => "memory",
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        })
    }
}

/// The default database: a SQLite file under ./data, so `cargo run` needs nothing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/karaoke.db";

/// One setting: its environment variable, the command-line flag that mirrors it, and
/// what it is for. `docs/configuration.md` has the full rules of each.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub env: &'static str,
    /// The long flag without its dashes (`PORT` is `--port`).
    pub flag: &'static str,
    pub help: &'static str,
    /// Its value is never shown, not even by `--help`.
    pub secret: bool,
}

const fn setting(env: &'static str, flag: &'static str, help: &'static str) -> Setting {
    Setting {
        env,
        flag,
        help,
        secret: false,
    }
}

const fn secret(env: &'static str, flag: &'static str, help: &'static str) -> Setting {
    Setting {
        env,
        flag,
        help,
        secret: true,
    }
}

/// Every variable [`Config::from_lookup`] reads, in the order it reads them (the order
/// of docs/configuration.md's table). The command line offers each as a flag; a flag
/// given wins over the variable. A test checks this list against what is read.
pub const SETTINGS: &[Setting] = &[
    setting(
        "BIND_ADDR",
        "bind-addr",
        "address the players' port binds to [default: 0.0.0.0]",
    ),
    setting(
        "PORT",
        "port",
        "players' HTTP/WebSocket port, also /health and /readyz; 0 picks one [default: 8080]",
    ),
    setting(
        "ADMIN_PORT",
        "admin-port",
        "gRPC admin plane port; 0 picks one [default: 50051]",
    ),
    secret(
        "ADMIN_TOKEN",
        "admin-token",
        "bearer token the admin plane requires (16 bytes at least); unset: admin plane on loopback only",
    ),
    setting(
        "ADMIN_BIND_ADDR",
        "admin-bind-addr",
        "address the admin plane binds to when ADMIN_TOKEN is set [default: 0.0.0.0]",
    ),
    setting(
        "ADMIN_TLS_CERT_FILE",
        "admin-tls-cert-file",
        "PEM certificate (chain) for the admin plane's TLS",
    ),
    setting(
        "ADMIN_TLS_KEY_FILE",
        "admin-tls-key-file",
        "PEM private key for the admin plane's TLS",
    ),
    setting(
        "ADMIN_TLS_CLIENT_CA_FILE",
        "admin-tls-client-ca-file",
        "PEM CA that admin clients' certificates must be signed by (mutual TLS)",
    ),
    setting(
        "ADMIN_TOKEN_MAX_TTL_SECONDS",
        "admin-token-max-ttl-seconds",
        "longest lifetime of a join token, minted or accepted [default: 86400]",
    ),
    setting(
        "ADMIN_TOKEN_TTL_SECONDS",
        "admin-token-ttl-seconds",
        "lifetime of tokens MintPlayerToken makes when asked for none [default: 14400]",
    ),
    setting(
        "LOG_LEVEL",
        "log-level",
        "debug, info, warn or error [default: info]",
    ),
    setting(
        "METRICS_FLUSH_INTERVAL_MS",
        "metrics-flush-interval-ms",
        "period of the metrics_flush log line; 0 turns it off [default: 60000]",
    ),
    secret(
        "REALTIME_SHARED_SECRET",
        "realtime-shared-secret",
        "HMAC secret for join tokens (16 bytes at least); unset: a random one per process",
    ),
    setting(
        "HEARTBEAT_INTERVAL_MS",
        "heartbeat-interval-ms",
        "how often rooms send heartbeat [default: 15000]",
    ),
    setting(
        "HEARTBEAT_TIMEOUT_MS",
        "heartbeat-timeout-ms",
        "a socket silent this long is closed [default: 45000]",
    ),
    setting(
        "ALLOW_CLIENT_SEEDED_ROOMS",
        "allow-client-seeded-rooms",
        "true: a join's initialSnapshot creates an unknown room [default: false]",
    ),
    setting(
        "MAX_MESSAGE_BYTES",
        "max-message-bytes",
        "largest accepted WebSocket message [default: 65536]",
    ),
    setting(
        "RATE_LIMIT_PER_SEC",
        "rate-limit-per-sec",
        "sustained messages per second per socket [default: 50]",
    ),
    setting(
        "RATE_LIMIT_BURST",
        "rate-limit-burst",
        "messages a socket may send at once [default: 100]",
    ),
    setting(
        "OUTBOUND_QUEUE_LIMIT",
        "outbound-queue-limit",
        "frames queued for one socket before it is closed [default: 1024]",
    ),
    setting(
        "ROOM_HISTORY_LIMIT",
        "room-history-limit",
        "events each room keeps for resume [default: 512]",
    ),
    setting(
        "MAX_SOCKETS_PER_ROOM",
        "max-sockets-per-room",
        "live sockets one room accepts [default: 64]",
    ),
    setting(
        "MAX_SOCKETS_PER_PLAYER",
        "max-sockets-per-player",
        "live sockets one player may have in one room [default: 4]",
    ),
    setting(
        "SHUTDOWN_GRACE_MS",
        "shutdown-grace-ms",
        "how long shutdown waits for sockets, then again for the writer [default: 10000]",
    ),
    secret(
        "DATABASE_URL",
        "database-url",
        "postgres://…, sqlite://… or memory: [default: sqlite://data/karaoke.db]",
    ),
    setting(
        "PERSIST_QUEUE_LIMIT",
        "persist-queue-limit",
        "rows that may wait for the database [default: 100000]",
    ),
    setting(
        "PERSIST_BATCH_MAX",
        "persist-batch-max",
        "rows written in one round trip at most [default: 500]",
    ),
    setting(
        "PERSIST_FLUSH_INTERVAL_MS",
        "persist-flush-interval-ms",
        "how long the writer waits to fill a batch [default: 50]",
    ),
    setting(
        "SNAPSHOT_INTERVAL_MS",
        "snapshot-interval-ms",
        "how often a changed room is snapshotted [default: 1000]",
    ),
    setting(
        "PERSIST_QUEUE_BYTES",
        "persist-queue-bytes",
        "bytes of rows that may wait for the database [default: 268435456]",
    ),
    setting(
        "PERSIST_BATCH_BYTES",
        "persist-batch-bytes",
        "bytes written in one round trip at most [default: 4194304]",
    ),
    setting(
        "PERSIST_STATEMENT_TIMEOUT_MS",
        "persist-statement-timeout-ms",
        "longest one database statement may take [default: 10000]",
    ),
    setting(
        "OUTBOUND_QUEUE_BYTES",
        "outbound-queue-bytes",
        "bytes queued for one socket before it is closed [default: 8388608]",
    ),
    setting(
        "MAX_CONNECTIONS",
        "max-connections",
        "open connections on the players' port [default: 25000]",
    ),
    setting(
        "MAX_CONNECTIONS_PER_IP",
        "max-connections-per-ip",
        "open connections from one address [default: 500]",
    ),
    setting(
        "HTTP_HEADER_TIMEOUT_MS",
        "http-header-timeout-ms",
        "time for request headers and idle keep-alive [default: 10000]",
    ),
    setting(
        "JOIN_TIMEOUT_MS",
        "join-timeout-ms",
        "time an upgraded socket has to join [default: 10000]",
    ),
    setting(
        "MAX_SEEDED_ROOMS",
        "max-seeded-rooms",
        "live client-seeded rooms at most [default: 10000]",
    ),
    setting(
        "SEEDED_ROOMS_PER_IP_PER_MINUTE",
        "seeded-rooms-per-ip-per-minute",
        "rooms one address may seed per minute [default: 30]",
    ),
    setting(
        "SEEDED_ROOM_IDLE_TTL_MS",
        "seeded-room-idle-ttl-ms",
        "an empty client-seeded room is closed after this [default: 1800000]",
    ),
    secret(
        "REALTIME_BROADCAST_SECRET",
        "realtime-broadcast-secret",
        "turns on POST /api/broadcast with this shared secret; unset: 404",
    ),
    setting(
        "MAX_WATCHERS",
        "max-watchers",
        "open WatchRoom streams at most [default: 256]",
    ),
    setting(
        "MAX_WATCHERS_PER_ROOM",
        "max-watchers-per-room",
        "open WatchRoom streams of one room at most [default: 8]",
    ),
    setting(
        "IMAGE_SOURCES",
        "image-sources",
        "where canvas images may come from: self, data, https://host[:port] [default: self,data]",
    ),
    secret(
        "REDIS_URL",
        "redis-url",
        "cluster mode: the shared Redis (redis://…); needs a postgres DATABASE_URL; unset: one node",
    ),
    setting(
        "NODE_ID",
        "node-id",
        "this node's name in the cluster [default: host name plus a random suffix]",
    ),
    setting(
        "REDIS_KEY_PREFIX",
        "redis-key-prefix",
        "prefix of every Redis key and channel of this cluster [default: karaoke]",
    ),
    setting(
        "CLUSTER_LEASE_TTL_MS",
        "cluster-lease-ttl-ms",
        "lifetime of a room's lease and a node's membership without renewal [default: 5000]",
    ),
];

/// PEM material for the admin plane's TLS, read at start-up.
#[derive(Clone)]
pub struct AdminTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Secret,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTls")
            .field("client_certificates", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Reads variables through `get`, collecting one message per bad value.
struct Reader<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<String>,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        name: &str,
        default: T,
        min: T,
        max: T,
    ) -> T {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        match raw.trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            _ => {
                self.errors.push(format!(
                    "{name}: expected a whole number from {min} to {max}, got {raw:?}"
                ));
                default
            }
        }
    }

    fn millis(&mut self, name: &str, default: u64, min: u64) -> Duration {
        Duration::from_millis(self.number(name, default, min, 86_400_000))
    }

    fn ip(&mut self, name: &str, default: IpAddr) -> IpAddr {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        raw.trim().parse().unwrap_or_else(|_| {
            self.errors
                .push(format!("{name}: expected an IP address, got {raw:?}"));
            default
        })
    }

    fn file(&mut self, name: &str) -> Option<Vec<u8>> {
        let path = self.raw(name)?;
        match std::fs::read(path.trim()) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.errors
                    .push(format!("{name}: cannot read {path:?}: {e}"));
                None
            }
        }
    }

    fn boolean(&mut self, name: &str, default: bool) -> bool {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                self.errors
                    .push(format!("{name}: expected true or false, got {raw:?}"));
                default
            }
        }
    }
}

/// Percent-decodes `%XX` sequences (the W3C Baggage encoding of the OTEL_* lists).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            // from_str_radix would also take a sign ("%+F").
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `key=value,key=value` (empty items skipped), or the first bad item.
fn key_values(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("expected key=value items, got {item:?}"))?;
        let k = k.trim();
        let v = percent_decode(v.trim())
            .ok_or_else(|| format!("bad percent-encoding in the value of {k:?}"))?;
        if k.is_empty() {
            return Err(format!("expected key=value items, got {item:?}"));
        }
        out.push((k.to_string(), v));
    }
    Ok(out)
}

/// The `OTEL_*` variables. Only OTLP over gRPC is built in: any other protocol or
/// exporter is one error line naming the variable, so a collector the operator
/// configured never goes silently unused.
fn read_otel(r: &mut Reader<'_>) -> Option<Otel> {
    let disabled = r.boolean("OTEL_SDK_DISABLED", false);
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ] {
        if let Some(v) = r.raw(name)
            && v.trim() != "grpc"
        {
            r.errors.push(format!(
                "{name}: only grpc is supported (OTLP over gRPC), got {v:?}"
            ));
        }
    }
    for name in [
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    ] {
        if let Some(v) = r.raw(name)
            && v.trim() != "none"
        {
            r.errors
                .push(format!("{name}: only none is supported, got {v:?}"));
        }
    }
    let mut signal = |exporter: &str, specific: &str| -> Option<String> {
        let on = match r.raw(exporter).map(|v| v.trim().to_ascii_lowercase()) {
            None => true,
            Some(v) if v == "otlp" => true,
            Some(v) if v == "none" => false,
            Some(v) => {
                r.errors
                    .push(format!("{exporter}: expected otlp or none, got {v:?}"));
                false
            }
        };
        let endpoint = r.raw(specific).map(|v| (specific, v)).or_else(|| {
            r.raw("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|v| ("OTEL_EXPORTER_OTLP_ENDPOINT", v))
        });
        let (name, url) = endpoint?;
        let url = url.trim().to_string();
        if url.starts_with("https://") {
            r.errors.push(format!(
                "{name}: https is not supported by this build (run the collector beside the \
                 server and export to it over http://), got {url:?}"
            ));
            return None;
        }
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            r.errors
                .push(format!("{name}: expected http://host:port, got {url:?}"));
            return None;
        }
        on.then_some(url)
    };
    let traces_endpoint = signal("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let metrics_endpoint = signal(
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    );
    let headers = match r.raw("OTEL_EXPORTER_OTLP_HEADERS") {
        None => Vec::new(),
        // Never echo the value: it usually carries an API key.
        Some(raw) => key_values(&raw).unwrap_or_else(|_| {
            r.errors.push(
                "OTEL_EXPORTER_OTLP_HEADERS: expected key=value,key=value with percent-encoded values"
                    .to_string(),
            );
            Vec::new()
        }),
    };
    let mut resource_attributes = match r.raw("OTEL_RESOURCE_ATTRIBUTES") {
        None => Vec::new(),
        Some(raw) => key_values(&raw).unwrap_or_else(|why| {
            r.errors.push(format!("OTEL_RESOURCE_ATTRIBUTES: {why}"));
            Vec::new()
        }),
    };
    let from_attributes = resource_attributes
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.clone());
    resource_attributes.retain(|(k, _)| k != "service.name");
    let service_name = r
        .raw("OTEL_SERVICE_NAME")
        .map(|v| v.trim().to_string())
        .or(from_attributes)
        .unwrap_or_else(|| "karaoke-realtime".to_string());
    let ratio = match r.raw("OTEL_TRACES_SAMPLER_ARG") {
        None => 1.0,
        Some(raw) => match raw.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => v,
            _ => {
                r.errors.push(format!(
                    "OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got {raw:?}"
                ));
                1.0
            }
        },
    };
    let sampler = match r
        .raw("OTEL_TRACES_SAMPLER")
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => OtelSampler::ParentBasedAlwaysOn,
        Some(v) => match v.as_str() {
            "always_on" => OtelSampler::AlwaysOn,
            "always_off" => OtelSampler::AlwaysOff,
            "traceidratio" => OtelSampler::TraceIdRatio(ratio),
            "parentbased_always_on" => OtelSampler::ParentBasedAlwaysOn,
            "parentbased_always_off" => OtelSampler::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => OtelSampler::ParentBasedTraceIdRatio(ratio),
            _ => {
                r.errors.push(format!(
                    "OTEL_TRACES_SAMPLER: expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio, got {v:?}"
                ));
                OtelSampler::ParentBasedAlwaysOn
            }
        },
    };
    let metric_export_interval = r.millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000, 10);
    let export_timeout = r.millis("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, 10);
    let span_batch_delay = r.millis("OTEL_BSP_SCHEDULE_DELAY", 5_000, 1);
    let span_queue_limit = r.number("OTEL_BSP_MAX_QUEUE_SIZE", 2048usize, 1, 1_000_000);
    let span_batch_max = r.number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512usize, 1, 1_000_000);
    if disabled || (traces_endpoint.is_none() && metrics_endpoint.is_none()) {
        return None;
    }
    Some(Otel {
        traces_endpoint,
        metrics_endpoint,
        headers: OtelHeaders(headers),
        service_name,
        resource_attributes,
        sampler,
        metric_export_interval,
        export_timeout,
        span_batch_delay,
        span_queue_limit,
        span_batch_max: span_batch_max.min(span_queue_limit),
    })
}

/// A node's default name: the host name (as Kubernetes sets `HOSTNAME` to the pod's
/// name) plus a random suffix, so two processes on one host never share a name.
fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && valid_node_id(h))
        .unwrap_or_else(|| "node".to_string());
    let host: String = host.chars().take(48).collect();
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// Node ids name Redis keys and channels and appear in logs: a short, plain alphabet.
fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn read_cluster(r: &mut Reader<'_>, database: &Database) -> Option<Cluster> {
    let url = r.raw("REDIS_URL").map(|u| u.trim().to_string());
    let node_id = r.raw("NODE_ID").map(|n| n.trim().to_string());
    let key_prefix = r
        .raw("REDIS_KEY_PREFIX")
        .map(|p| p.trim().to_string())
        .unwrap_or_else(|| "karaoke".to_string());
    let lease_ttl = r.millis("CLUSTER_LEASE_TTL_MS", 5_000, 1_000);
    let url = url?;
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        r.errors
            .push("REDIS_URL: expected redis://… or rediss://…".to_string());
        return None;
    }
    if !matches!(database, Database::Postgres(_)) {
        r.errors.push(
            "REDIS_URL: cluster mode needs a shared postgres DATABASE_URL (not sqlite or memory:)"
                .to_string(),
        );
        return None;
    }
    if let Some(id) = &node_id
        && !valid_node_id(id)
    {
        r.errors.push(format!(
            "NODE_ID: expected 1 to 64 letters, digits, '-', '_' or '.', got {id:?}"
        ));
        return None;
    }
    if !valid_node_id(&key_prefix) {
        r.errors.push(format!(
            "REDIS_KEY_PREFIX: expected 1 to 64 letters, digits, '-', '_' or '.', got {key_prefix:?}"
        ));
        return None;
    }
    Some(Cluster {
        redis_url: Secret(url.into_bytes()),
        node_id: node_id.unwrap_or_else(default_node_id),
        key_prefix,
        lease_ttl,
    })
}

impl Config {
    /// Reads settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<String>> {
        let mut r = Reader {
            get,
            errors: Vec::new(),
        };
        let bind_addr = r.ip("BIND_ADDR", IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let port = r.number("PORT", 8080u16, 0, u16::MAX);
        let admin_port = r.number("ADMIN_PORT", 50051u16, 0, u16::MAX);
        let admin_token = match r.raw("ADMIN_TOKEN") {
            Some(t) if t.len() < 16 => {
                r.errors
                    .push("ADMIN_TOKEN: must be at least 16 bytes long".to_string());
                None
            }
            t => t.map(|t| Secret(t.into_bytes())),
        };
        let admin_bind_addr = r.ip("ADMIN_BIND_ADDR", IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let cert = r.file("ADMIN_TLS_CERT_FILE");
        let key = r.file("ADMIN_TLS_KEY_FILE");
        let client_ca = r.file("ADMIN_TLS_CLIENT_CA_FILE");
        let admin_tls = match (cert, key) {
            (Some(cert_pem), Some(key_pem)) => Some(AdminTls {
                cert_pem,
                key_pem: Secret(key_pem),
                client_ca_pem: client_ca,
            }),
            (None, None) => {
                if client_ca.is_some() {
                    r.errors.push(
                        "ADMIN_TLS_CLIENT_CA_FILE: needs ADMIN_TLS_CERT_FILE and ADMIN_TLS_KEY_FILE"
                            .to_string(),
                    );
                }
                None
            }
            _ => {
                r.errors
                    .push("ADMIN_TLS_CERT_FILE: set together with ADMIN_TLS_KEY_FILE".to_string());
                None
            }
        };
        let token_ttl_max_secs =
            r.number("ADMIN_TOKEN_MAX_TTL_SECONDS", 86_400u64, 60, 30 * 86_400);
        let token_ttl_default_secs =
            r.number("ADMIN_TOKEN_TTL_SECONDS", 14_400u64, 60, 30 * 86_400);
        if token_ttl_default_secs > token_ttl_max_secs {
            r.errors.push(
                "ADMIN_TOKEN_TTL_SECONDS: must not exceed ADMIN_TOKEN_MAX_TTL_SECONDS".to_string(),
            );
        }
        let log_level = match r.raw("LOG_LEVEL").map(|v| v.trim().to_ascii_lowercase()) {
            None => LogLevel::Info,
            Some(v) => match v.as_str() {
                "debug" => LogLevel::Debug,
                "info" => LogLevel::Info,
                "warn" | "warning" => LogLevel::Warn,
                "error" => LogLevel::Error,
                _ => {
                    r.errors.push(format!(
                        "LOG_LEVEL: expected debug, info, warn or error, got {v:?}"
                    ));
                    LogLevel::Info
                }
            },
        };
        let flush_ms = r.number("METRICS_FLUSH_INTERVAL_MS", 60_000u64, 0, 86_400_000);
        let metrics_flush_interval = (flush_ms > 0).then(|| Duration::from_millis(flush_ms));
        let (shared_secret, secret_is_random) = match r.raw("REALTIME_SHARED_SECRET") {
            Some(s) if s.len() < 16 => {
                r.errors
                    .push("REALTIME_SHARED_SECRET: must be at least 16 bytes long".to_string());
                (Secret(Vec::new()), false)
            }
            Some(s) => (Secret(s.into_bytes()), false),
            None => {
                let bytes: [u8; 32] = rand::random();
                (Secret(bytes.to_vec()), true)
            }
        };
        let errors_before = r.errors.len();
        let heartbeat_interval = r.millis("HEARTBEAT_INTERVAL_MS", 15_000, 100);
        let heartbeat_timeout = r.millis("HEARTBEAT_TIMEOUT_MS", 45_000, 100);
        // Compared only when both parsed: a bad value already has its one line, and
        // the default standing in for it must not produce a second.
        if r.errors.len() == errors_before && heartbeat_timeout <= heartbeat_interval {
            r.errors.push(
                "HEARTBEAT_TIMEOUT_MS: must be greater than HEARTBEAT_INTERVAL_MS".to_string(),
            );
        }
        let allow_client_seeded_rooms = r.boolean("ALLOW_CLIENT_SEEDED_ROOMS", false);
        let max_message_bytes = r.number("MAX_MESSAGE_BYTES", 64 * 1024usize, 1024, 16 << 20);
        let rate_limit_per_sec = r.number("RATE_LIMIT_PER_SEC", 50u32, 1, 1_000_000);
        let rate_limit_burst = r.number("RATE_LIMIT_BURST", 100u32, 1, 1_000_000);
        let outbound_queue_limit = r.number("OUTBOUND_QUEUE_LIMIT", 1024usize, 4, 1_000_000);
        let room_history_limit = r.number("ROOM_HISTORY_LIMIT", 512usize, 0, 1_000_000);
        // A resume replays up to the whole history plus hello_ack into one queue, so
        // anything the history holds must fit.
        if outbound_queue_limit <= room_history_limit {
            r.errors.push(format!(
                "OUTBOUND_QUEUE_LIMIT: must be greater than ROOM_HISTORY_LIMIT ({room_history_limit}), \
                 so every event the history holds can be replayed"
            ));
        }
        let max_sockets_per_room = r.number("MAX_SOCKETS_PER_ROOM", 64usize, 1, 100_000);
        let max_sockets_per_player = r.number("MAX_SOCKETS_PER_PLAYER", 4usize, 1, 100_000);
        let shutdown_grace = r.millis("SHUTDOWN_GRACE_MS", 10_000, 0);
        let url = r
            .raw("DATABASE_URL")
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        let url = url.trim().to_string();
        let database = if url == "memory:" {
            Database::Memory
        } else if url.starts_with("sqlite:") {
            Database::Sqlite(url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Database::Postgres(url)
        } else {
            // Never echo the value: it may carry a password.
            r.errors.push(
                "DATABASE_URL: expected postgres://…, postgresql://…, sqlite://… or memory:"
                    .to_string(),
            );
            Database::Memory
        };
        let persist_queue_limit = r.number("PERSIST_QUEUE_LIMIT", 100_000usize, 100, 10_000_000);
        let persist_batch_max = r.number("PERSIST_BATCH_MAX", 500usize, 1, 10_000);
        let persist_flush_interval = r.millis("PERSIST_FLUSH_INTERVAL_MS", 50, 1);
        let snapshot_interval = r.millis("SNAPSHOT_INTERVAL_MS", 1_000, 10);
        let persist_queue_bytes = r.number(
            "PERSIST_QUEUE_BYTES",
            256usize << 20,
            1 << 20,
            64usize << 30,
        );
        let persist_batch_bytes = r.number(
            "PERSIST_BATCH_BYTES",
            4usize << 20,
            64 << 10,
            256usize << 20,
        );
        let persist_statement_timeout = r.millis("PERSIST_STATEMENT_TIMEOUT_MS", 10_000, 100);
        let outbound_queue_bytes =
            // At least a `hello_ack` of a room whose canvases are full (4 MiB of
            // canvases, plus big ideas and the snapshot), so every join is deliverable.
            r.number("OUTBOUND_QUEUE_BYTES", 8usize << 20, 6 << 20, 1usize << 30);
        let max_connections = r.number("MAX_CONNECTIONS", 25_000usize, 1, 10_000_000);
        let max_connections_per_ip = r.number("MAX_CONNECTIONS_PER_IP", 500usize, 1, 10_000_000);
        let http_header_timeout = r.millis("HTTP_HEADER_TIMEOUT_MS", 10_000, 100);
        let join_timeout = r.millis("JOIN_TIMEOUT_MS", 10_000, 100);
        let max_seeded_rooms = r.number("MAX_SEEDED_ROOMS", 10_000usize, 0, 10_000_000);
        let seeded_rooms_per_ip_per_minute =
            r.number("SEEDED_ROOMS_PER_IP_PER_MINUTE", 30u32, 1, 1_000_000);
        let seeded_room_idle_ttl = r.millis("SEEDED_ROOM_IDLE_TTL_MS", 30 * 60_000, 1_000);
        // Any non-empty value: the Node service took whatever the backend shared.
        let broadcast_secret = r
            .raw("REALTIME_BROADCAST_SECRET")
            .map(|s| Secret(s.into_bytes()));
        let max_watchers = r.number("MAX_WATCHERS", 256usize, 0, 1_000_000);
        let max_watchers_per_room = r.number("MAX_WATCHERS_PER_ROOM", 8usize, 0, 1_000_000);
        let image_sources = match r.raw("IMAGE_SOURCES") {
            None => ImagePolicy::default(),
            Some(raw) => ImagePolicy::parse(&raw).unwrap_or_else(|why| {
                r.errors.push(format!("IMAGE_SOURCES: {why}"));
                ImagePolicy::default()
            }),
        };
        let otel = read_otel(&mut r);
        let cluster = read_cluster(&mut r, &database);
        if !r.errors.is_empty() {
            return Err(r.errors);
        }
        Ok(Config {
            bind_addr,
            port,
            admin_port,
            admin_token,
            admin_bind_addr,
            admin_tls,
            token_ttl_default_secs,
            token_ttl_max_secs,
            log_level,
            metrics_flush_interval,
            shared_secret,
            secret_is_random,
            heartbeat_interval,
            heartbeat_timeout,
            allow_client_seeded_rooms,
            max_message_bytes,
            rate_limit_per_sec,
            rate_limit_burst,
            outbound_queue_limit,
            room_history_limit,
            max_sockets_per_room,
            max_sockets_per_player,
            shutdown_grace,
            database,
            persist_queue_limit,
            persist_batch_max,
            persist_flush_interval,
            snapshot_interval,
            persist_queue_bytes,
            persist_batch_bytes,
            persist_statement_timeout,
            outbound_queue_bytes,
            max_connections,
            max_connections_per_ip,
            http_header_timeout,
            join_timeout,
            max_seeded_rooms,
            seeded_rooms_per_ip_per_minute,
            seeded_room_idle_ttl,
            broadcast_secret,
            max_watchers,
            max_watchers_per_room,
            image_sources,
            otel,
            cluster,
        })
    }

    /// Defaults for tests and embedding: port 0, a fixed secret.
    pub fn for_tests(secret: &str) -> Config {
        let secret = secret.to_string();
        let mut config = Config::from_lookup(&|name| match name {
            "REALTIME_SHARED_SECRET" => Some(secret.clone()),
            "PORT" => Some("0".into()),
            "ADMIN_PORT" => Some("0".into()),
            "BIND_ADDR" => Some("127.0.0.1".into()),
            "METRICS_FLUSH_INTERVAL_MS" => Some("0".into()),
            "DATABASE_URL" => Some("memory:".into()),
            _ => None,
        })
        .unwrap_or_else(|errors| panic!("test defaults are valid: {errors:?}"));
        config.shutdown_grace = Duration::from_secs(2);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&move |name| map.get(name).cloned())
    }

    #[test]
    fn defaults_need_nothing() {
        let c = load(&[]).expect("defaults");
        assert_eq!(c.port, 8080);
        assert_eq!(c.admin_port, 50051);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(45));
        assert!(c.secret_is_random);
        assert!(!c.allow_client_seeded_rooms);
        assert_eq!(c.max_message_bytes, 64 * 1024);
    }

    #[test]
    fn each_bad_value_gets_one_line_naming_it() {
        let errors = load(&[
            ("PORT", "eighty"),
            ("LOG_LEVEL", "loud"),
            ("ALLOW_CLIENT_SEEDED_ROOMS", "maybe"),
            ("REALTIME_SHARED_SECRET", "short"),
        ])
        .expect_err("bad values");
        assert_eq!(errors.len(), 4, "{errors:?}");
        for (line, name) in errors.iter().zip([
            "PORT",
            "LOG_LEVEL",
            "REALTIME_SHARED_SECRET",
            "ALLOW_CLIENT_SEEDED_ROOMS",
        ]) {
            assert!(line.starts_with(name), "{line}");
        }
    }

    #[test]
    fn cluster_mode_needs_postgres_and_a_plain_node_id() {
        let redis = ("REDIS_URL", "redis://:hunter2@redis:6379");
        assert!(
            load(&[]).expect("defaults").cluster.is_none(),
            "one node by default"
        );
        for database in ["sqlite://data/k.db", "memory:"] {
            let errors = load(&[redis, ("DATABASE_URL", database)]).expect_err(database);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with("REDIS_URL: cluster mode needs a shared postgres"),
                "{errors:?}"
            );
        }
        let pg = ("DATABASE_URL", "postgres://db/karaoke");
        let c = load(&[redis, pg, ("NODE_ID", "pod-7")]).expect("cluster");
        let cluster = c.cluster.expect("cluster mode");
        assert_eq!(cluster.node_id, "pod-7");
        assert_eq!(cluster.key_prefix, "karaoke");
        assert_eq!(cluster.lease_ttl, Duration::from_secs(5));
        assert!(
            !format!("{cluster:?}").contains("hunter2"),
            "the URL never prints"
        );
        let errors = load(&[redis, pg, ("NODE_ID", "bad id!")]).expect_err("node id");
        assert!(errors[0].starts_with("NODE_ID:"), "{errors:?}");
        let errors = load(&[("REDIS_URL", "http://redis"), pg]).expect_err("scheme");
        assert!(
            errors[0].starts_with("REDIS_URL: expected redis://"),
            "{errors:?}"
        );
        // The default name: the host's, plus a suffix two processes never share.
        let a = load(&[redis, pg]).expect("a").cluster.expect("a").node_id;
        let b = load(&[redis, pg]).expect("b").cluster.expect("b").node_id;
        assert_ne!(a, b);
        assert!(valid_node_id(&a), "{a}");
    }

    #[test]
    fn secrets_never_print() {
        let c = load(&[("REALTIME_SHARED_SECRET", "super-secret-value-123")]).expect("ok");
        assert!(!format!("{c:?}").contains("super-secret"));
    }

    #[test]
    fn image_sources_default_to_self_and_data_and_a_bad_list_is_one_line() {
        assert_eq!(
            load(&[]).expect("defaults").image_sources,
            ImagePolicy::default()
        );
        let c = load(&[("IMAGE_SOURCES", "self,https://cdn.example")]).expect("valid");
        assert_eq!(
            c.image_sources,
            ImagePolicy::parse("https://cdn.example,self").expect("valid")
        );
        let errors = load(&[("IMAGE_SOURCES", "self,http://cdn.example")]).expect_err("bad");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("IMAGE_SOURCES: "), "{}", errors[0]);
    }

    #[test]
    fn settings_list_every_variable_read_in_order() {
        use std::cell::RefCell;
        let read = RefCell::new(Vec::<String>::new());
        let _ = Config::from_lookup(&|name| {
            let mut read = read.borrow_mut();
            // The OpenTelemetry SDK's standard variables stay variables only: every
            // OpenTelemetry deployment configures export that way.
            if !name.starts_with("OTEL_") && !read.iter().any(|n| n == name) {
                read.push(name.to_string());
            }
            None
        });
        let listed: Vec<&str> = SETTINGS.iter().map(|s| s.env).collect();
        assert_eq!(read.into_inner(), listed);
        for s in SETTINGS {
            assert_eq!(
                s.flag,
                s.env.to_ascii_lowercase().replace('_', "-"),
                "{}",
                s.env
            );
        }
    }

    #[test]
    fn percent_decoding_takes_exactly_two_hex_digits() {
        assert_eq!(percent_decode("a%3Db").as_deref(), Some("a=b"));
        for bad in ["%+F", "%-1", "%G0", "%4", "%"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn otel_is_off_without_an_endpoint_and_when_disabled() {
        assert_eq!(load(&[]).expect("defaults").otel, None);
        let on = load(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]).expect("ok");
        let otel = on.otel.expect("otel on");
        assert_eq!(
            otel.traces_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(otel.sampler, OtelSampler::ParentBasedAlwaysOn);
        assert_eq!(otel.service_name, "karaoke-realtime");
        let off = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .expect("ok");
        assert_eq!(off.otel, None);
    }

    #[test]
    fn otel_values_parse_and_unsupported_ones_are_one_line_each() {
        let c = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret, x=y"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=a,deployment.environment=prod",
            ),
            ("OTEL_SERVICE_NAME", "karaoke-eu"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
        ])
        .expect("ok")
        .otel
        .expect("on");
        assert_eq!(c.metrics_endpoint.as_deref(), Some("http://metrics:4317"));
        assert_eq!(c.headers.0[0], ("api-key".into(), "s=cret".into()));
        assert!(!format!("{c:?}").contains("cret"));
        assert_eq!(c.service_name, "karaoke-eu");
        assert_eq!(
            c.resource_attributes,
            vec![("deployment.environment".into(), "prod".into())]
        );
        assert_eq!(c.sampler, OtelSampler::ParentBasedTraceIdRatio(0.01));
        let errors = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ])
        .expect_err("unsupported");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: "),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("http/json"), "{}", errors[0]);
        assert!(
            errors[1].starts_with("OTEL_TRACES_SAMPLER: "),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn timeout_must_exceed_interval() {
        let errors = load(&[
            ("HEARTBEAT_INTERVAL_MS", "5000"),
            ("HEARTBEAT_TIMEOUT_MS", "4000"),
        ])
        .expect_err("bad");
        assert!(errors[0].starts_with("HEARTBEAT_TIMEOUT_MS"));
    }
}
