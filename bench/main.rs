//! `karaoke-bench`: the project's load generator. It speaks the real protocol to a
//! running server over real sockets and prints one JSON line of results.
//!
//! Scenarios:
//! - `broadcast`: every player sends `presentation_state`; closed loop (`--rate 0`,
//!   each player sends again when its own echo returns) or a fixed rate per player
//!   (every player's period starts together, as the step-7 measurements had it).
//!   Reports deliveries/s and fan-out latency (send → each recipient's receipt).
//! - `ready`: every player toggles `set_ready` in a closed loop. Reports round trips/s
//!   and round-trip latency (send → own `ready_update`).
//! - `join`: opens and joins `rooms × players` sockets and holds them. Reports joins/s,
//!   join latency and the server's RSS per joined socket.
//!
//! Rooms are made by the first join's `initialSnapshot` (the server needs
//! `ALLOW_CLIENT_SEEDED_ROOMS=true`); tokens are minted from the shared secret.
//! Clients behave like the existing browser client: every join carries an
//! `initialSnapshot`, and every socket sends a `heartbeat` every 15 s. Each room's
//! players connect from their own loopback address (127.0.0.2 onwards), as
//! households do, so the server's per-address bounds stay at their shipped defaults.
//! See docs/benchmarks.md for the commands behind each published number.

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use karaoke_realtime::auth::{TokenKeys, now_secs};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const USAGE: &str = "usage: karaoke-bench --scenario broadcast|ready|join [options]
  --url URL[,URL…]   players' WebSocket URL (default ws://127.0.0.1:8080/); several
                     (cluster nodes): each room's seats are spread over them in turn
  --secret S         REALTIME_SHARED_SECRET of the server (or env)
  --rooms N          rooms (default 100)
  --players N        players per room (default 8)
  --rate R           broadcast: messages/s per player; 0 = closed loop (default 0)
  --duration S       measured seconds (default 10)
  --warmup S         seconds before measuring (default 2)
  --concurrency N    joins in flight (default 200)
  --server-pid PID[,PID…]
                     read the servers' RSS and CPU time from /proc (summed)
  --addresses N      loopback source addresses, one per room in turn (default 200;
                     0 = connect from the system's choice)
  --seed-host-only   only the first join of a room carries initialSnapshot (the
                     real client sends it on every join)
  --heartbeat-ms MS  each socket sends a heartbeat this often (default 15000; 0 = never)
  --hold S           join: keep the sockets (heartbeating) this long, then measure
                     memory again (default 0)
  --tag TEXT         copied into the result line";

#[derive(Clone)]
struct Opts {
    scenario: String,
    urls: Vec<String>,
    secret: String,
    rooms: usize,
    players: usize,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    server_pids: Vec<u32>,
    addresses: usize,
    seed_every_join: bool,
    heartbeat: Option<Duration>,
    hold: Duration,
    tag: String,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        scenario: String::new(),
        urls: vec!["ws://127.0.0.1:8080/".into()],
        secret: std::env::var("REALTIME_SHARED_SECRET").unwrap_or_default(),
        rooms: 100,
        players: 8,
        rate: 0.0,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        concurrency: 200,
        server_pids: Vec::new(),
        addresses: 200,
        seed_every_join: true,
        heartbeat: Some(Duration::from_secs(15)),
        hold: Duration::ZERO,
        tag: String::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--seed-host-only" {
            o.seed_every_join = false;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--scenario" => o.scenario = value.clone(),
            "--url" => o.urls = value.split(',').map(str::to_string).collect(),
            "--secret" => o.secret = value.clone(),
            "--rooms" => o.rooms = num(value)? as usize,
            "--players" => o.players = num(value)? as usize,
            "--rate" => o.rate = num(value)?,
            "--duration" => o.duration = Duration::from_secs_f64(num(value)?),
            "--warmup" => o.warmup = Duration::from_secs_f64(num(value)?),
            "--concurrency" => o.concurrency = num(value)?.max(1.0) as usize,
            "--server-pid" => {
                o.server_pids = value
                    .split(',')
                    .map(|p| {
                        p.parse::<u32>()
                            .map_err(|_| format!("{flag}: not a pid list"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--addresses" => o.addresses = (num(value)? as usize).min(250),
            "--heartbeat-ms" => {
                let ms = num(value)?;
                o.heartbeat = (ms > 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
            }
            "--hold" => o.hold = Duration::from_secs_f64(num(value)?),
            "--tag" => o.tag = value.clone(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !["broadcast", "ready", "join"].contains(&o.scenario.as_str()) {
        return Err("--scenario must be broadcast, ready or join".into());
    }
    if o.secret.len() < 16 {
        return Err("--secret (or REALTIME_SHARED_SECRET) of at least 16 bytes is required".into());
    }
    if o.players == 0 || o.players > 8 || o.rooms == 0 {
        return Err("--players must be 1..8 and --rooms at least 1".into());
    }
    Ok(o)
}

/// The servers' resident memory (KiB) and CPU time (seconds), from /proc, summed
/// over every server process given (a cluster's nodes together).
fn server_usage(pids: &[u32]) -> Option<(u64, f64)> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold((0, 0.0), |(rss, cpu), pid| {
        let (r, c) = process_usage(*pid)?;
        Some((rss + r, cpu + c))
    })
}

fn process_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss, ticks / 100.0))
}

fn room_code(i: usize) -> String {
    format!("B{i:05}")
}

fn player_id(seat: usize) -> String {
    format!("p{seat}")
}

fn seed(code: &str, players: usize) -> Value {
    let roster: Vec<Value> = (0..players)
        .map(|s| {
            json!({"id": player_id(s), "name": format!("Player {s}"), "emoji": "🎤",
                   "isReady": false, "isHost": s == 0, "seatIndex": s})
        })
        .collect();
    json!({"id": "", "code": code, "status": "lobby", "currentPhase": null,
           "phaseStartTime": null, "players": roster, "version": 0})
}

async fn recv_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).map_err(|e| format!("bad JSON: {e}"));
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket ended".into()),
        }
    }
}

/// Connects and joins one player; returns the socket and the join latency.
async fn join(
    o: &Opts,
    keys: &TokenKeys,
    room: usize,
    seat: usize,
) -> Result<(Ws, Duration), String> {
    let started = Instant::now();
    let code = room_code(room);
    let pid = player_id(seat);
    let mut ws = connect(o, room, seat).await?;
    let token = keys.mint_jwt(&code, &pid, now_secs(), 3600);
    let mut msg = json!({"type": "join_room", "roomCode": code, "playerId": pid,
                         "playerToken": token});
    // The real client sends its copy of the room with every join; the server reads
    // it only when the room does not exist.
    if seat == 0 || o.seed_every_join {
        msg["initialSnapshot"] = seed(&code, o.players);
    }
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    // The reply is hello_ack or error; anything else (room_state of another
    // joiner) is skipped without parsing the whole frame.
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("socket ended".into()),
        };
        if text.starts_with(r#"{"type":"hello_ack""#) {
            return Ok((ws, started.elapsed()));
        }
        if text.starts_with(r#"{"type":"error""#) {
            return Err(format!("join refused: {}", text.as_str()));
        }
    }
}

/// Opens the WebSocket of the player in `seat` of `room`, from that room's loopback
/// address, to the seat's server (seats go round the URLs given).
async fn connect(o: &Opts, room: usize, seat: usize) -> Result<Ws, String> {
    let url = &o.urls[seat % o.urls.len()];
    // ws://host:port/…
    let authority = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "80"));
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--url: bad port in {url}"))?;
    let target: std::net::SocketAddr = match (host, o.addresses) {
        ("127.0.0.1" | "localhost", n) if n > 0 => ([127, 0, 0, 1], port).into(),
        _ => {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(|e| format!("connect: {e}"))?;
            return Ok(ws);
        }
    };
    let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (room % o.addresses) as u8);
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind((source, 0).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    let tcp = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(tcp))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    Ok(ws)
}

/// Joins every player with bounded concurrency; hosts first so each room is seeded
/// once. Returns sockets indexed [room][seat] and the join latency histogram.
async fn join_all(
    o: &Opts,
    keys: &TokenKeys,
) -> Result<(Vec<Vec<Ws>>, Histogram<u64>, Duration), String> {
    let started = Instant::now();
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut sockets: Vec<Vec<Option<Ws>>> = (0..o.rooms)
        .map(|_| (0..o.players).map(|_| None).collect())
        .collect();
    let order: Vec<(usize, usize)> = (0..o.players)
        .flat_map(|seat| (0..o.rooms).map(move |room| (room, seat)))
        .collect();
    for wave in [&order[..o.rooms], &order[o.rooms..]] {
        let results = futures_util::stream::iter(wave.iter().copied())
            .map(|(room, seat)| async move { (room, seat, join(o, keys, room, seat).await) })
            .buffer_unordered(o.concurrency)
            .collect::<Vec<_>>()
            .await;
        for (room, seat, result) in results {
            let (ws, latency) = result?;
            let _ = hist.record(latency.as_micros() as u64);
            sockets[room][seat] = Some(ws);
        }
    }
    let sockets = sockets
        .into_iter()
        .map(|room| room.into_iter().flatten().collect())
        .collect();
    Ok((sockets, hist, started.elapsed()))
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Shared clock and send times: a receiver's latency is now − the sender's stamp.
struct Clock {
    start: Instant,
    /// Per room, per presentIndex slot: nanoseconds since `start` at send time.
    sent: Vec<Vec<AtomicU64>>,
}

impl Clock {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// What every player task of one run shares.
struct Run {
    opts: Opts,
    clock: Clock,
    tally: Tally,
    /// Counted only while true (after warm-up, before the end).
    measuring: AtomicBool,
    stop: CancellationToken,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    /// `unavailable` refusals (the persistence queue at its bound).
    unavailable: AtomicU64,
}

/// The heartbeat timer of one socket, as the real client keeps one.
fn heartbeats(o: &Opts) -> Option<tokio::time::Interval> {
    o.heartbeat.map(|every| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    })
}

async fn next_beat(heartbeat: &mut Option<tokio::time::Interval>) {
    match heartbeat {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Each player's loop in the broadcast scenario. presentIndex = seat*125 + seq%125,
/// so the slots of a room's outstanding messages never collide.
async fn broadcast_player(ws: Ws, room: usize, seat: usize, run: Arc<Run>) -> Histogram<u64> {
    let (o, clock, tally, measuring, stop) =
        (&run.opts, &run.clock, &run.tally, &run.measuring, &run.stop);
    let mut hist = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 sig figs is valid"));
    let code = room_code(room);
    let pid = player_id(seat);
    let (mut sink, mut stream) = ws.split();
    let mut seq = 0usize;
    let mut interval =
        (o.rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate)));
    let mut awaiting_own = false;
    let mut heartbeat = heartbeats(o);
    let beat = json!({"type": "heartbeat", "roomCode": code}).to_string();
    let send_next = |seq: usize| {
        let index = seat * 125 + seq % 125;
        clock.sent[room][index].store(clock.now_ns(), Ordering::Relaxed);
        json!({"type": "presentation_state", "roomCode": code, "playerId": pid,
               "presentIndex": index, "showCampaign": false})
        .to_string()
    };
    if interval.is_none() {
        let text = send_next(seq);
        if sink.send(Message::Text(text.into())).await.is_err() {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            return hist;
        }
        awaiting_own = true;
    }
    loop {
        let tick = async {
            match interval.as_mut() {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = next_beat(&mut heartbeat) => {
                if sink.send(Message::Text(beat.clone().into())).await.is_err() {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            _ = tick => {
                seq += 1;
                let text = send_next(seq);
                if measuring.load(Ordering::Relaxed) {
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                }
                if sink.send(Message::Text(text.into())).await.is_err() {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            msg = stream.next() => {
                let Some(Ok(Message::Text(text))) = msg else {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                };
                // The generator must outrun the server on one core: read only the
                // two fields it needs instead of parsing every frame into a tree.
                let Some(index) = presentation_index(&text) else {
                    if text.starts_with(r#"{"type":"error""#) {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                };
                let stamp = clock.sent[room].get(index).map(|a| a.load(Ordering::Relaxed)).unwrap_or(0);
                if measuring.load(Ordering::Relaxed) {
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    let _ = hist.record(clock.now_ns().saturating_sub(stamp) / 1000);
                }
                // Closed loop: our own echo returned, send the next one.
                if interval.is_none() && awaiting_own && index / 125 == seat {
                    seq += 1;
                    if measuring.load(Ordering::Relaxed) {
                        tally.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    let text = send_next(seq);
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
    hist
}

/// `presentIndex` of a `presentation_state` frame, found without a full parse (the
/// server writes `type` first and `presentIndex` as a plain integer).
fn presentation_index(text: &str) -> Option<usize> {
    if !text.starts_with(r#"{"type":"presentation_state""#) {
        return None;
    }
    let rest = &text[text.find(r#""presentIndex":"#)? + r#""presentIndex":"#.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Each player's loop in the ready scenario: toggle, wait for the own ready_update.
async fn ready_player(mut ws: Ws, room: usize, seat: usize, run: Arc<Run>) -> Histogram<u64> {
    let (tally, measuring, stop) = (&run.tally, &run.measuring, &run.stop);
    let mut hist = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 sig figs is valid"));
    let code = room_code(room);
    let pid = player_id(seat);
    let mut ready = false;
    let beat = json!({"type": "heartbeat", "roomCode": code}).to_string();
    let mut last_beat = Instant::now();
    while !stop.is_cancelled() {
        // A heartbeat between round trips when one is due, as the client's timer would.
        if let Some(every) = run.opts.heartbeat
            && last_beat.elapsed() >= every
        {
            last_beat = Instant::now();
            if ws.send(Message::Text(beat.clone().into())).await.is_err() {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        ready = !ready;
        let msg = json!({"type": "set_ready", "roomCode": code, "playerId": pid, "isReady": ready});
        let started = Instant::now();
        if ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .is_err()
        {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return hist,
                next = recv_json(&mut ws) => next,
            };
            match next {
                Ok(v) if v["type"] == "ready_update" && v["playerId"] == pid.as_str() => break,
                Ok(v) if v["type"] == "error" => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    if v["code"] == "unavailable" {
                        tally.unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    return hist;
                }
            }
        }
        if measuring.load(Ordering::Relaxed) {
            tally.delivered.fetch_add(1, Ordering::Relaxed);
            let _ = hist.record(started.elapsed().as_micros() as u64);
        }
    }
    hist
}

// One thread: the generator runs pinned to one core, and tokio's work-stealing
// runtime with one worker served some of its sockets 100 ms late under load, which
// showed as the server's tail (docs/benchmarks.md, "The closed loop's tail").
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(o).await {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("karaoke-bench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(o: Opts) -> Result<Value, String> {
    let keys = TokenKeys::new(
        o.secret.as_bytes(),
        karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
    );
    let before = server_usage(&o.server_pids);
    let (sockets, join_hist, join_time) = join_all(&o, &keys).await?;
    let joined: usize = sockets.iter().map(Vec::len).sum();
    let after_join = server_usage(&o.server_pids);
    let mut result = json!({
        "scenario": o.scenario, "tag": o.tag, "rooms": o.rooms, "players": o.players,
        "sockets": joined,
        "joins_per_sec": joined as f64 / join_time.as_secs_f64(),
        "join_p50_ms": micros(&join_hist, 0.5), "join_p99_ms": micros(&join_hist, 0.99),
    });
    if let (Some((rss0, cpu0)), Some((rss1, cpu1))) = (before, after_join) {
        result["server_rss_kib_before"] = rss0.into();
        result["server_rss_kib_joined"] = rss1.into();
        result["rss_kib_per_socket"] = ((rss1 as f64 - rss0 as f64) / joined as f64).into();
        result["join_server_cpu_cores"] = ((cpu1 - cpu0) / join_time.as_secs_f64()).into();
        result["server_cpu_us_per_join"] = ((cpu1 - cpu0) * 1e6 / joined as f64).into();
    }
    if o.scenario == "join" {
        if !o.hold.is_zero() {
            hold(&o, sockets, &mut result).await;
        }
        return Ok(result);
    }
    let run = Arc::new(Run {
        clock: Clock {
            start: Instant::now(),
            sent: (0..o.rooms)
                .map(|_| (0..1000).map(|_| AtomicU64::new(0)).collect())
                .collect(),
        },
        tally: Tally::default(),
        measuring: AtomicBool::new(false),
        stop: CancellationToken::new(),
        opts: o.clone(),
    });
    let (tally, measuring, stop) = (&run.tally, &run.measuring, &run.stop);
    let mut tasks = Vec::new();
    for (room, players) in sockets.into_iter().enumerate() {
        for (seat, ws) in players.into_iter().enumerate() {
            tasks.push(if o.scenario == "broadcast" {
                tokio::spawn(broadcast_player(ws, room, seat, run.clone()))
            } else {
                tokio::spawn(ready_player(ws, room, seat, run.clone()))
            });
        }
    }
    tokio::time::sleep(o.warmup).await;
    let cpu0 = server_usage(&o.server_pids);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(o.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = server_usage(&o.server_pids);
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let sent = tally.sent.load(Ordering::Relaxed);
    // Let in-flight messages land before stopping (they are not counted).
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = hist.add(h);
        }
    }
    let per_sec = delivered as f64 / elapsed;
    let key = if o.scenario == "broadcast" {
        "deliveries_per_sec"
    } else {
        "round_trips_per_sec"
    };
    result[key] = per_sec.into();
    result["sent"] = sent.into();
    result["delivered"] = delivered.into();
    if o.scenario == "broadcast" {
        let expected = sent * o.players as u64;
        result["expected_deliveries"] = expected.into();
        result["undelivered_fraction"] = if expected > 0 {
            (1.0 - delivered as f64 / expected as f64).max(0.0).into()
        } else {
            Value::Null
        };
    }
    result["errors"] = tally.errors.load(Ordering::Relaxed).into();
    result["unavailable"] = tally.unavailable.load(Ordering::Relaxed).into();
    result["latency_p50_ms"] = micros(&hist, 0.5).into();
    result["latency_p99_ms"] = micros(&hist, 0.99).into();
    result["latency_max_ms"] = (hist.max() as f64 / 1000.0).into();
    result["rate_per_player"] = o.rate.into();
    result["seconds"] = elapsed.into();
    if let (Some((_, c0)), Some((rss, c1))) = (cpu0, cpu1) {
        result["server_cpu_cores"] = ((c1 - c0) / elapsed).into();
        if c1 > c0 {
            let per_cpu_key = if o.scenario == "broadcast" {
                "deliveries_per_server_cpu_sec"
            } else {
                "round_trips_per_server_cpu_sec"
            };
            result[per_cpu_key] = (delivered as f64 / (c1 - c0)).into();
        }
        result["server_rss_kib"] = rss.into();
    }
    Ok(result)
}

/// Keeps every joined socket open for `--hold`, sending heartbeats as the real
/// client does and reading what arrives, then measures the server's memory again.
async fn hold(o: &Opts, sockets: Vec<Vec<Ws>>, result: &mut Value) {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (room, players) in sockets.into_iter().enumerate() {
        for ws in players {
            let (stop, mut heartbeat) = (stop.clone(), heartbeats(o));
            let beat = json!({"type": "heartbeat", "roomCode": room_code(room)}).to_string();
            tasks.push(tokio::spawn(async move {
                let (mut sink, mut stream) = ws.split();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = next_beat(&mut heartbeat) => {
                            if sink.send(Message::Text(beat.clone().into())).await.is_err() {
                                break;
                            }
                        }
                        msg = stream.next() => if !matches!(msg, Some(Ok(_))) { break },
                    }
                }
                (sink, stream)
            }));
        }
    }
    tokio::time::sleep(o.hold).await;
    if let Some((rss, _)) = server_usage(&o.server_pids) {
        result["server_rss_kib_after_hold"] = rss.into();
        if let (Some(before), Some(joined)) = (
            result["server_rss_kib_before"].as_u64(),
            result["sockets"].as_u64().filter(|n| *n > 0),
        ) {
            result["rss_kib_per_socket_after_hold"] =
                ((rss as f64 - before as f64) / joined as f64).into();
        }
    }
    stop.cancel();
    // The sockets close only now, after the measurement.
    for t in tasks {
        let _ = t.await;
    }
}
