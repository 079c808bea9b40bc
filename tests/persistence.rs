//! Persistence against real databases: a fresh PostgreSQL database or SQLite file per
//! test, the real server in-process, real WebSocket players and the real admin plane.
//!
//! What is checked is what lands in the tables (`room_events`, `room_snapshots`),
//! read back with a pool of the test's own, and what a server started on those tables
//! restores. The database outage is a real one: the server talks to PostgreSQL through
//! a TCP proxy (`common::proxy`) that the test cuts and restores.
//!
//! Nothing sleeps to synchronize. Waiting for the writer (queue depth 0, a snapshot at
//! a version) polls that condition every few milliseconds, bounded by `CATCH_UP`.

mod common;

use common::db::{fresh_postgres, fresh_sqlite, postgres_addr};
use common::proxy::Proxy;
use common::*;
use karaoke_realtime::admin::pb::{self, room_admin_client::RoomAdminClient};
use karaoke_realtime::config::{Config, Database};
use karaoke_realtime::observe::Origin;
use karaoke_realtime::protocol::canvas::CanvasOp;
use karaoke_realtime::protocol::{CreationPhase, ErrorCode, GameStatus, RoomSnapshot};
use karaoke_realtime::room::canvas::Canvas;
use karaoke_realtime::room::{Action, Actor, Room, SettingsPatch, StoredRoom};
use karaoke_realtime::server::{self, App, StartError};
use karaoke_realtime::store::{EventPayload, StoreError};
use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Longest wait for the writer to catch up (after an outage it retries with backoff
/// of up to 5 s).
const CATCH_UP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Backend {
    Postgres,
    Sqlite,
}

/// A new, empty database of `backend`; returns its URL.
async fn fresh(backend: Backend) -> String {
    match backend {
        Backend::Postgres => fresh_postgres().await.url,
        Backend::Sqlite => fresh_sqlite().0,
    }
}

fn database(url: &str) -> Database {
    if url.starts_with("sqlite:") {
        Database::Sqlite(url.to_string())
    } else {
        Database::Postgres(url.to_string())
    }
}

/// A server on `url`, with test defaults and `adjust` applied on top.
async fn server_on(url: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let db = database(url);
    spawn_with(move |c| {
        c.database = db;
        adjust(c);
    })
    .await
}

/// One `persist_dead_letters` row: (kind, adlob id, version, error, body).
type DeadLetterRow = (String, Option<String>, i64, String, String);

/// One `room_events` row as the test reads it.
#[derive(Debug)]
struct Event {
    version: i64,
    event_type: String,
    payload: String,
}

/// The test's own view of the tables, through its own pool.
enum Rows {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Rows {
    async fn open(url: &str) -> Rows {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url).expect("a SQLite URL");
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .expect("the test opens the SQLite file");
            Rows::Sqlite(pool)
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await
                .expect("the test connects to PostgreSQL");
            Rows::Postgres(pool)
        }
    }

    async fn events(&self, code: &str) -> Vec<Event> {
        let rows: Vec<(i64, String, String)> = match self {
            Rows::Postgres(pool) => sqlx::query_as(
                "SELECT version, event_type, payload::text FROM room_events \
                 WHERE room_code = $1 ORDER BY version",
            )
            .bind(code)
            .fetch_all(pool)
            .await
            .expect("read events"),
            Rows::Sqlite(pool) => sqlx::query_as(
                "SELECT version, event_type, payload FROM room_events \
                 WHERE room_code = $1 ORDER BY version",
            )
            .bind(code)
            .fetch_all(pool)
            .await
            .expect("read events"),
        };
        rows.into_iter()
            .map(|(version, event_type, payload)| Event {
                version,
                event_type,
                payload,
            })
            .collect()
    }

    /// Every snapshot row of `code` as (version, JSON text), oldest first.
    async fn snapshots(&self, code: &str) -> Vec<(i64, String)> {
        match self {
            Rows::Postgres(pool) => sqlx::query_as(
                "SELECT version, snapshot::text FROM room_snapshots \
                 WHERE room_code = $1 ORDER BY version",
            )
            .bind(code)
            .fetch_all(pool)
            .await
            .expect("read snapshots"),
            Rows::Sqlite(pool) => sqlx::query_as(
                "SELECT version, snapshot FROM room_snapshots \
                 WHERE room_code = $1 ORDER BY version",
            )
            .bind(code)
            .fetch_all(pool)
            .await
            .expect("read snapshots"),
        }
    }

    /// The latest snapshot row of `code`: (version, the stored room).
    async fn latest(&self, code: &str) -> Option<(i64, StoredRoom)> {
        let (version, json) = self.snapshots(code).await.pop()?;
        let stored = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("snapshot {code}@{version} is a StoredRoom: {e}\n{json}"));
        Some((version, stored))
    }

    /// Every canvas row of `code` as (adlob id, version, ops JSON), in key order.
    async fn canvases(&self, code: &str) -> Vec<(String, i64, String)> {
        match self {
            Rows::Postgres(pool) => sqlx::query_as(
                "SELECT adlob_id, version, ops::text FROM room_canvases \
                 WHERE room_code = $1 ORDER BY adlob_id, version",
            )
            .bind(code)
            .fetch_all(pool)
            .await
            .expect("read canvases"),
            Rows::Sqlite(pool) => sqlx::query_as(
                "SELECT adlob_id, version, ops FROM room_canvases \
                 WHERE room_code = $1 ORDER BY adlob_id, version",
            )
            .bind(code)
            .fetch_all(pool)
            .await
            .expect("read canvases"),
        }
    }

    /// The latest snapshot of `code` with the canvas rows it names put back in it:
    /// the whole room as stored, comparable with `Room::to_stored`.
    async fn stored_room(&self, code: &str) -> Option<(i64, StoredRoom)> {
        let (version, mut stored) = self.latest(code).await?;
        let rows = self.canvases(code).await;
        for (adlob, v) in std::mem::take(&mut stored.canvas_versions) {
            let (_, _, ops) = rows
                .iter()
                .find(|(a, rv, _)| *a == adlob && *rv as u64 == v)
                .unwrap_or_else(|| panic!("{code}@{version} names canvas {adlob}@{v}: {rows:?}"));
            let ops = serde_json::from_str(ops).expect("canvas ops");
            let canvas = Canvas::from_ops(ops, v).expect("a valid canvas");
            stored.canvases.insert(adlob, canvas);
        }
        Some((version, stored))
    }

    /// Every dead letter of `code`: (kind, adlob id, version, error, body).
    async fn dead_letters(&self, code: &str) -> Vec<DeadLetterRow> {
        let sql = "SELECT kind, adlob_id, version, error, body FROM persist_dead_letters \
                   WHERE room_code = $1 ORDER BY id";
        match self {
            Rows::Postgres(pool) => sqlx::query_as(sql).bind(code).fetch_all(pool).await,
            Rows::Sqlite(pool) => sqlx::query_as(sql).bind(code).fetch_all(pool).await,
        }
        .expect("read dead letters")
    }

    /// Makes the database refuse every row of room POISON for its content, as a
    /// constraint (Postgres) or a trigger (SQLite) would.
    async fn poison(&self) {
        match self {
            Rows::Postgres(_) => {
                for table in ["room_events", "room_snapshots", "room_canvases"] {
                    // NOT VALID: the rows already there stay; every new one is checked.
                    let sql = format!(
                        "ALTER TABLE {table} ADD CONSTRAINT test_poison \
                         CHECK (room_code <> 'POISON') NOT VALID"
                    );
                    self.execute(sql).await;
                }
            }
            Rows::Sqlite(_) => {
                for table in ["room_events", "room_snapshots", "room_canvases"] {
                    let sql = format!(
                        "CREATE TRIGGER test_poison_{table} BEFORE INSERT ON {table} \
                         WHEN NEW.room_code = 'POISON' \
                         BEGIN SELECT RAISE(ABORT, 'test_poison: this room is refused'); END"
                    );
                    self.execute(sql).await;
                }
            }
        }
    }

    /// Undoes `poison`.
    async fn unpoison(&self) {
        for table in ["room_events", "room_snapshots", "room_canvases"] {
            let sql = match self {
                Rows::Postgres(_) => format!("ALTER TABLE {table} DROP CONSTRAINT test_poison"),
                Rows::Sqlite(_) => format!("DROP TRIGGER test_poison_{table}"),
            };
            self.execute(sql).await;
        }
    }

    async fn execute(&self, sql: String) {
        let q = sqlx::AssertSqlSafe(sql.clone());
        match self {
            Rows::Postgres(pool) => sqlx::query(q).execute(pool).await.map(drop),
            Rows::Sqlite(pool) => sqlx::query(q).execute(pool).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn row_count(&self, code: &str) -> usize {
        self.events(code).await.len() + self.snapshots(code).await.len()
    }

    async fn insert_event(&self, code: &str, version: i64, event_type: &str, payload: &str) {
        match self {
            Rows::Postgres(pool) => sqlx::query(
                "INSERT INTO room_events (room_code, event_type, version, payload) \
                 VALUES ($1, $2, $3, $4::jsonb)",
            )
            .bind(code)
            .bind(event_type)
            .bind(version)
            .bind(payload)
            .execute(pool)
            .await
            .map(drop),
            Rows::Sqlite(pool) => sqlx::query(
                "INSERT INTO room_events (room_code, event_type, version, payload, created_at) \
                 VALUES ($1, $2, $3, $4, '2030-01-01T00:00:00.000Z')",
            )
            .bind(code)
            .bind(event_type)
            .bind(version)
            .bind(payload)
            .execute(pool)
            .await
            .map(drop),
        }
        .expect("insert an event row")
    }

    async fn insert_snapshot(&self, code: &str, version: i64, snapshot: &str) {
        match self {
            Rows::Postgres(pool) => sqlx::query(
                "INSERT INTO room_snapshots (room_code, version, snapshot) \
                 VALUES ($1, $2, $3::jsonb)",
            )
            .bind(code)
            .bind(version)
            .bind(snapshot)
            .execute(pool)
            .await
            .map(drop),
            Rows::Sqlite(pool) => sqlx::query(
                "INSERT INTO room_snapshots (room_code, version, snapshot, captured_at) \
                 VALUES ($1, $2, $3, '2030-01-01T00:00:00.000Z')",
            )
            .bind(code)
            .bind(version)
            .bind(snapshot)
            .execute(pool)
            .await
            .map(drop),
        }
        .expect("insert a snapshot row")
    }

    /// Records a migration as sqlx does (`_sqlx_migrations`), as a newer server would.
    async fn record_migration(&self, version: i64, description: &str) {
        let sql = "INSERT INTO _sqlx_migrations \
                   (version, description, success, checksum, execution_time) \
                   VALUES ($1, $2, TRUE, $3, 1)";
        let checksum = vec![0xAB_u8; 48];
        match self {
            Rows::Postgres(pool) => sqlx::query(sql)
                .bind(version)
                .bind(description)
                .bind(checksum)
                .execute(pool)
                .await
                .map(drop),
            Rows::Sqlite(pool) => sqlx::query(sql)
                .bind(version)
                .bind(description)
                .bind(checksum)
                .execute(pool)
                .await
                .map(drop),
        }
        .expect("record a migration")
    }
}

// ---------------------------------------------------------------------------
// Waiting and reading
// ---------------------------------------------------------------------------

/// Polls `check` until it holds, failing the test after `CATCH_UP`.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + CATCH_UP;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn depth(app: &App) -> usize {
    app.metrics.persist_queue_depth.load(Ordering::Acquire)
}

fn counter(app: &App, name: &str) -> u64 {
    app.metrics
        .counters
        .read()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

/// Waits until the writer has written everything queued and the latest snapshot of
/// `code` is at `version`.
async fn caught_up(s: &TestServer, rows: &Rows, code: &str, version: u64) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let queued = depth(&s.handle.app);
        let latest = rows.latest(code).await.map(|(v, _)| v);
        if queued == 0 && latest == Some(version as i64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {code}@{version} to be written: \
             {queued} rows queued, latest snapshot at {latest:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The version a frame carries (`room_state` and `hello_ack` carry it in the snapshot).
fn version_of(frame: &Value) -> Option<u64> {
    frame["version"]
        .as_u64()
        .or_else(|| frame["snapshot"]["version"].as_u64())
}

/// Reads `c` until a frame of `kind` at `version`; returns every frame read.
async fn read_until(c: &mut Client, kind: &str, version: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = c.recv().await;
        let done = frame["type"] == kind && version_of(&frame) == Some(version);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

async fn snapshot(s: &TestServer, code: &str) -> RoomSnapshot {
    s.handle
        .registry()
        .get(code)
        .expect("room is live")
        .snapshot()
        .await
        .expect("room answers")
}

/// Joins with `lastVersion` (and an optional `initialSnapshot`); returns the reply.
async fn join_with(
    s: &TestServer,
    code: &str,
    player: &str,
    last_version: Option<u64>,
    seed: Option<Value>,
) -> (Client, Value) {
    let mut c = s.connect().await;
    let mut msg = json!({"type":"join_room","roomCode":code,"playerId":player,
                         "playerToken": s.token(code, player)});
    if let Some(v) = last_version {
        msg["lastVersion"] = v.into();
    }
    if let Some(seed) = seed {
        msg["initialSnapshot"] = seed;
    }
    c.send(msg).await;
    let reply = c.recv().await;
    (c, reply)
}

fn without_presence(mut s: RoomSnapshot) -> RoomSnapshot {
    for p in &mut s.players {
        p.connected = false;
    }
    s
}

async fn admin(s: &TestServer) -> RoomAdminClient<tonic::transport::Channel> {
    RoomAdminClient::connect(format!("http://127.0.0.1:{}", s.handle.admin_addr.port()))
        .await
        .expect("admin plane connects")
}

fn brief(code: &str, id: &str) -> pb::PublishEventRequest {
    pb::PublishEventRequest {
        room_code: code.into(),
        event: Some(pb::publish_event_request::Event::BriefUpdated(
            pb::BriefUpdated {
                brief_id: id.into(),
            },
        )),
    }
}

fn set_ready(code: &str, player: &str, ready: bool) -> Value {
    json!({"type":"set_ready","roomCode":code,"playerId":player,"isReady":ready})
}

fn advance(code: &str) -> Value {
    json!({"type":"advance_phase","roomCode":code,"playerId":"host"})
}

fn stroke(id: &str) -> Value {
    json!({"op":"stroke","id":id,"color":"#123456","width":3,
           "points":[{"x":0,"y":0},{"x":10,"y":5,"pressure":0.5}]})
}

fn text_op(id: &str, text: &str) -> Value {
    json!({"op":"text","id":id,"text":text,"x":10,"y":20,"color":"#000","fontSize":24})
}

fn canvas(code: &str, adlob: &str, phase: &str, delta: Value) -> Value {
    json!({"type":"submit_canvas_delta","roomCode":code,"adlobId":adlob,"phase":phase,"delta":delta})
}

/// Every event of `code` in the log must be there exactly once, versions 1..=`last`
/// without a gap.
async fn assert_log_is_complete(rows: &Rows, code: &str, last: u64) -> Vec<Event> {
    let events = rows.events(code).await;
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    let expected: Vec<i64> = (1..=last as i64).collect();
    assert_eq!(
        versions, expected,
        "{code}: the event log holds every version 1..={last} exactly once"
    );
    events
}

// ---------------------------------------------------------------------------
// A whole game, then the rows (both backends)
// ---------------------------------------------------------------------------

/// Drives one game through every kind of change, from players' sockets and from the
/// server (as the admin plane does), and returns the final version and, per version,
/// the type of the frame that announced it to a watching socket.
struct Game {
    last: u64,
    announced: BTreeMap<u64, String>,
    /// The sockets still open: closing them would be changes (presence).
    _sockets: Vec<Client>,
}

async fn play_whole_game(s: &TestServer, rows: &Rows, code: &str) -> Game {
    let room = s.create_room(code, &["host", "p2", "p3"]);
    // The room's first snapshot, the base its log replays from.
    caught_up(s, rows, code, 0).await;
    // Not in the roster: joining changes nothing, and it sees every broadcast.
    let (mut watcher, hello) = s.join(code, "watcher").await;
    let mut v = version_of(&hello).expect("hello_ack has a version");
    assert_eq!(v, 0);

    // Presence: each roster join is a change.
    let mut clients = Vec::new();
    for id in ["host", "p2", "p3"] {
        let (c, hello) = s.join(code, id).await;
        v += 1;
        assert_eq!(version_of(&hello), Some(v), "{id} joined at {v}");
        clients.push(c);
    }
    let [mut host, mut p2, mut p3]: [Client; 3] = clients.try_into().ok().expect("3 clients");

    async fn step(c: &mut Client, msg: Value, kind: &str, v: &mut u64) {
        *v += 1;
        c.send(msg).await;
        read_until(c, kind, *v).await;
    }
    async fn by_server(room: &karaoke_realtime::owner::RoomHandle, action: Action, v: &mut u64) {
        *v += 1;
        let applied = room
            .apply(Origin::Server, action)
            .await
            .expect("server action applies");
        assert_eq!(applied.version, *v);
    }

    let patch = SettingsPatch {
        product_category: Some("snacks".into()),
        phase_duration_seconds: Some(90),
        ..SettingsPatch::default()
    };
    by_server(&room, Action::UpdateSettings { patch }, &mut v).await;
    step(&mut p2, set_ready(code, "p2", true), "ready_update", &mut v).await;
    step(&mut p3, set_ready(code, "p3", true), "ready_update", &mut v).await;
    step(
        &mut host,
        set_ready(code, "host", true),
        "ready_update",
        &mut v,
    )
    .await;
    step(&mut host, advance(code), "status_changed", &mut v).await; // briefing
    // Everyone was ready: the reset is a change of its own (room_state only).
    v += 1;
    read_until(&mut host, "room_state", v).await;
    let brief = Action::BriefUpdated {
        brief_id: "brief-1".into(),
    };
    by_server(&room, brief, &mut v).await;
    step(&mut host, advance(code), "status_changed", &mut v).await; // creating/big_idea
    let idea = |adlob: &str, text: &str| json!({"type":"submit_big_idea","roomCode":code,"adlobId":adlob,"text":text});
    step(
        &mut p2,
        idea("ad-p2", "Crunch louder"),
        "big_idea_submitted",
        &mut v,
    )
    .await;
    step(
        &mut p3,
        idea("ad-p3", "Snacks that sing"),
        "big_idea_submitted",
        &mut v,
    )
    .await;
    step(&mut host, advance(code), "phase_changed", &mut v).await; // visual
    let msg = canvas(code, "ad-p2", "visual", stroke("s1"));
    step(&mut p2, msg, "canvas_delta", &mut v).await;
    let msg = canvas(code, "ad-p3", "visual", stroke("s2"));
    step(&mut p3, msg, "canvas_delta", &mut v).await;
    let msg = canvas(code, "ad-p3", "visual", json!({"op":"remove","id":"s2"}));
    step(&mut p3, msg, "canvas_delta", &mut v).await;
    let content = Action::ContentSubmitted {
        adlob_id: "ad-p2".into(),
        phase: karaoke_realtime::protocol::CreationPhase::Visual,
        player_id: "p2".into(),
    };
    by_server(&room, content, &mut v).await;
    step(&mut host, advance(code), "phase_changed", &mut v).await; // headline
    let msg = canvas(code, "ad-p2", "headline", text_op("t1", "Loud & proud"));
    step(&mut p2, msg, "canvas_delta", &mut v).await;
    step(&mut host, advance(code), "phase_changed", &mut v).await; // pitch
    step(&mut host, advance(code), "status_changed", &mut v).await; // presenting
    // A presentation change is broadcast but changes no version: not an event.
    host.send(
        json!({"type":"presentation_state","roomCode":code,"playerId":"host",
                     "presentIndex":1,"showCampaign":true}),
    )
    .await;
    read_until(&mut host, "presentation_state", v).await;
    step(&mut host, advance(code), "status_changed", &mut v).await; // voting
    let results = json!({"type":"set_status","roomCode":code,"playerId":"p2",
                         "status":"results","currentPhase":null});
    step(&mut p2, results, "status_changed", &mut v).await;
    let p4 = player("p4", 3, false);
    by_server(&room, Action::UpsertPlayer { player: p4 }, &mut v).await;
    let remove = Action::RemovePlayer {
        player_id: "p4".into(),
    };
    by_server(&room, remove, &mut v).await;
    // p3's socket goes away: presence off is a change too.
    p3.ws.close(None).await.expect("close p3");
    v += 1;
    read_until(&mut host, "player_left", v).await;
    step(&mut host, advance(code), "status_changed", &mut v).await; // lobby
    step(
        &mut p2,
        set_ready(code, "p2", false),
        "ready_update",
        &mut v,
    )
    .await;

    // Every change as the watching socket saw it announced, by version.
    let mut announced = BTreeMap::new();
    for frame in read_until(&mut watcher, "ready_update", v).await {
        if let Some(version) = version_of(&frame)
            && frame["type"] != "presentation_state"
        {
            let kind = frame["type"].as_str().unwrap_or_default().to_string();
            announced.entry(version).or_insert(kind);
        }
    }
    assert_eq!(s.version(code).await, v);
    Game {
        last: v,
        announced,
        _sockets: vec![watcher, host, p2],
    }
}

async fn whole_game_rows(backend: Backend) {
    let url = fresh(backend).await;
    let s = server_on(&url, |c| c.snapshot_interval = Duration::from_millis(50)).await;
    let rows = Rows::open(&url).await;
    let code = "GAME1";
    let game = play_whole_game(&s, &rows, code).await;
    let n = game.last;
    caught_up(&s, &rows, code, n).await;

    // Every event once, versions gap-free, each of the type the players were told.
    let events = assert_log_is_complete(&rows, code, n).await;
    for e in &events {
        // How players are told of each kind of change.
        let told_as = match e.event_type.as_str() {
            "player_connected" | "ready_reset" => "room_state",
            "player_removed" => "player_left",
            other => other,
        };
        let announced = &game.announced[&(e.version as u64)];
        assert_eq!(
            announced, told_as,
            "event {} is {}",
            e.version, e.event_type
        );
    }
    assert!(events.iter().all(|e| e.event_type != "presentation_state"));

    // The latest snapshot is the room as it is in memory, its canvases apart.
    let (version, apart) = rows.latest(code).await.expect("a snapshot");
    assert!(
        apart.canvases.is_empty(),
        "no canvas inside the snapshot row"
    );
    assert_eq!(
        apart.canvas_versions.len(),
        2,
        "{:?}",
        apart.canvas_versions
    );
    let (_, stored) = rows.stored_room(code).await.expect("a snapshot");
    assert_eq!(version as u64, n);
    let live = snapshot(&s, code).await;
    assert_eq!(
        stored.snapshot, live,
        "stored snapshot equals the live room"
    );
    let info = s.handle.registry().get(code).unwrap().info().await.unwrap();
    assert_eq!(stored.settings, info.settings);
    assert_eq!(stored.brief_id.as_deref(), Some("brief-1"));
    assert!(!stored.closed);
    // Canvases and big ideas as a late joiner receives them.
    let (_late, hello) = s.join(code, "late-watcher").await;
    let stored_json = serde_json::to_value(&stored).unwrap();
    assert_eq!(stored_json["bigIdeas"], hello["bigIdeas"]);
    let canvases = hello["canvases"].as_object().expect("canvases");
    assert_eq!(canvases.len(), 2);
    for (adlob, c) in canvases {
        assert_eq!(stored_json["canvases"][adlob]["ops"], c["ops"], "{adlob}");
        assert_eq!(stored_json["canvases"][adlob]["version"], c["version"]);
    }

    // The log alone reproduces the room: an early snapshot plus every later event,
    // replayed through the room's rules, is the latest snapshot exactly. (Snapshots of
    // one room may coalesce before they are written, and the canvas rows older ones
    // name are pruned: the base is the first one written before any canvas existed.)
    let snapshots = rows.snapshots(code).await;
    let (first_version, first) = snapshots
        .iter()
        .map(|(v, json)| (v, serde_json::from_str::<StoredRoom>(json).unwrap()))
        .find(|(_, s)| s.canvas_versions.is_empty())
        .expect("a snapshot from before the canvases");
    let mut replayed = Room::from_stored(first).expect("the first snapshot is a room");
    assert_eq!(replayed.version(), *first_version as u64);
    for e in events.iter().filter(|e| e.version > *first_version) {
        let payload: EventPayload = serde_json::from_str(&e.payload)
            .unwrap_or_else(|err| panic!("event {} payload: {err}", e.version));
        let applied = replayed
            .apply(&payload.actor, payload.action, payload.at.at())
            .unwrap_or_else(|why| panic!("event {} replays: {why}", e.version));
        assert_eq!(applied.version as i64, e.version);
    }
    let mut replayed = replayed.to_stored(false);
    // Presentation is not an event (it changes no version): the snapshot carries it.
    replayed.snapshot.presentation = stored.snapshot.presentation;
    // Neither is presence before the base snapshot (a loaded room has nobody online).
    replayed.snapshot = without_presence(replayed.snapshot);
    let mut stored = stored;
    stored.snapshot = without_presence(stored.snapshot);
    assert_eq!(
        replayed, stored,
        "replaying the log gives the latest snapshot"
    );

    let app = &s.handle.app;
    assert_eq!(counter(app, "event_persist_success_total"), n);
    assert_eq!(counter(app, "event_persist_failures_total"), 0);
    assert!(counter(app, "snapshots_persisted_total") >= 2);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn a_whole_game_on_postgres_leaves_every_event_once_and_the_room_in_the_snapshot() {
    whole_game_rows(Backend::Postgres).await;
}

#[tokio::test]
async fn a_whole_game_on_sqlite_leaves_every_event_once_and_the_room_in_the_snapshot() {
    whole_game_rows(Backend::Sqlite).await;
}

// ---------------------------------------------------------------------------
// A real database outage while players play
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_database_outage_loses_nothing_and_refuses_changes_at_the_queue_bound() {
    const LIMIT: usize = 100;
    let db = fresh_postgres().await;
    let proxy = Proxy::start(postgres_addr()).await;
    let via_proxy = format!("postgres://postgres@{}/{}", proxy.addr, db.name);
    let configure = |c: &mut Config| {
        c.persist_queue_limit = LIMIT;
        c.snapshot_interval = Duration::from_millis(100);
        // The test's own pace, not the rate limiter's, decides when the bound is hit.
        c.rate_limit_per_sec = 1_000_000;
        c.rate_limit_burst = 1_000_000;
    };
    let s = server_on(&via_proxy, configure).await;
    let rows = Rows::open(&db.url).await;
    let app = s.handle.app.clone();
    let code = "OUT1";
    let room = s.create_room(code, &["host", "p2", "p3"]);
    let (mut host, _) = s.join(code, "host").await;
    let (mut p2, _) = s.join(code, "p2").await;
    let (mut p3, _) = s.join(code, "p3").await;
    // Three players came online (versions 1..=3); one more change, and it is written.
    let mut v = 4;
    host.send(set_ready(code, "host", true)).await;
    read_until(&mut host, "room_state", v).await;
    caught_up(&s, &rows, code, v).await;
    assert!(proxy.open_connections() > 0, "the server holds connections");

    // The database goes away while the game goes on.
    let killed = proxy.cut().await;
    assert!(killed > 0, "the cut killed the server's open connections");
    // The writer finds the database gone with its next write.
    let mut ready = false;
    host.send(set_ready(code, "host", ready)).await;
    v += 1;
    read_until(&mut host, "room_state", v).await;
    let mut accepted_in_outage = 1;
    until("a failed write attempt is counted", async || {
        counter(&app, "event_persist_failures_total") > 0
    })
    .await;
    let refusal = loop {
        assert!(
            accepted_in_outage <= LIMIT,
            "the queue bound was never reached"
        );
        ready = !ready;
        host.send(set_ready(code, "host", ready)).await;
        let reply = host.recv().await;
        if reply["type"] == "error" {
            break reply;
        }
        v += 1;
        assert_eq!(reply["type"], "ready_update", "{reply}");
        assert_eq!(version_of(&reply), Some(v));
        host.expect("room_state").await;
        accepted_in_outage += 1;
    };
    assert_eq!(refusal["code"], "unavailable", "{refusal}");
    assert_eq!(
        refusal["message"],
        "the database is unreachable and the write queue is full; try again shortly"
    );
    assert!(accepted_in_outage > 1, "the game went on during the outage");
    assert!(depth(&app) >= LIMIT, "refused only at the bound");
    let at_bound = v;
    assert_eq!(
        s.version(code).await,
        at_bound,
        "the refused change was not made"
    );

    // At the bound every state change is refused, whoever asks, and nothing changes.
    read_until(&mut p2, "room_state", at_bound).await;
    p2.send(set_ready(code, "p2", true)).await;
    p2.expect_error("unavailable").await;
    let mut admin = admin(&s).await;
    let status = admin
        .publish_event(brief(code, "brief-x"))
        .await
        .expect_err("the admin call is refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("the database is unreachable and the write queue is full"),
        "{status:?}"
    );
    let patch = SettingsPatch {
        product_category: Some("cars".into()),
        ..SettingsPatch::default()
    };
    let why = room
        .apply(Origin::Server, Action::UpdateSettings { patch })
        .await
        .expect_err("a server action is refused");
    assert_eq!(why.code, ErrorCode::Unavailable);
    assert_eq!(s.version(code).await, at_bound, "nothing changed");
    assert!(counter(&app, "ready_update_failures_total") >= 2);

    // A socket leaving cannot be refused: presence is still recorded past the bound.
    // It is the next frame the others get: nothing was broadcast for the refusals.
    p3.ws.close(None).await.expect("close p3");
    v += 1;
    let left = host.recv().await;
    assert_eq!(left["type"], "player_left", "{left}");
    assert_eq!(version_of(&left), Some(v));
    host.expect("room_state").await;
    let left = p2.recv().await;
    assert_eq!(left["type"], "player_left", "{left}");

    // The database comes back: everything queued lands, exactly once.
    proxy.restore();
    until("the queue drains after the outage", async || {
        depth(&app) == 0
    })
    .await;
    v += 1;
    host.send(set_ready(code, "host", !ready)).await;
    let reply = host.recv().await;
    assert_eq!(
        reply["type"], "ready_update",
        "changes are accepted again: {reply}"
    );
    assert_eq!(version_of(&reply), Some(v));
    caught_up(&s, &rows, code, v).await;
    let events = assert_log_is_complete(&rows, code, v).await;
    assert_eq!(events[at_bound as usize].event_type, "player_left");
    assert_eq!(
        counter(&app, "event_persist_success_total"),
        v,
        "each event row was written once"
    );
    let (_, stored) = rows.latest(code).await.expect("a snapshot");
    let live = snapshot(&s, code).await;
    assert_eq!(stored.snapshot, live);

    // And a server started on those rows has the room exactly as it was.
    s.handle.shutdown().await;
    let s = server_on(&via_proxy, configure).await;
    let restored = snapshot(&s, code).await;
    assert_eq!(restored, without_presence(live));
    s.handle.shutdown().await;
}

// ---------------------------------------------------------------------------
// Graceful shutdown, then a new server on the same database
// ---------------------------------------------------------------------------

async fn shutdown_writes_everything(backend: Backend) {
    let url = fresh(backend).await;
    // Neither the snapshot interval nor the batch window comes round during the test:
    // whatever reaches the database is written by the shutdown itself.
    let configure = |c: &mut Config| {
        c.snapshot_interval = Duration::from_secs(3600);
        c.persist_flush_interval = Duration::from_secs(3600);
    };
    let s = server_on(&url, configure).await;
    let rows = Rows::open(&url).await;
    let code = "STOP1";
    s.create_room(code, &["host", "p2"]);
    let (mut host, _) = s.join(code, "host").await;
    let (mut p2, _) = s.join(code, "p2").await;
    let mut v = 2;
    for (c, id) in [(&mut p2, "p2"), (&mut host, "host")] {
        v += 1;
        c.send(set_ready(code, id, true)).await;
        read_until(c, "ready_update", v).await;
    }
    v += 1;
    host.send(advance(code)).await;
    read_until(&mut host, "status_changed", v).await;
    // Both were ready: the reset follows as its own change.
    v += 1;
    read_until(&mut host, "room_state", v).await;
    v += 1;
    host.send(advance(code)).await;
    read_until(&mut host, "status_changed", v).await;
    v += 1;
    let msg = canvas(code, "ad-p2", "big_idea", stroke("s1"));
    p2.send(msg).await;
    read_until(&mut p2, "canvas_delta", v).await;
    let before = snapshot(&s, code).await;
    assert_eq!(before.version, v);
    assert_eq!(
        rows.row_count(code).await,
        0,
        "nothing written before shutdown"
    );

    let app = s.handle.app.clone();
    s.handle.shutdown().await;
    // Sockets closed with 1012 and their leaving changed nothing.
    let close = host.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1012);

    assert_log_is_complete(&rows, code, v).await;
    let (version, stored) = rows.latest(code).await.expect("a final snapshot");
    assert_eq!(
        version as u64, v,
        "the final snapshot is at the last version"
    );
    assert_eq!(stored.snapshot, before);
    assert!(!stored.closed);
    assert_eq!(counter(&app, "event_persist_success_total"), v);
    assert_eq!(depth(&app), 0);

    // A new server restores the room at that version.
    let s = server_on(&url, configure).await;
    assert_eq!(snapshot(&s, code).await, without_presence(before.clone()));
    // A socket outside the roster sees exactly the version the players last saw.
    let (_watcher, hello) = join_with(&s, code, "watcher", Some(v), None).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    assert_eq!(version_of(&hello), Some(v));
    assert_eq!(hello["recovered"], true);
    assert_eq!(
        hello["canvases"]["ad-p2"]["ops"][0]["id"], "s1",
        "the canvas came back"
    );
    // A player coming back online is itself a change (presence): it resumes from
    // what it saw and receives that one change after hello_ack.
    let (mut p2, hello) = join_with(&s, code, "p2", Some(v), None).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    assert_eq!(hello["recovered"], true);
    assert_eq!(version_of(&hello), Some(v + 1));
    let missed = p2.recv().await;
    assert_eq!(missed["type"], "room_state", "{missed}");
    assert_eq!(version_of(&missed), Some(v + 1));
    s.handle.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_on_postgres_writes_everything_and_a_new_server_resumes_the_room() {
    shutdown_writes_everything(Backend::Postgres).await;
}

#[tokio::test]
async fn graceful_shutdown_on_sqlite_writes_everything_and_a_new_server_resumes_the_room() {
    shutdown_writes_everything(Backend::Sqlite).await;
}

// ---------------------------------------------------------------------------
// The store wins over a client's seed
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_restored_room_ignores_a_clients_initial_snapshot() {
    let url = fresh(Backend::Postgres).await;
    let seeded = |c: &mut Config| c.allow_client_seeded_rooms = true;
    let s = server_on(&url, seeded).await;
    let code = "SEED1";
    s.create_room(code, &["host", "p2"]);
    let (mut host, _) = s.join(code, "host").await;
    host.send(advance(code)).await;
    read_until(&mut host, "status_changed", 2).await;
    let before = snapshot(&s, code).await;
    s.handle.shutdown().await;

    let s = server_on(&url, seeded).await;
    let rows = Rows::open(&url).await;
    let seed = json!({
        "id": "forged-id", "code": code, "status": "results", "currentPhase": null,
        "phaseStartTime": null, "version": 999,
        "players": [
            {"id":"p2","name":"Me","emoji":"x","isReady":true,"isHost":true,"seatIndex":0},
            {"id":"intruder","name":"Who","emoji":"y","isReady":true,"isHost":false,"seatIndex":1}
        ]
    });
    let (_p2, hello) = join_with(&s, code, "p2", None, Some(seed)).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    let got: RoomSnapshot = serde_json::from_value(hello["snapshot"].clone()).unwrap();
    assert_eq!(got.id, before.id, "the stored room, not the seed");
    assert_eq!(got.status, GameStatus::Briefing);
    assert_eq!(got.version, before.version + 1, "p2 coming online");
    let ids: Vec<&str> = got.players.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["host", "p2"]);
    assert!(got.players[0].is_host && !got.players[1].is_host);
    assert_eq!(snapshot(&s, code).await, got);
    let app = s.handle.app.clone();
    s.handle.shutdown().await;
    assert_eq!(depth(&app), 0);
    let (_, stored) = rows.latest(code).await.expect("snapshot");
    assert_eq!(stored.snapshot.id, before.id);
    assert_eq!(stored.snapshot.version, before.version + 1);
}

// ---------------------------------------------------------------------------
// Closed rooms
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_closed_room_is_stored_closed_and_not_restored() {
    let url = fresh(Backend::Postgres).await;
    let s = server_on(&url, |_| {}).await;
    let rows = Rows::open(&url).await;
    let (closed, open) = ("CLOSE1", "OPEN1");
    s.create_room(closed, &["host"]);
    s.create_room(open, &["host"]);
    let (mut host, _) = s.join(closed, "host").await;
    host.send(set_ready(closed, "host", true)).await;
    read_until(&mut host, "ready_update", 2).await;

    let mut admin = admin(&s).await;
    let final_version = admin
        .close_room(pb::CloseRoomRequest {
            room_code: closed.into(),
            reason: "game over".into(),
        })
        .await
        .expect("CloseRoom")
        .into_inner()
        .final_version;
    assert_eq!(final_version, 2);
    let frame = host.expect_close().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4000);
    caught_up(&s, &rows, closed, final_version).await;
    let (_, stored) = rows.latest(closed).await.unwrap();
    assert!(stored.closed, "the final snapshot says closed");
    assert_eq!(stored.snapshot.version, final_version);
    assert_log_is_complete(&rows, closed, final_version).await;
    s.handle.shutdown().await;

    let s = server_on(&url, |c| c.allow_client_seeded_rooms = true).await;
    assert!(s.handle.registry().get(closed).is_none(), "not restored");
    assert!(s.handle.registry().get(open).is_some(), "open rooms are");
    let (_c, reply) = join_with(&s, closed, "host", None, None).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "room_not_found", "{reply}");
    // Not even a client's seed brings the code back: one code, one history.
    let seed = json!({"id":"x","code":closed,"status":"lobby","currentPhase":null,
                      "phaseStartTime":null,"version":0,"players":[]});
    let (_c, reply) = join_with(&s, closed, "host", None, Some(seed)).await;
    assert_eq!(reply["code"], "room_not_found", "{reply}");
    let room = Room::new(closed, vec![player("host", 0, true)], Default::default()).unwrap();
    assert!(
        s.handle.registry().create_here(room).is_err(),
        "the code is retired"
    );
    s.handle.shutdown().await;
    let (version, stored) = rows.latest(closed).await.unwrap();
    assert_eq!(
        version as u64, final_version,
        "the rows are kept as they were"
    );
    assert!(stored.closed);
}

// ---------------------------------------------------------------------------
// Bad rows and a newer schema at start-up
// ---------------------------------------------------------------------------

fn payload(actor: Actor, action: Action) -> String {
    serde_json::to_string(&EventPayload {
        actor,
        at: karaoke_realtime::protocol::Timestamp::from_instant(OffsetDateTime::now_utc()),
        action,
    })
    .unwrap()
}

async fn malformed_rows_are_reported(backend: Backend) {
    let url = fresh(backend).await;
    let s = server_on(&url, |_| {}).await;
    let bad = [
        "BADSNAP", "NEWFMT", "BADEVENT", "BADJSON", "GAP", "MISMATCH",
    ];
    let good = ["GOOD1", "GOOD2"];
    for code in bad.iter().chain(&good) {
        let room = s.create_room(code, &["host", "p2"]);
        let patch = SettingsPatch {
            product_category: Some(format!("for {code}")),
            ..SettingsPatch::default()
        };
        room.apply(Origin::Server, Action::UpdateSettings { patch })
            .await
            .expect("applies");
    }
    let mut good_before = Vec::new();
    for code in good {
        good_before.push(snapshot(&s, code).await);
    }
    s.handle.shutdown().await;

    // Every room is at version 1, with its snapshot at 1. Now spoil some of them.
    let rows = Rows::open(&url).await;
    let (_, valid) = rows.latest("NEWFMT").await.unwrap();
    rows.insert_snapshot("BADSNAP", 2, r#"{"format":1,"nonsense":true}"#)
        .await;
    let mut newer = serde_json::to_value(&valid).unwrap();
    newer["format"] = 3.into();
    newer["snapshot"]["version"] = 2.into();
    rows.insert_snapshot("NEWFMT", 2, &newer.to_string()).await;
    let ghost = payload(
        Actor::Player("ghost".into()),
        Action::SetReady { is_ready: true },
    );
    rows.insert_event("BADEVENT", 2, "ready_update", &ghost)
        .await;
    rows.insert_event(
        "BADJSON",
        2,
        "status_changed",
        r#"{"actor":"server","at":"yesterday"}"#,
    )
    .await;
    let ready = payload(
        Actor::Player("p2".into()),
        Action::SetReady { is_ready: true },
    );
    rows.insert_event("GAP", 3, "ready_update", &ready).await;
    let (_, mismatch) = rows.latest("MISMATCH").await.unwrap();
    rows.insert_snapshot("MISMATCH", 5, &serde_json::to_string(&mismatch).unwrap())
        .await;
    let mut counts = Vec::new();
    for code in bad {
        counts.push(rows.row_count(code).await);
    }

    // The store reports each bad room with a clear reason and loads the others.
    let mut config = Config::for_tests(SECRET);
    config.database = database(&url);
    let (store, loaded) = server::open_store(&config)
        .await
        .expect("start-up survives bad rows")
        .expect("a store");
    drop(store);
    let mut restored: Vec<(&str, u64)> = loaded
        .rooms
        .iter()
        .map(|r| (r.code(), r.version()))
        .collect();
    restored.sort();
    assert_eq!(restored, [("GOOD1", 1), ("GOOD2", 1)]);
    let reasons: BTreeMap<&str, (u64, &str)> = loaded
        .failures
        .iter()
        .map(|f| (f.room_code.as_str(), (f.version, f.reason.as_str())))
        .collect();
    let expect = [
        (
            "BADSNAP",
            2,
            "snapshot is not a room: missing field `snapshot`",
        ),
        (
            "NEWFMT",
            2,
            "snapshot is invalid: stored with format 3 by a newer server",
        ),
        (
            "BADEVENT",
            1,
            "event 2 does not apply: player is not in this room's roster",
        ),
        ("BADJSON", 1, "event 2 is malformed"),
        ("GAP", 1, "event log has a gap: expected version 2, found 3"),
        (
            "MISMATCH",
            5,
            "snapshot row says MISMATCH@5 but holds MISMATCH@1",
        ),
    ];
    assert_eq!(reasons.len(), expect.len(), "{reasons:#?}");
    for (code, version, reason) in expect {
        let (v, r) = reasons[code];
        assert_eq!(v, version, "{code}: {r}");
        assert!(r.contains(reason), "{code}: {r:?} should say {reason:?}");
    }

    // A running server on that database serves the good rooms and not the bad ones,
    // and even a client's seed cannot put a new room over a bad room's rows.
    let s = server_on(&url, |c| c.allow_client_seeded_rooms = true).await;
    let mut live = s.handle.registry().codes();
    live.sort();
    assert_eq!(live, good);
    for (code, before) in good.iter().zip(good_before) {
        assert_eq!(snapshot(&s, code).await, before);
        let (_c, hello) = s.join(code, "p2").await;
        assert_eq!(version_of(&hello), Some(2));
    }
    let seed = json!({"id":"x","code":"BADSNAP","status":"lobby","currentPhase":null,
                      "phaseStartTime":null,"version":0,"players":[]});
    let (_c, reply) = join_with(&s, "BADSNAP", "host", None, Some(seed)).await;
    assert_eq!(reply["code"], "room_not_found", "{reply}");
    s.handle.shutdown().await;
    // The bad rooms' rows are left as they were, for inspection.
    for (code, count) in bad.iter().zip(counts) {
        assert_eq!(rows.row_count(code).await, count, "{code}");
    }
}

#[tokio::test]
async fn malformed_rows_on_postgres_are_reported_and_the_other_rooms_restored() {
    malformed_rows_are_reported(Backend::Postgres).await;
}

#[tokio::test]
async fn malformed_rows_on_sqlite_are_reported_and_the_other_rooms_restored() {
    malformed_rows_are_reported(Backend::Sqlite).await;
}

async fn newer_schema_stops_start_up(backend: Backend) {
    let url = fresh(backend).await;
    server_on(&url, |_| {}).await.handle.shutdown().await;
    let rows = Rows::open(&url).await;
    rows.record_migration(99, "from a newer server").await;

    let mut config = Config::for_tests(SECRET);
    config.database = database(&url);
    let err = match server::start(config).await {
        Ok(_) => panic!("a server must not start on a newer schema"),
        Err(e) => e,
    };
    assert!(
        matches!(err, StartError::Store(StoreError::SchemaTooNew(99))),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(
            "the database schema is newer than this server (migration 99 is unknown to it)"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn a_newer_schema_on_postgres_stops_start_up() {
    newer_schema_stops_start_up(Backend::Postgres).await;
}

#[tokio::test]
async fn a_newer_schema_on_sqlite_stops_start_up() {
    newer_schema_stops_start_up(Backend::Sqlite).await;
}

/// A room's periodic snapshot and its closing snapshot can be at the same version
/// (nothing changed in between) and wait in the same batch, here because the database
/// was away: both must land, the closed one last, and the writer must go on.
#[tokio::test]
async fn a_room_closed_during_an_outage_is_stored_closed_when_the_database_returns() {
    let db = fresh_postgres().await;
    let proxy = Proxy::start(postgres_addr()).await;
    let via_proxy = format!("postgres://postgres@{}/{}", proxy.addr, db.name);
    let s = server_on(&via_proxy, |_| {}).await;
    let rows = Rows::open(&db.url).await;
    let app = s.handle.app.clone();

    proxy.cut().await;
    let code = "GONE1";
    let room = s.create_room(code, &["host"]);
    // The new room's first snapshot (version 0) is queued.
    until("the first snapshot is queued", async || depth(&app) == 1).await;
    let last = room.close("closed".into()).await.expect("closes");
    s.handle.registry().remove(code);
    assert_eq!(last.version, 0);
    // The closing snapshot is queued too (it may already have coalesced with the
    // first one, if that one was still waiting for its batch).
    assert!(depth(&app) >= 1, "the closing snapshot is queued");

    proxy.restore();
    until("the queue drains after the outage", async || {
        depth(&app) == 0
    })
    .await;
    let snapshots = rows.snapshots(code).await;
    assert_eq!(snapshots.len(), 1, "one row per version");
    let (_, stored) = rows.latest(code).await.unwrap();
    assert!(stored.closed, "the closing snapshot is the one kept");
    // And the writer goes on with other rooms.
    s.create_room("NEXT1", &["host"]);
    caught_up(&s, &rows, "NEXT1", 0).await;
    s.handle.shutdown().await;
}

/// `presentation_state` changes no version, yet the snapshot carries it so that a
/// client (re)joining while presenting knows which campaign is on screen. A graceful
/// stop loses nothing, this included, even when the room's version was already saved.
#[tokio::test]
async fn graceful_shutdown_keeps_the_campaign_on_screen() {
    let url = fresh(Backend::Postgres).await;
    let configure = |c: &mut Config| c.snapshot_interval = Duration::from_millis(20);
    let s = server_on(&url, configure).await;
    let rows = Rows::open(&url).await;
    let code = "SHOW1";
    let room = s.create_room(code, &["host"]);
    let force = Action::Force {
        status: GameStatus::Presenting,
        phase: None,
        start_time: None,
    };
    room.apply(Origin::Server, force).await.expect("presenting");
    let (mut host, hello) = s.join(code, "host").await;
    let v = version_of(&hello).expect("a version");
    // The room at this version is saved before the presentation moves on.
    caught_up(&s, &rows, code, v).await;
    host.send(
        json!({"type":"presentation_state","roomCode":code,"playerId":"host",
                     "presentIndex":2,"showCampaign":true}),
    )
    .await;
    read_until(&mut host, "presentation_state", v).await;
    s.handle.shutdown().await;

    let s = server_on(&url, configure).await;
    let restored = snapshot(&s, code).await;
    assert_eq!(restored.version, v);
    let on_screen = restored.presentation.expect("the presentation came back");
    assert_eq!(
        (on_screen.present_index, on_screen.show_campaign),
        (2, true)
    );
    s.handle.shutdown().await;
}

// ---------------------------------------------------------------------------
// Rows the database refuses for their content (dead letters)
// ---------------------------------------------------------------------------

fn category(i: u64) -> Action {
    Action::UpdateSettings {
        patch: SettingsPatch {
            product_category: Some(format!("category {i}")),
            ..SettingsPatch::default()
        },
    }
}

/// The database refuses every row of one room for its content. The other room's rows
/// all land; the refused ones are in `persist_dead_letters`, counted; nothing is lost
/// at shutdown; the other room restores, and the refused one is reported rather than
/// brought back at a state older than its players saw.
async fn refused_rows_are_set_aside(backend: Backend) {
    const CHANGES: u64 = 30;
    let url = fresh(backend).await;
    let configure = |c: &mut Config| c.snapshot_interval = Duration::from_millis(50);
    let s = server_on(&url, configure).await;
    let rows = Rows::open(&url).await;
    let app = s.handle.app.clone();
    let poison = s.create_room("POISON", &["host"]);
    let clean = s.create_room("CLEAN1", &["host"]);
    caught_up(&s, &rows, "POISON", 0).await;
    caught_up(&s, &rows, "CLEAN1", 0).await;

    rows.poison().await;
    // Interleaved, so that refused and good rows share batches.
    for i in 1..=CHANGES {
        for room in [&poison, &clean] {
            let applied = room
                .apply(Origin::Server, category(i))
                .await
                .expect("the change is made in memory");
            assert_eq!(applied.version, i);
        }
    }

    // Every row of the unrelated room lands.
    caught_up(&s, &rows, "CLEAN1", CHANGES).await;
    assert_log_is_complete(&rows, "CLEAN1", CHANGES).await;
    assert_eq!(
        rows.stored_room("CLEAN1").await.map(|(_, r)| r.settings),
        Some(
            s.handle
                .registry()
                .get("CLEAN1")
                .unwrap()
                .info()
                .await
                .unwrap()
                .settings
        )
    );

    // POISON's rows are dead letters: every event, with the database's reason and the
    // row itself, then the snapshot taken to cover the gap they leave (refused too).
    until("POISON's rows are set aside", async || {
        let dead = rows.dead_letters("POISON").await;
        let events = dead.iter().filter(|d| d.0 == "event").count();
        let snapshot = dead
            .iter()
            .any(|d| d.0 == "snapshot" && d.2 == CHANGES as i64);
        events == CHANGES as usize && snapshot && depth(&app) == 0
    })
    .await;
    let dead = rows.dead_letters("POISON").await;
    let events: Vec<i64> = dead
        .iter()
        .filter(|d| d.0 == "event")
        .map(|d| d.2)
        .collect();
    assert_eq!(events, (1..=CHANGES as i64).collect::<Vec<_>>());
    for (kind, _, version, error, body) in &dead {
        assert!(error.contains("test_poison"), "{kind}@{version}: {error}");
        if kind == "event" {
            let payload: EventPayload = serde_json::from_str(body).expect("the row, kept whole");
            assert_eq!(payload.action, category(*version as u64));
        }
    }
    assert!(rows.events("POISON").await.is_empty());
    assert_eq!(
        rows.snapshots("POISON").await.len(),
        1,
        "only the first snapshot"
    );

    // Each dead letter counted once; a refusal is not an outage.
    until("every dead letter is counted", async || {
        counter(&app, "persist_dead_letters_total")
            == rows.dead_letters("POISON").await.len() as u64
    })
    .await;
    assert_eq!(counter(&app, "event_persist_success_total"), CHANGES);
    assert_eq!(counter(&app, "event_persist_failures_total"), 0);

    // Nothing is lost at shutdown.
    let before = snapshot(&s, "CLEAN1").await;
    s.handle.shutdown().await;
    assert_eq!(depth(&app), 0, "nothing left unwritten");

    let mut config = Config::for_tests(SECRET);
    config.database = database(&url);
    let (store, loaded) = server::open_store(&config)
        .await
        .expect("start-up survives dead letters")
        .expect("a store");
    drop(store);
    let restored: Vec<(&str, u64)> = loaded
        .rooms
        .iter()
        .map(|r| (r.code(), r.version()))
        .collect();
    assert_eq!(restored, [("CLEAN1", CHANGES)]);
    assert_eq!(loaded.failures.len(), 1, "{:?}", loaded.failures);
    let failure = &loaded.failures[0];
    assert_eq!(failure.room_code, "POISON");
    assert!(
        failure.reason.contains(
            "event 1 was refused by the database and is in persist_dead_letters; \
             the log ends at version 0"
        ),
        "{}",
        failure.reason
    );

    let s = server_on(&url, configure).await;
    assert_eq!(snapshot(&s, "CLEAN1").await, without_presence(before));
    assert!(s.handle.registry().get("POISON").is_none());
    let room = Room::new("POISON", vec![player("host", 0, true)], Default::default()).unwrap();
    assert!(
        s.handle.registry().create_here(room).is_err(),
        "a code with dead letters is never handed out again"
    );
    s.handle.shutdown().await;

    // The runbook's repair: fix the cause, put the refused events back, restart.
    rows.unpoison().await;
    rows.execute(
        match &rows {
            Rows::Postgres(_) => {
                "INSERT INTO room_events (room_code, event_type, version, payload, created_at) \
             SELECT room_code, event_type, version, body::jsonb, (body::jsonb->>'at')::timestamptz \
               FROM persist_dead_letters WHERE room_code = 'POISON' AND kind = 'event' \
             ON CONFLICT DO NOTHING"
            }
            Rows::Sqlite(_) => {
                "INSERT INTO room_events (room_code, event_type, version, payload, created_at) \
             SELECT room_code, event_type, version, body, json_extract(body, '$.at') \
               FROM persist_dead_letters WHERE room_code = 'POISON' AND kind = 'event' \
             ON CONFLICT DO NOTHING"
            }
        }
        .to_string(),
    )
    .await;
    rows.execute(
        "DELETE FROM persist_dead_letters WHERE room_code = 'POISON' AND kind = 'event'".into(),
    )
    .await;
    let events = rows.events("POISON").await;
    assert_eq!(events.len(), CHANGES as usize);
    assert!(events.iter().all(|e| e.event_type == "settings_changed"));
    let (_store, loaded) = server::open_store(&config)
        .await
        .expect("start-up")
        .expect("a store");
    assert!(loaded.failures.is_empty(), "{:?}", loaded.failures);
    let poison = loaded
        .rooms
        .iter()
        .find(|r| r.code() == "POISON")
        .expect("POISON is back");
    assert_eq!(poison.version(), CHANGES);
    assert_eq!(
        poison.settings.product_category.as_deref(),
        Some(format!("category {CHANGES}").as_str())
    );
}

#[tokio::test]
async fn rows_postgres_refuses_are_dead_lettered_and_every_other_room_is_written() {
    refused_rows_are_set_aside(Backend::Postgres).await;
}

#[tokio::test]
async fn rows_sqlite_refuses_are_dead_lettered_and_every_other_room_is_written() {
    refused_rows_are_set_aside(Backend::Sqlite).await;
}

// ---------------------------------------------------------------------------
// Canvases stored apart, and the queue's byte bound
// ---------------------------------------------------------------------------

/// An image element of about `kb` KiB (an inline PNG).
fn image(id: &str, kb: usize) -> CanvasOp {
    CanvasOp::from_value(json!({
        "op": "image", "id": id, "x": 1, "y": 2, "width": 30, "height": 40,
        "src": format!("data:image/png;base64,{}", "A".repeat(kb * 1024)),
    }))
    .expect("a valid image")
}

fn draw(adlob: &str, op: CanvasOp) -> Action {
    Action::Canvas {
        adlob_id: adlob.into(),
        phase: CreationPhase::Visual,
        op,
    }
}

fn host() -> Origin {
    Origin::Socket {
        conn: karaoke_realtime::observe::ConnId::detached(0),
        player_id: "host".into(),
    }
}

async fn into_visual(room: &karaoke_realtime::owner::RoomHandle) -> u64 {
    let force = Action::Force {
        status: GameStatus::Creating,
        phase: Some(CreationPhase::Visual),
        start_time: None,
    };
    room.apply(Origin::Server, force)
        .await
        .expect("creating")
        .version
}

/// The canvases a spectator's `hello_ack` carries.
async fn canvases_seen(s: &TestServer, code: &str) -> Value {
    let (_c, hello) = s.join(code, "spectator").await;
    hello["canvases"].clone()
}

async fn canvases_apart(backend: Backend) {
    const CANVASES: usize = 8;
    const IMAGES: usize = 10;
    let url = fresh(backend).await;
    // Checkpoints only when the test asks; batches of 1 MiB, so the room's canvases
    // (8 × 400 kB) span several.
    let configure = |c: &mut Config| {
        c.snapshot_interval = Duration::from_secs(3600);
        c.persist_batch_bytes = 1 << 20;
    };
    let s = server_on(&url, configure).await;
    let rows = Rows::open(&url).await;
    let app = s.handle.app.clone();
    let code = "ART1";
    let room = s.create_room(code, &["host"]);
    // The new room's first checkpoint, before anything is drawn.
    caught_up(&s, &rows, code, 0).await;
    // The same changes made to a room of the test's own: what the server's must hold.
    let mut mirror = Room::new(code, vec![player("host", 0, true)], Default::default()).unwrap();
    let mut change = async |origin: Origin, action: Action| -> u64 {
        let applied = room
            .apply(origin.clone(), action.clone())
            .await
            .expect("applies");
        let now = OffsetDateTime::now_utc();
        let mirrored = mirror.apply(&origin.actor(), action, now).expect("mirrors");
        assert_eq!(mirrored.version, applied.version);
        applied.version
    };
    let force = Action::Force {
        status: GameStatus::Creating,
        phase: Some(CreationPhase::Visual),
        start_time: None,
    };
    let mut v = change(Origin::Server, force).await;
    for a in 0..CANVASES {
        for i in 0..IMAGES {
            let op = image(&format!("i{i}"), 40);
            v = change(host(), draw(&format!("ad{a}"), op)).await;
        }
    }
    room.checkpoint().await;
    caught_up(&s, &rows, code, v).await;

    // The snapshot row names the canvases; each canvas is a row of its own.
    let (_, json) = rows.snapshots(code).await.pop().expect("a snapshot");
    assert!(
        json.len() < 4096,
        "a snapshot without canvases: {} bytes",
        json.len()
    );
    let (_, apart) = rows.latest(code).await.expect("a snapshot");
    assert_eq!(apart.format, 2);
    assert!(apart.canvases.is_empty());
    assert_eq!(apart.canvas_versions.len(), CANVASES);
    let written = rows.canvases(code).await;
    assert_eq!(written.len(), CANVASES, "one row per canvas");
    assert!(
        written
            .iter()
            .all(|(_, _, ops)| ops.len() > IMAGES * 40 * 1024)
    );
    assert_eq!(counter(&app, "canvases_persisted_total"), CANVASES as u64);
    assert!(
        counter(&app, "persist_batches_total") >= 3,
        "3.2 MB of canvases in 1 MiB batches"
    );

    // A change elsewhere: the next snapshot rewrites no canvas.
    v = change(Origin::Server, category(1)).await;
    room.checkpoint().await;
    caught_up(&s, &rows, code, v).await;
    assert_eq!(counter(&app, "canvases_persisted_total"), CANVASES as u64);
    assert_eq!(rows.canvases(code).await, written, "canvas rows untouched");

    // A small change to one canvas writes that canvas, and its older row goes.
    let stroke = CanvasOp::from_value(stroke("s1")).expect("a stroke");
    v = change(host(), draw("ad3", stroke)).await;
    room.checkpoint().await;
    caught_up(&s, &rows, code, v).await;
    assert_eq!(
        counter(&app, "canvases_persisted_total"),
        CANVASES as u64 + 1
    );
    let now = rows.canvases(code).await;
    assert_eq!(now.len(), CANVASES, "the replaced row was pruned");
    for ((adlob, version, ops), before) in now.iter().zip(&written) {
        if adlob == "ad3" {
            assert_eq!(*version as u64, v);
        } else {
            assert_eq!((adlob, version, ops), (&before.0, &before.1, &before.2));
        }
    }

    // The canvases as stored are the room's, and a restart loads them back exactly.
    // (Compared as `Room` state: a `hello_ack` this big exceeds a socket's 1 MiB
    // write buffer.)
    let (_, stored) = rows.stored_room(code).await.expect("a snapshot");
    assert_eq!(stored.canvases, mirror.canvases);
    s.handle.shutdown().await;
    let mut config = Config::for_tests(SECRET);
    config.database = database(&url);
    let (_store, loaded) = server::open_store(&config)
        .await
        .expect("start-up")
        .expect("a store");
    assert!(loaded.failures.is_empty(), "{:?}", loaded.failures);
    let [restored] = loaded.rooms.as_slice() else {
        panic!("one room restored: {:?}", loaded.rooms.len());
    };
    assert_eq!(restored.version(), v);
    assert_eq!(
        restored.canvases, mirror.canvases,
        "every canvas came back exactly"
    );
}

#[tokio::test]
async fn canvases_on_postgres_are_stored_apart_and_only_changed_ones_rewritten() {
    canvases_apart(Backend::Postgres).await;
}

#[tokio::test]
async fn canvases_on_sqlite_are_stored_apart_and_only_changed_ones_rewritten() {
    canvases_apart(Backend::Sqlite).await;
}

/// During an outage the queue's byte bound, not its row bound, refuses changes made of
/// large rows; the refusal says the database is unreachable. Everything lands after.
#[tokio::test]
async fn an_outage_with_a_byte_bound_refuses_large_changes_saying_the_database_is_unreachable() {
    let db = fresh_postgres().await;
    let proxy = Proxy::start(postgres_addr()).await;
    let via_proxy = format!("postgres://postgres@{}/{}", proxy.addr, db.name);
    let configure = |c: &mut Config| {
        c.persist_queue_bytes = 1 << 20;
        c.snapshot_interval = Duration::from_secs(3600);
    };
    let s = server_on(&via_proxy, configure).await;
    let rows = Rows::open(&db.url).await;
    let app = s.handle.app.clone();
    let code = "BIG1";
    let room = s.create_room(code, &["host"]);
    let mut v = into_visual(&room).await;
    room.checkpoint().await;
    caught_up(&s, &rows, code, v).await;

    proxy.cut().await;
    let mut i = 0;
    let why = loop {
        assert!(i < 100, "the byte bound was never reached");
        let op = image(&format!("i{i}"), 40);
        match room.apply(host(), draw(&format!("ad{}", i % 4), op)).await {
            Ok(applied) => v = applied.version,
            Err(why) => break why,
        }
        if i == 0 {
            until("the writer finds the database gone", async || {
                counter(&app, "event_persist_failures_total") > 0
            })
            .await;
        }
        i += 1;
    };
    assert_eq!(why.code, ErrorCode::Unavailable);
    assert_eq!(
        why.message,
        "the database is unreachable and the write queue is full; try again shortly"
    );
    assert!(
        depth(&app) < 100,
        "refused by bytes, not rows: {} rows",
        depth(&app)
    );
    assert!(app.metrics.persist_queue_bytes.load(Ordering::Acquire) >= 1 << 20);
    assert_eq!(s.version(code).await, v, "the refused change was not made");

    proxy.restore();
    until("the queue drains after the outage", async || {
        depth(&app) == 0
    })
    .await;
    room.checkpoint().await;
    caught_up(&s, &rows, code, v).await;
    assert_log_is_complete(&rows, code, v).await;
    s.handle.shutdown().await;
}

/// With writes succeeding but slower than the changes come (one row per round trip),
/// the queue still fills, and the refusal says that, not that the database is down.
#[tokio::test]
async fn a_database_slower_than_the_load_is_named_as_such() {
    let url = fresh(Backend::Postgres).await;
    let configure = |c: &mut Config| {
        c.persist_queue_limit = 100;
        c.persist_batch_max = 1;
        c.snapshot_interval = Duration::from_secs(3600);
    };
    let s = server_on(&url, configure).await;
    let rows = Rows::open(&url).await;
    let app = s.handle.app.clone();
    let code = "SLOW1";
    let room = s.create_room(code, &["host"]);
    caught_up(&s, &rows, code, 0).await;
    let mut v = 0;
    let why = loop {
        assert!(v < 100_000, "the queue never filled");
        match room.apply(Origin::Server, category(v + 1)).await {
            Ok(applied) => v = applied.version,
            Err(why) => break why,
        }
    };
    assert_eq!(why.code, ErrorCode::Unavailable);
    assert_eq!(
        why.message,
        "the database is slower than the load and the write queue is full; try again shortly"
    );
    assert_eq!(
        counter(&app, "event_persist_failures_total"),
        0,
        "no write failed"
    );
    until("the queue drains", async || depth(&app) == 0).await;
    assert_log_is_complete(&rows, code, v).await;
    s.handle.shutdown().await;
}

// ---------------------------------------------------------------------------
// Rows the previous release wrote
// ---------------------------------------------------------------------------

/// Format-1 snapshots (canvases inside, as the previous release wrote them) restore,
/// with the events after them; the room's next snapshot is format 2 and restores too.
async fn format_1_rows_restore(backend: Backend) {
    let url = fresh(backend).await;
    server_on(&url, |_| {}).await.handle.shutdown().await;
    let rows = Rows::open(&url).await;
    let code = "OLD1";
    let now = OffsetDateTime::now_utc();
    let mut room = Room::new(code, vec![player("host", 0, true)], Default::default()).unwrap();
    let me = Actor::Player("host".into());
    let force = Action::Force {
        status: GameStatus::Creating,
        phase: Some(CreationPhase::Visual),
        start_time: None,
    };
    room.apply(&Actor::Server, force, now).unwrap();
    let s1 = CanvasOp::from_value(stroke("s1")).unwrap();
    room.apply(&me, draw("ad-1", s1), now).unwrap();
    let mut old = serde_json::to_value(room.to_stored(false)).unwrap();
    old["format"] = 1.into();
    assert!(old.get("canvasVersions").is_none(), "{old}");
    assert_eq!(old["canvases"]["ad-1"]["ops"][0]["id"], "s1");
    rows.insert_snapshot(code, 2, &old.to_string()).await;
    let t1 = CanvasOp::from_value(text_op("t1", "Loud")).unwrap();
    let action = draw("ad-2", t1);
    room.apply(&me, action.clone(), now).unwrap();
    rows.insert_event(code, 3, "canvas_delta", &payload(me, action))
        .await;
    let expected: Value = room
        .canvases
        .iter()
        .map(|(id, c)| (id.clone(), json!({"ops": c.ops, "version": c.version})))
        .collect::<serde_json::Map<_, _>>()
        .into();

    let s = server_on(&url, |_| {}).await;
    assert_eq!(s.version(code).await, 3);
    assert_eq!(canvases_seen(&s, code).await, expected);
    let handle = s.handle.registry().get(code).unwrap();
    let v = handle
        .apply(Origin::Server, category(1))
        .await
        .unwrap()
        .version;
    handle.checkpoint().await;
    caught_up(&s, &rows, code, v).await;
    let (_, latest) = rows.latest(code).await.unwrap();
    assert_eq!(latest.format, 2);
    assert!(latest.canvases.is_empty());
    let names: Vec<(&str, u64)> = latest
        .canvas_versions
        .iter()
        .map(|(a, v)| (a.as_str(), *v))
        .collect();
    assert_eq!(names, [("ad-1", 2), ("ad-2", 3)]);
    s.handle.shutdown().await;

    let s = server_on(&url, |_| {}).await;
    assert_eq!(s.version(code).await, v);
    assert_eq!(canvases_seen(&s, code).await, expected);
    s.handle.shutdown().await;
}

#[tokio::test]
async fn format_1_rows_on_postgres_still_restore() {
    format_1_rows_restore(Backend::Postgres).await;
}

#[tokio::test]
async fn format_1_rows_on_sqlite_still_restore() {
    format_1_rows_restore(Backend::Sqlite).await;
}

/// Production PostgreSQL (Supabase) asks for TLS: `sslmode=require` in `DATABASE_URL`
/// is honoured, and the server's own connections are encrypted (the machine's
/// PostgreSQL serves TLS with a self-signed certificate, which `require` accepts
/// without verifying, as libpq does; `verify-full` checks it against the bundled
/// web roots).
#[tokio::test]
async fn a_database_url_asking_for_tls_gets_encrypted_connections() {
    let plain = fresh(Backend::Postgres).await;
    let separator = if plain.contains('?') { '&' } else { '?' };
    let url = format!("{plain}{separator}sslmode=require");
    let s = server_on(&url, |_| {}).await;
    let rows = Rows::open(&plain).await;
    s.create_room("TLS1", &["host"]);
    let (mut host, _) = s.join("TLS1", "host").await;
    host.send(set_ready("TLS1", "host", true)).await;
    read_until(&mut host, "ready_update", 2).await;
    caught_up(&s, &rows, "TLS1", 2).await;

    let Rows::Postgres(pool) = &rows else {
        unreachable!("a PostgreSQL URL")
    };
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("current_database");
    // Every other session on this database is the server's.
    let (encrypted, plain_sessions): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
    )
    .bind(&database)
    .fetch_one(pool)
    .await
    .expect("pg_stat_ssl");
    assert!(encrypted >= 1, "the server's connections use TLS");
    assert_eq!(plain_sessions, 0, "none of them is in plaintext");
    s.handle.shutdown().await;
}
