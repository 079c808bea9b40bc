//! Ten thousand joined WebSockets held at once by one server process.
//!
//! The server is the real binary in its own process (its own file-descriptor limit
//! and its own memory, measured from /proc). The test opens 1,250 rooms × 8 players
//! with bounded concurrency; the first join of each room seeds it from
//! `initialSnapshot`. It asserts that every join got `hello_ack` and that the server
//! reported all 10,000 connections live at once; it prints (never asserts) the
//! server's memory per idle joined socket and the join rate.
//!
//! Run: `cargo test --release --test scale -- --nocapture`.

mod binproc;

use binproc::{Proc, WAIT, cpu_secs_of, seed_snapshot};
use futures_util::{SinkExt, StreamExt};
use karaoke_realtime::auth::{TokenKeys, now_secs};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "scale-test-shared-secret-2b8e41";
const ROOMS: usize = 1_250;
const PLAYERS_PER_ROOM: usize = 8;
const SOCKETS: usize = ROOMS * PLAYERS_PER_ROOM;
const IN_FLIGHT: usize = 200;
/// Source addresses the clients connect from (127.0.0.2 onwards).
const SOURCE_ADDRESSES: usize = 200;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn room_code(room: usize) -> String {
    format!("S{room:05}")
}

fn player_id(player: usize) -> String {
    format!("p{player}")
}

fn players() -> Vec<String> {
    (0..PLAYERS_PER_ROOM).map(player_id).collect()
}

/// The open file limit of this process (soft, hard), from /proc/self/limits.
fn open_files_limit() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    let row = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files row");
    let nums: Vec<u64> = row
        .split_whitespace()
        .filter_map(|w| match w {
            "unlimited" => Some(u64::MAX),
            _ => w.parse().ok(),
        })
        .collect();
    assert!(nums.len() >= 2, "soft and hard limits in {row:?}");
    (nums[0], nums[1])
}

/// One joined socket and how long its join took.
struct Joined {
    ws: Ws,
    /// TCP connect + WebSocket upgrade.
    connect: Duration,
    /// Connect, upgrade, `join_room`, `hello_ack`.
    total: Duration,
}

/// Connects, joins and waits for `hello_ack`; the socket is returned open.
async fn join_one(
    port: u16,
    keys: Arc<TokenKeys>,
    room: usize,
    player: usize,
    seed: Option<Value>,
) -> Result<Joined, String> {
    let started = Instant::now();
    let code = room_code(room);
    let id = player_id(player);
    let url = format!("ws://127.0.0.1:{port}/?room={code}");
    // Small client buffers: the point is the server's memory, but 10,000 clients with
    // the default 128 KiB read buffer would needlessly bloat this process.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    // Each room's players come from their own address, as households do: the
    // server's per-address bounds (connections, seeds per minute) stay at their
    // shipped defaults, and 10,000 sockets come from 200 addresses of 127.0.0.0/8.
    let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (room % SOURCE_ADDRESSES) as u8);
    let tcp = tokio::net::TcpSocket::new_v4().map_err(|e| format!("{code}/{id}: socket: {e}"))?;
    tcp.bind((source, 0).into())
        .map_err(|e| format!("{code}/{id}: bind {source}: {e}"))?;
    let tcp = tcp
        .connect(([127, 0, 0, 1], port).into())
        .await
        .map_err(|e| format!("{code}/{id}: connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, MaybeTlsStream::Plain(tcp), Some(config))
            .await
            .map_err(|e| format!("{code}/{id}: upgrade: {e}"))?;
    let connect = started.elapsed();
    let mut join = json!({
        "type": "join_room",
        "roomCode": code,
        "playerId": id,
        "playerToken": keys.mint_jwt(&code, &id, now_secs(), 3_600),
    });
    if let Some(seed) = seed {
        join["initialSnapshot"] = seed;
    }
    ws.send(Message::Text(join.to_string().into()))
        .await
        .map_err(|e| format!("{code}/{id}: send join: {e}"))?;
    loop {
        let frame = ws
            .next()
            .await
            .ok_or_else(|| format!("{code}/{id}: closed before hello_ack"))?
            .map_err(|e| format!("{code}/{id}: read: {e}"))?;
        let Message::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{code}/{id}: reply is not JSON: {e}"))?;
        match v["type"].as_str() {
            Some("hello_ack") if v["roomCode"] == code.as_str() => {
                return Ok(Joined {
                    ws,
                    connect,
                    total: started.elapsed(),
                });
            }
            // Other players of the room joining concurrently.
            Some("room_state") | Some("player_joined") | Some("heartbeat") => continue,
            _ => return Err(format!("{code}/{id}: expected hello_ack, got {v}")),
        }
    }
}

/// Joins `(room, player)` pairs with at most `IN_FLIGHT` joins in progress.
async fn join_all(
    port: u16,
    keys: &Arc<TokenKeys>,
    pairs: Vec<(usize, usize)>,
    seed: bool,
    sockets: &mut Vec<Joined>,
    errors: &mut Vec<String>,
) {
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let players = players();
    let player_refs: Vec<&str> = players.iter().map(String::as_str).collect();
    let mut set = JoinSet::new();
    for (room, player) in pairs {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let seed = seed.then(|| seed_snapshot(&room_code(room), &player_refs));
        let keys = keys.clone();
        set.spawn(async move {
            let result = tokio::time::timeout(WAIT, join_one(port, keys, room, player, seed))
                .await
                .unwrap_or_else(|_| Err(format!("room {room} player {player}: join timed out")));
            drop(permit);
            result
        });
        // Collect finished joins as we go so the set stays small.
        while let Some(done) = set.try_join_next() {
            collect(done, sockets, errors);
        }
    }
    while let Some(done) = set.join_next().await {
        collect(done, sockets, errors);
    }
}

fn collect(
    done: Result<Result<Joined, String>, tokio::task::JoinError>,
    sockets: &mut Vec<Joined>,
    errors: &mut Vec<String>,
) {
    match done {
        Ok(Ok(ws)) => sockets.push(ws),
        Ok(Err(e)) => errors.push(e),
        Err(e) => errors.push(format!("join task failed: {e}")),
    }
}

/// The `p`th percentile (nearest rank) of `samples`, formatted in milliseconds.
fn percentile(samples: &mut [Duration], p: usize) -> String {
    samples.sort_unstable();
    let rank = (samples.len() * p).div_ceil(100).clamp(1, samples.len());
    format!("{:.1} ms", samples[rank - 1].as_secs_f64() * 1e3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_joined_sockets() {
    let needed = (SOCKETS + 200) as u64;
    let (mut soft, hard) = open_files_limit();
    if soft < needed && hard >= needed {
        // Raise this process's soft limit towards the hard one (the server child
        // inherits it); `prlimit` does what `ulimit -n` would, without unsafe code.
        let target = hard.min(needed.max(65_536));
        let raised = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            // `soft:` sets the soft limit only.
            .arg(format!("--nofile={target}:"))
            .status();
        if let Ok(status) = raised {
            assert!(
                status.success(),
                "prlimit --nofile={target} failed: {status}"
            );
        }
        soft = open_files_limit().0;
    }
    assert!(
        soft >= needed,
        "this test holds {SOCKETS} client sockets (and the server as many): raise the open \
         file limit (soft {soft}, hard {hard}), e.g. `ulimit -n {needed}`"
    );
    let test_started = Instant::now();
    let mut server = Proc::spawn(&[
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("REALTIME_SHARED_SECRET", SECRET),
        ("ALLOW_CLIENT_SEEDED_ROOMS", "true"),
        ("DATABASE_URL", "memory:"),
        // Idle means idle: no server heartbeats or timeouts during the run.
        ("HEARTBEAT_INTERVAL_MS", "3600000"),
        ("HEARTBEAT_TIMEOUT_MS", "7200000"),
        ("METRICS_FLUSH_INTERVAL_MS", "250"),
        ("LOG_LEVEL", "info"),
    ]);
    let port = server.listening_port().await;
    let rss_before = server.rss_kib();
    let keys = Arc::new(TokenKeys::new(
        SECRET.as_bytes(),
        karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
    ));
    let mut sockets = Vec::with_capacity(SOCKETS);
    let mut errors = Vec::new();

    let cpu_before = server.cpu_secs();
    let client_cpu_before = cpu_secs_of(std::process::id());
    let joins_started = Instant::now();
    // First the host of every room, carrying the seed that creates the room...
    let hosts = (0..ROOMS).map(|room| (room, 0)).collect();
    join_all(port, &keys, hosts, true, &mut sockets, &mut errors).await;
    // ...then everyone else, into rooms that now exist.
    let others = (1..PLAYERS_PER_ROOM)
        .flat_map(|player| (0..ROOMS).map(move |room| (room, player)))
        .collect();
    join_all(port, &keys, others, false, &mut sockets, &mut errors).await;
    let join_secs = joins_started.elapsed().as_secs_f64();
    let server_cpu = server.cpu_secs() - cpu_before;
    let client_cpu = cpu_secs_of(std::process::id()) - client_cpu_before;

    assert!(
        errors.is_empty(),
        "{} of {SOCKETS} joins failed; first ones: {:#?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert_eq!(sockets.len(), SOCKETS, "every join got hello_ack");

    // The server's own view: all 10,000 connections live at the same moment, in
    // 1,250 rooms, after 10,000 successful joins and no other connection.
    let mut joined_total = 0u64;
    let mut connections_total = 0u64;
    let flush = tokio::time::timeout(WAIT, async {
        loop {
            let flush = server.next_flush().await;
            joined_total += flush["join_room_success_total"].as_u64().unwrap_or(0);
            connections_total += flush["ws_connections_total"].as_u64().unwrap_or(0);
            if flush["ws_connections_live"].as_u64() == Some(SOCKETS as u64)
                && joined_total == SOCKETS as u64
            {
                return flush;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "server never reported {SOCKETS} live connections after {SOCKETS} joins \
             (joins counted: {joined_total})"
        )
    });
    assert_eq!(flush["rooms_live"], ROOMS as u64, "{flush:?}");
    assert_eq!(
        connections_total, SOCKETS as u64,
        "no other connection was made"
    );
    assert_eq!(
        flush["join_room_failures_total"], 0,
        "no failed join in the last flush: {flush:?}"
    );
    let rss_after = server.rss_kib();
    let peak = server.peak_rss_kib();
    // Still held by the clients: none of them saw its socket end.
    assert_eq!(sockets.len(), SOCKETS);

    let per_socket = (rss_after.saturating_sub(rss_before)) as f64 / SOCKETS as f64;
    println!(
        "scale: {SOCKETS} joined sockets ({ROOMS} rooms x {PLAYERS_PER_ROOM}), \
         {IN_FLIGHT} joins in flight, build: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "scale: server RSS before {rss_before} KiB, after {rss_after} KiB (peak {peak} KiB): \
         {per_socket:.1} KiB per idle joined socket"
    );
    println!(
        "scale: joins took {join_secs:.2} s: {:.0} joins/s (connect + upgrade + join + hello_ack)",
        SOCKETS as f64 / join_secs
    );
    println!(
        "scale: CPU during the joins: server {server_cpu:.2} s ({:.0} us per join), \
         test clients {client_cpu:.2} s, on {} cores shared by both",
        server_cpu * 1e6 / SOCKETS as f64,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut connects: Vec<Duration> = sockets.iter().map(|j| j.connect).collect();
    let mut totals: Vec<Duration> = sockets.iter().map(|j| j.total).collect();
    println!(
        "scale: join latency p50 {} p99 {} max {}; of which connect + upgrade p50 {} p99 {} max {}",
        percentile(&mut totals, 50),
        percentile(&mut totals, 99),
        percentile(&mut totals, 100),
        percentile(&mut connects, 50),
        percentile(&mut connects, 99),
        percentile(&mut connects, 100),
    );

    // The clients hold their sockets until the server is gone.
    let held: Vec<Ws> = sockets.into_iter().map(|j| j.ws).collect();
    server.kill().await;
    drop(held);
    println!(
        "scale: whole test {:.2} s",
        test_started.elapsed().as_secs_f64()
    );
}
