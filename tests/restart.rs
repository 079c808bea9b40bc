//! Restarts of the real `karaoke-realtime` binary on a real database (PostgreSQL and
//! SQLite): a graceful restart loses nothing, a `kill -9` loses at most the last batch
//! window and never restores anything inconsistent, `karaoke-realtime migrate` creates
//! the schema, and an unreachable database stops start-up with a clear line.
//! docs/persistence.md states the guarantees checked here.

mod binproc;
mod common;

use binproc::{BIN, Proc, WAIT, seed_snapshot};
use common::proxy::Proxy;
use common::{Client, db};
use karaoke_realtime::auth::{TokenKeys, now_secs};
use serde_json::{Value, json};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = "restart-test-shared-secret-5d21e8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

/// A fresh database for one test, and a direct connection to check what it holds.
struct TestDatabase {
    backend: Backend,
    url: String,
    /// PostgreSQL: the database's name (dropped at the end of a passing test).
    pg_name: Option<String>,
    /// SQLite: the directory holding the file (removed at the end).
    sqlite_dir: Option<PathBuf>,
}

impl TestDatabase {
    async fn fresh(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Postgres => {
                let db = db::fresh_postgres().await;
                TestDatabase {
                    backend,
                    url: db.url,
                    pg_name: Some(db.name),
                    sqlite_dir: None,
                }
            }
            Backend::Sqlite => {
                let (url, file) = db::fresh_sqlite();
                TestDatabase {
                    backend,
                    url,
                    pg_name: None,
                    sqlite_dir: file.parent().map(PathBuf::from),
                }
            }
        }
    }

    /// The highest snapshot version stored for `room`, if any.
    async fn latest_snapshot_version(&self, room: &str) -> Option<i64> {
        let sql = match self.backend {
            Backend::Postgres => "SELECT MAX(version) FROM room_snapshots WHERE room_code = $1",
            Backend::Sqlite => "SELECT MAX(version) FROM room_snapshots WHERE room_code = ?1",
        };
        match self.backend {
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
                let v: (Option<i64>,) = sqlx::query_as(sql)
                    .bind(room)
                    .fetch_one(&pool)
                    .await
                    .expect("query room_snapshots");
                pool.close().await;
                v.0
            }
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url).await.expect("connect");
                let v: (Option<i64>,) = sqlx::query_as(sql)
                    .bind(room)
                    .fetch_one(&pool)
                    .await
                    .expect("query room_snapshots");
                pool.close().await;
                v.0
            }
        }
    }

    /// The versions of `room`'s event rows, in order (PostgreSQL).
    async fn event_versions(&self, room: &str) -> Vec<i64> {
        let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM room_events WHERE room_code = $1 ORDER BY version")
                .bind(room)
                .fetch_all(&pool)
                .await
                .expect("query room_events");
        pool.close().await;
        rows.into_iter().map(|(v,)| v).collect()
    }

    /// Runs statements of the test's own (PostgreSQL).
    async fn execute(&self, statements: &[&'static str]) {
        let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
        for sql in statements {
            sqlx::query(*sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        pool.close().await;
    }

    /// Removes the database (called once a test has passed; a failed test leaves it
    /// for inspection).
    async fn drop_database(self) {
        if let Some(name) = &self.pg_name {
            use sqlx::Connection;
            let admin = db::postgres_admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to drop the test database");
            // The name is ours (karaoke_test_<uuid>), not input.
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("drop the test database");
        }
        if let Some(dir) = &self.sqlite_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Environment of a server on `database_url`; `extra` entries override.
fn env(database_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = [
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("REALTIME_SHARED_SECRET", SECRET),
        ("ALLOW_CLIENT_SEEDED_ROOMS", "true"),
        ("DATABASE_URL", database_url),
        ("HEARTBEAT_INTERVAL_MS", "600000"),
        ("HEARTBEAT_TIMEOUT_MS", "1200000"),
        ("METRICS_FLUSH_INTERVAL_MS", "0"),
        ("LOG_LEVEL", "info"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (name, value) in extra {
        vars.retain(|(n, _)| n != name);
        vars.push((name.to_string(), value.to_string()));
    }
    vars
}

fn spawn(vars: &[(String, String)]) -> Proc {
    let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Proc::spawn(&borrowed)
}

fn token(room: &str, player: &str) -> String {
    TokenKeys::new(
        SECRET.as_bytes(),
        karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
    )
    .mint_jwt(room, player, now_secs(), 600)
}

/// A named player's socket on the server at `port`.
async fn connect(port: u16, name: &'static str) -> Client {
    Client::connect(port, "any", WAIT).await.named(name)
}

/// Joins with a valid token and returns the `hello_ack`.
async fn join(
    c: &mut Client,
    room: &str,
    player: &str,
    seed: Option<Value>,
    last: Option<u64>,
) -> Value {
    let hello = c
        .join_with(room, player, &token(room, player), seed, last)
        .await;
    assert_eq!(hello["type"], "hello_ack", "{}: {hello}", c.name());
    hello
}

/// The room's state as `hello_ack` describes it: snapshot, canvases, big ideas.
#[derive(Debug, Clone, PartialEq)]
struct State {
    snapshot: Value,
    canvases: Value,
    big_ideas: Value,
}

impl State {
    fn of_hello(hello: &Value) -> State {
        State {
            snapshot: hello["snapshot"].clone(),
            canvases: hello["canvases"].clone(),
            big_ideas: hello["bigIdeas"].clone(),
        }
    }

    /// The same state with every player offline (presence is not restored).
    fn offline(&self) -> State {
        let mut s = self.clone();
        for p in s.snapshot["players"].as_array_mut().expect("players") {
            p["connected"] = json!(false);
        }
        s
    }

    fn version(&self) -> u64 {
        self.snapshot["version"].as_u64().expect("snapshot.version")
    }

    fn player<'a>(&'a self, id: &str) -> &'a Value {
        self.snapshot["players"]
            .as_array()
            .expect("players")
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("player {id} in {}", self.snapshot))
    }
}

/// The same game in every restart test. Returns the version after the last change.
///
/// v1 seed, v2 host online, v3 p2 online, v4 p2 ready, v5 briefing (ready reset),
/// v6 creating/big_idea, v7 big idea, v8 canvas stroke, v9 p2 ready.
async fn play(room: &str, host: &mut Client, p2: &mut Client) -> u64 {
    let seed = seed_snapshot(room, &["host", "p2", "p3"]);
    let hello = join(host, room, "host", Some(seed), None).await;
    assert_eq!(hello["snapshot"]["version"], 2, "{hello}");
    let hello = join(p2, room, "p2", None, None).await;
    assert_eq!(hello["snapshot"]["version"], 3, "{hello}");
    host.see("room_state", 3).await;

    p2.send(json!({"type":"set_ready","roomCode":room,"playerId":"p2","isReady":true}))
        .await;
    for c in [&mut *host, &mut *p2] {
        c.see("ready_update", 4).await;
        c.see("room_state", 4).await;
    }
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"}))
        .await;
    for c in [&mut *host, &mut *p2] {
        let changed = c.see("status_changed", 5).await;
        assert_eq!(changed["status"], "briefing", "{changed}");
        // p2 was ready: the reset is a change of its own.
        c.see("room_state", 6).await;
    }
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"}))
        .await;
    for c in [&mut *host, &mut *p2] {
        let changed = c.see("status_changed", 7).await;
        assert_eq!(changed["currentPhase"], "big_idea", "{changed}");
        c.see("room_state", 7).await;
    }
    host.send(
        json!({"type":"submit_big_idea","roomCode":room,"adlobId":"ad-1","text":"Socks that sing"}),
    )
    .await;
    for c in [&mut *host, &mut *p2] {
        c.see("big_idea_submitted", 8).await;
    }
    p2.send(json!({
        "type": "submit_canvas_delta", "roomCode": room, "adlobId": "ad-1", "phase": "big_idea",
        "delta": {"op":"stroke","id":"s1","color":"#123456","width":3,
                  "points":[{"x":1.5,"y":2.0},{"x":30.0,"y":40.25,"pressure":0.5}]}
    }))
    .await;
    for c in [&mut *host, &mut *p2] {
        c.see("canvas_delta", 9).await;
    }
    p2.send(json!({"type":"set_ready","roomCode":room,"playerId":"p2","isReady":true}))
        .await;
    for c in [&mut *host, &mut *p2] {
        c.see("ready_update", 10).await;
        c.see("room_state", 10).await;
    }
    assert_eq!((host.seen, p2.seen), (10, 10));
    10
}

/// Waits until the database holds a snapshot of `room` at `version` or later. The
/// loop ends as soon as the row is there; the interval only paces the queries.
async fn await_snapshot(db: &TestDatabase, room: &str, version: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if db
            .latest_snapshot_version(room)
            .await
            .is_some_and(|v| v >= version as i64)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a snapshot of {room} at v{version} is stored within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// a. Graceful restart: nothing is lost.
// ---------------------------------------------------------------------------------

async fn graceful_restart(backend: Backend) {
    let database = TestDatabase::fresh(backend).await;
    // Snapshots every 50 ms: the room is saved at its last version before the
    // presentation changes (which bumps no version), so the shutdown snapshot is what
    // must carry it.
    let vars = env(&database.url, &[("SNAPSHOT_INTERVAL_MS", "50")]);
    let room = "GRACE1";

    let mut server = spawn(&vars);
    let port = server.listening_port().await;
    let restored = server.find_message("rooms_restored").await;
    assert_eq!(restored["restored"], 0, "{restored}");

    let mut host = connect(port, "host").await;
    let mut p2 = connect(port, "p2").await;
    let last = play(room, &mut host, &mut p2).await;

    await_snapshot(&database, room, last).await;
    host.send(json!({"type":"presentation_state","roomCode":room,"playerId":"host","presentIndex":2,"showCampaign":true}))
        .await;
    for c in [&mut host, &mut p2] {
        let p = c.see("presentation_state", last).await;
        assert_eq!(p["presentIndex"], 2, "{p}");
    }

    // A spectator (not in the roster: its join changes no version) reads the whole
    // state the players hold.
    let mut watcher = connect(port, "watcher").await;
    let hello = join(&mut watcher, room, "watcher", None, None).await;
    let before = State::of_hello(&hello);
    assert_eq!(before.version(), last, "{hello}");
    assert_eq!(
        before.snapshot["presentation"],
        json!({"presentIndex":2,"showCampaign":true})
    );
    assert_eq!(before.player("p2")["isReady"], true);
    assert_eq!(before.player("host")["connected"], true);
    for c in [&mut host, &mut p2] {
        c.see("room_state", last).await;
    }

    server.sigterm().await;
    for c in [&mut host, &mut p2, &mut watcher] {
        assert_eq!(c.close_code().await, CloseCode::Restart, "{}", c.name());
        assert_eq!(c.seen, last, "{}: saw no change after v{last}", c.name());
    }
    let exit = server.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    let (lines, stderr) = server.finish().await;
    assert!(
        lines.iter().any(|l| l["message"] == "persist_flushed"),
        "the writer flushed everything: {lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["message"] == "persist_queue_lost_at_shutdown"),
        "{lines:#?}"
    );
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");

    // Same database, new process.
    let mut server = spawn(&vars);
    let port = server.listening_port().await;
    let restored = server.find_message("rooms_restored").await;
    assert_eq!(restored["restored"], 1, "{restored}");
    assert_eq!(restored["failed"], 0, "{restored}");

    // The spectator resumes at exactly the version it saw, with the same state.
    let mut watcher = connect(port, "watcher").await;
    let hello = join(&mut watcher, room, "watcher", None, Some(last)).await;
    assert_eq!(hello["recovered"], true, "{hello}");
    let after = State::of_hello(&hello);
    assert_eq!(after.version(), last, "{hello}");
    assert_eq!(
        after,
        before.offline(),
        "the restored room is the room before the restart, presence aside"
    );

    // Each player resumes from the version it saw: its own presence is the one
    // change since, replayed after hello_ack.
    let mut host = connect(port, "host").await;
    let hello = join(&mut host, room, "host", None, Some(last)).await;
    assert_eq!(hello["recovered"], true, "{hello}");
    assert_eq!(hello["snapshot"]["version"], last + 1, "{hello}");
    let replay = host.expect("room_state").await;
    assert_eq!(replay["snapshot"]["version"], last + 1, "{replay}");
    let now = State::of_hello(&hello);
    assert_eq!(now.player("host")["connected"], true);
    assert_eq!(now.player("p2")["connected"], false);
    let mut same = now.offline();
    same.snapshot["version"] = json!(last);
    assert_eq!(same, before.offline(), "only presence changed");
    let state = watcher.expect("room_state").await;
    assert_eq!(
        state["snapshot"]["version"],
        last + 1,
        "the spectator got no replay before the host's presence: {state}"
    );

    let mut p2 = connect(port, "p2").await;
    let hello = join(&mut p2, room, "p2", None, Some(last)).await;
    assert_eq!(hello["recovered"], true, "{hello}");
    assert_eq!(hello["snapshot"]["version"], last + 2, "{hello}");
    for v in [last + 1, last + 2] {
        let replay = p2.expect("room_state").await;
        assert_eq!(replay["snapshot"]["version"], v, "{replay}");
    }
    assert_eq!(State::of_hello(&hello).player("p2")["isReady"], true);
    host.see("room_state", last + 2).await;

    // The game goes on from where it was: creating/big_idea -> visual.
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"}))
        .await;
    for c in [&mut host, &mut p2] {
        let changed = c.see("phase_changed", last + 3).await;
        assert_eq!(changed["currentPhase"], "visual", "{changed}");
    }

    server.sigterm().await;
    let exit = server.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    drop((host, p2, watcher));
    database.drop_database().await;
}

#[tokio::test]
async fn graceful_restart_loses_nothing_postgres() {
    graceful_restart(Backend::Postgres).await;
}

#[tokio::test]
async fn graceful_restart_loses_nothing_sqlite() {
    graceful_restart(Backend::Sqlite).await;
}

// ---------------------------------------------------------------------------------
// b. kill -9: at most the last batch window is lost, never anything inconsistent.
// ---------------------------------------------------------------------------------

/// Sums `metrics_flush` deltas until every event up to `events` rows has been written
/// and a flush shows an empty queue.
/// `written` carries the sum over calls.
async fn await_persisted(server: &mut Proc, written: &mut u64, events: u64) {
    let done = tokio::time::timeout(WAIT, async {
        loop {
            let m = server.next_flush().await;
            *written += m["event_persist_success_total"].as_u64().expect("counter");
            assert_eq!(m["event_persist_failures_total"], 0, "{m:?}");
            if *written == events && m["persist_queue_depth"] == 0 {
                return;
            }
            assert!(
                *written <= events,
                "more events written than made: {written}"
            );
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "the writer wrote {events} events within {WAIT:?} (saw {written})"
    );
}

/// When the kill comes after the last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// As soon as the change is acknowledged: it may still be queued.
    AtOnce,
    /// Once the writer reports it written: it must survive.
    AfterWrite,
}

async fn kill9_restart(backend: Backend, flush_window_ms: &str, kill_at: Kill) {
    let database = TestDatabase::fresh(backend).await;
    let vars = env(
        &database.url,
        &[
            ("METRICS_FLUSH_INTERVAL_MS", "50"),
            ("PERSIST_FLUSH_INTERVAL_MS", flush_window_ms),
        ],
    );
    let room = "CRASH1";

    let mut server = spawn(&vars);
    let port = server.listening_port().await;
    let mut host = connect(port, "host").await;
    let mut p2 = connect(port, "p2").await;
    let landed = play(room, &mut host, &mut p2).await;
    // Every change after the seed (version 1) is one event row.
    let mut written = 0;
    await_persisted(&mut server, &mut written, landed - 1).await;

    // The state at `landed`, whole, as a spectator reads it.
    let mut watcher = connect(port, "watcher").await;
    let at_landed = State::of_hello(&join(&mut watcher, room, "watcher", None, None).await);
    assert_eq!(at_landed.version(), landed);
    for c in [&mut host, &mut p2] {
        c.see("room_state", landed).await;
    }

    // One more change, acknowledged, then SIGKILL at once.
    let last = landed + 1;
    host.send(json!({"type":"set_ready","roomCode":room,"playerId":"host","isReady":true}))
        .await;
    host.see("ready_update", last).await;
    if kill_at == Kill::AfterWrite {
        await_persisted(&mut server, &mut written, last - 1).await;
    }
    let kill = Command::new("kill")
        .arg("-KILL")
        .arg(server.pid.to_string())
        .status()
        .await
        .expect("run kill -KILL");
    assert!(kill.success(), "kill -KILL {}: {kill}", server.pid);
    let exit = server.wait_exit().await;
    assert_eq!(exit.signal(), Some(9), "killed by SIGKILL: {exit}");
    let mut at_last = at_landed.clone();
    at_last.snapshot["version"] = json!(last);
    for p in at_last.snapshot["players"].as_array_mut().expect("players") {
        if p["id"] == "host" {
            p["isReady"] = json!(true);
        }
    }
    drop((host, p2, watcher));

    let mut server = spawn(&vars);
    let port = server.listening_port().await;
    let restored = server.find_message("rooms_restored").await;
    assert_eq!(restored["restored"], 1, "{restored}");
    assert_eq!(restored["failed"], 0, "{restored}");

    // A spectator that saw `last` learns the truth: the room as it was at `last`, or
    // at `landed` if the last change was in the lost window.
    let mut watcher = connect(port, "watcher").await;
    let hello = join(&mut watcher, room, "watcher", None, Some(last)).await;
    let restored = State::of_hello(&hello);
    let version = restored.version();
    assert!(
        version == landed || version == last,
        "restored at v{version}, expected v{landed} or v{last}: {hello}"
    );
    let lost = version == landed;
    if kill_at == Kill::AfterWrite {
        assert!(
            !lost,
            "a change the writer reported written survives: {hello}"
        );
    }
    eprintln!(
        "kill -9 ({backend:?}, window {flush_window_ms} ms, {kill_at:?}): last change lost: {lost}"
    );
    let expected = if lost { &at_landed } else { &at_last };
    assert_eq!(
        restored,
        expected.offline(),
        "the restored room is exactly the room at v{version}, presence aside"
    );
    assert_eq!(
        hello["recovered"], !lost,
        "recovered only if the room has the version the client saw: {hello}"
    );

    // The host saw `last` too. If that change was lost, its reconnection must not be
    // taken for a resume (its own presence change brings the room back to the same
    // number, but not to the same state).
    let mut host = connect(port, "host").await;
    let hello = join(&mut host, room, "host", None, Some(last)).await;
    assert_eq!(hello["recovered"], !lost, "{hello}");
    assert_eq!(hello["snapshot"]["version"], version + 1, "{hello}");
    let now = State::of_hello(&hello);
    assert_eq!(now.player("host")["connected"], true);
    assert_eq!(now.player("host")["isReady"], !lost, "{hello}");
    if !lost {
        let replay = host.expect("room_state").await;
        assert_eq!(replay["snapshot"]["version"], version + 1, "{replay}");
    }
    let state = watcher.expect("room_state").await;
    assert_eq!(
        state["snapshot"], hello["snapshot"],
        "one truth for everyone"
    );

    // p2 saw `last` as well. By now the host's presence change has given the room a
    // version numbered `last` again if the change was lost: a number, not the state
    // p2 holds, so p2 must not be told it resumed either.
    let mut p2 = connect(port, "p2").await;
    let hello = join(&mut p2, room, "p2", None, Some(last)).await;
    assert_eq!(hello["recovered"], !lost, "{hello}");
    assert_eq!(hello["snapshot"]["version"], version + 2, "{hello}");
    let now = State::of_hello(&hello);
    assert_eq!(now.player("host")["isReady"], !lost, "{hello}");
    assert_eq!(now.player("p2")["connected"], true, "{hello}");
    if !lost {
        for v in [version + 1, version + 2] {
            let replay = p2.expect("room_state").await;
            assert_eq!(replay["snapshot"]["version"], v, "{replay}");
        }
    }
    for c in [&mut host, &mut watcher] {
        let state = c.see("room_state", version + 2).await;
        assert_eq!(
            state["snapshot"], hello["snapshot"],
            "one truth for everyone"
        );
    }

    // The game goes on from the restored state.
    host.send(json!({"type":"set_ready","roomCode":room,"playerId":"host","isReady":false}))
        .await;
    for c in [&mut host, &mut p2, &mut watcher] {
        c.see("ready_update", version + 3).await;
        c.see("room_state", version + 3).await;
    }

    // Versions made since the restart resume as usual: p2 drops its socket and comes
    // back with the version it saw, and gets what it missed (its own leaving and
    // return).
    let seen = p2.seen;
    assert_eq!(seen, version + 3);
    drop(p2);
    host.see("player_left", version + 4).await;
    let mut p2 = connect(port, "p2").await;
    let hello = join(&mut p2, room, "p2", None, Some(seen)).await;
    assert_eq!(hello["recovered"], true, "{hello}");
    assert_eq!(hello["snapshot"]["version"], version + 5, "{hello}");
    let left = p2.expect("player_left").await;
    assert_eq!(left["version"], version + 4, "{left}");
    let back = p2.expect("room_state").await;
    assert_eq!(back["snapshot"]["version"], version + 5, "{back}");

    server.sigterm().await;
    let exit = server.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    drop((host, p2, watcher));
    database.drop_database().await;
}

#[tokio::test]
async fn kill9_restart_restores_last_or_previous_version_postgres() {
    kill9_restart(Backend::Postgres, "50", Kill::AtOnce).await;
}

#[tokio::test]
async fn kill9_restart_restores_last_or_previous_version_sqlite() {
    kill9_restart(Backend::Sqlite, "50", Kill::AtOnce).await;
}

/// With a 2 s batch window the change made just before the kill is (all but surely)
/// still queued: this exercises the "lost" side of the same assertions every time.
#[tokio::test]
async fn kill9_inside_a_long_batch_window_postgres() {
    kill9_restart(Backend::Postgres, "2000", Kill::AtOnce).await;
}

#[tokio::test]
async fn kill9_inside_a_long_batch_window_sqlite() {
    kill9_restart(Backend::Sqlite, "2000", Kill::AtOnce).await;
}

/// The other side: the last change was written before the kill, so the room comes
/// back at that version and every client resumes.
#[tokio::test]
async fn kill9_after_the_write_keeps_the_last_change_postgres() {
    kill9_restart(Backend::Postgres, "50", Kill::AfterWrite).await;
}

#[tokio::test]
async fn kill9_after_the_write_keeps_the_last_change_sqlite() {
    kill9_restart(Backend::Sqlite, "50", Kill::AfterWrite).await;
}

// ---------------------------------------------------------------------------------
// c. `karaoke-realtime migrate`.
// ---------------------------------------------------------------------------------

/// Runs `karaoke-realtime migrate` with exactly `vars` as its environment.
async fn migrate(vars: &[(String, String)]) -> std::process::Output {
    let run = Command::new(BIN)
        .arg("migrate")
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("migrate exits within {WAIT:?}"))
        .expect("run karaoke-realtime migrate")
}

/// Tables in the public schema, and how many migrations succeeded (0 when the
/// migrations table does not exist yet).
async fn postgres_tables_and_migrations(url: &str) -> (Vec<String>, i64) {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY table_name",
    )
    .fetch_all(&pool)
    .await
    .expect("list tables");
    let tables: Vec<String> = tables.into_iter().map(|(t,)| t).collect();
    let applied = if tables.iter().any(|t| t == "_sqlx_migrations") {
        let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&pool)
            .await
            .expect("count migrations");
        n.0
    } else {
        0
    };
    pool.close().await;
    (tables, applied)
}

#[tokio::test]
async fn migrate_creates_the_tables_on_a_fresh_postgres_and_runs_twice() {
    let database = TestDatabase::fresh(Backend::Postgres).await;
    let (tables, _) = postgres_tables_and_migrations(&database.url).await;
    assert!(tables.is_empty(), "a fresh database: {tables:?}");

    let vars = env(&database.url, &[]);
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .expect("migrations/postgres")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64;
    for run in 1..=2 {
        let out = migrate(&vars).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "run {run}: {}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        assert!(stdout.contains("migrations applied"), "run {run}: {stdout}");
        assert!(stderr.trim().is_empty(), "run {run}: {stderr}");
        let (tables, applied) = postgres_tables_and_migrations(&database.url).await;
        for table in ["room_events", "room_snapshots", "_sqlx_migrations"] {
            assert!(
                tables.iter().any(|t| t == table),
                "run {run}: {table} in {tables:?}"
            );
        }
        assert_eq!(applied, migrations, "run {run}: each migration once");
    }

    // The server starts on the migrated database as on a fresh one.
    let mut server = spawn(&vars);
    let restored = server.find_message("rooms_restored").await;
    assert_eq!(restored["restored"], 0, "{restored}");
    server.listening_port().await;
    server.sigterm().await;
    let exit = server.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    database.drop_database().await;
}

#[tokio::test]
async fn migrate_creates_the_tables_in_a_new_sqlite_file() {
    let database = TestDatabase::fresh(Backend::Sqlite).await;
    let vars = env(&database.url, &[]);
    for run in 1..=2 {
        let out = migrate(&vars).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "run {run}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("migrations applied"), "run {run}: {stdout}");
    }
    let pool = sqlx::SqlitePool::connect(&database.url)
        .await
        .expect("connect");
    let tables: Vec<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .expect("list tables");
    pool.close().await;
    let tables: Vec<String> = tables.into_iter().map(|(t,)| t).collect();
    for table in ["room_events", "room_snapshots", "_sqlx_migrations"] {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
    database.drop_database().await;
}

#[tokio::test]
async fn migrate_with_memory_has_nothing_to_do() {
    let out = migrate(&env("memory:", &[])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}: {stdout}", out.status);
    assert!(stdout.contains("nothing to migrate"), "{stdout}");
}

// ---------------------------------------------------------------------------------
// d. A database that cannot be reached stops start-up.
// ---------------------------------------------------------------------------------

async fn start_fails(url: &str, names: &str) {
    let started = std::time::Instant::now();
    let mut server = spawn(&env(url, &[]));
    let exit = server.wait_exit().await;
    let elapsed = started.elapsed();
    let (lines, stderr) = server.finish().await;
    assert_eq!(
        exit.code(),
        Some(1),
        "exit status {exit}; {lines:#?} {stderr}"
    );
    let failed = lines
        .iter()
        .find(|l| l["message"] == "start_failed")
        .unwrap_or_else(|| panic!("a start_failed line: {lines:#?}"));
    assert_eq!(failed["level"], "error", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains(names), "the error names {names:?}: {failed}");
    assert!(
        !lines
            .iter()
            .any(|l| l["message"] == "realtime_server_listening"),
        "the server never announced itself: {lines:#?}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "gave up within the 10 s connect timeout (took {elapsed:?})"
    );
}

#[tokio::test]
async fn unreachable_postgres_stops_start_up_with_a_clear_line() {
    start_fails(
        "postgres://postgres@127.0.0.1:1/x",
        "cannot reach the database",
    )
    .await;
}

#[tokio::test]
async fn unusable_sqlite_path_stops_start_up_with_a_clear_line() {
    // A directory cannot be created under a regular file.
    start_fails("sqlite:///dev/null/karaoke.db", "SQLite directory").await;
}

// ---------------------------------------------------------------------------------
// e. Rows the database refuses, and a database connection that freezes.
// ---------------------------------------------------------------------------------

/// Polls until `room`'s event rows are exactly `versions` (the loop ends as soon as
/// they are; the interval only paces the queries).
async fn await_events(db: &TestDatabase, room: &str, versions: std::ops::RangeInclusive<i64>) {
    let expected: Vec<i64> = versions.collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = db.event_versions(room).await;
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room}'s events are {expected:?} within {WAIT:?}, not {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn set_ready(room: &str, ready: bool) -> Value {
    json!({"type":"set_ready","roomCode":room,"playerId":"host","isReady":ready})
}

/// The database refuses every row of one room for its content. An operator sees each
/// refused row logged (`persist_dead_letter`) and counted, the other room's rows all
/// land, nothing is lost at shutdown, and the next start restores the other room and
/// reports the refused one.
#[tokio::test]
async fn refused_rows_are_logged_counted_and_every_other_room_written_postgres() {
    const TOGGLES: u64 = 30;
    let database = TestDatabase::fresh(Backend::Postgres).await;
    let vars = env(
        &database.url,
        &[
            ("SNAPSHOT_INTERVAL_MS", "50"),
            ("METRICS_FLUSH_INTERVAL_MS", "50"),
        ],
    );
    let mut server = spawn(&vars);
    let port = server.listening_port().await;
    let mut poison = connect(port, "poison").await;
    let mut clean = connect(port, "clean").await;
    for (c, room) in [(&mut poison, "POISON"), (&mut clean, "CLEAN1")] {
        join(c, room, "host", Some(seed_snapshot(room, &["host"])), None).await;
        // The seed (version 1) is the first snapshot; the host coming online, event 2.
        await_snapshot(&database, room, 1).await;
        await_events(&database, room, 2..=2).await;
    }
    database
        .execute(&[
            "ALTER TABLE room_events ADD CONSTRAINT test_poison \
             CHECK (room_code <> 'POISON') NOT VALID",
            "ALTER TABLE room_snapshots ADD CONSTRAINT test_poison \
             CHECK (room_code <> 'POISON') NOT VALID",
        ])
        .await;

    // The game goes on in both rooms.
    for i in 1..=TOGGLES {
        for (c, room) in [(&mut poison, "POISON"), (&mut clean, "CLEAN1")] {
            c.send(set_ready(room, i % 2 == 1)).await;
            c.see("ready_update", 2 + i).await;
        }
    }
    let last = 2 + TOGGLES;

    // Each refused row is logged, with its room, version, kind and the reason.
    let line = server
        .find("a persist_dead_letter line", |l| {
            l["message"] == "persist_dead_letter" && l["kind"] == "event"
        })
        .await;
    assert_eq!(line["level"], "error", "{line}");
    assert_eq!(line["roomCode"], "POISON", "{line}");
    assert_eq!(line["stored"], true, "{line}");
    let version = line["version"].as_u64().expect("a version");
    assert!((3..=last).contains(&version), "{line}");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("test_poison")),
        "{line}"
    );
    // Every row of the other room lands.
    await_events(&database, "CLEAN1", 2..=last as i64).await;
    assert_eq!(database.event_versions("POISON").await, [2]);
    // And every refused row is counted: 30 events, then at least one snapshot.
    let counted = tokio::time::timeout(WAIT, async {
        let mut dead = 0;
        loop {
            let m = server.next_flush().await;
            dead += m["persist_dead_letters_total"].as_u64().expect("counter");
            assert_eq!(m["event_persist_failures_total"], 0, "not an outage: {m:?}");
            if dead > TOGGLES && m["persist_queue_depth"] == 0 {
                return dead;
            }
        }
    })
    .await
    .expect("the dead letters are counted");
    assert!(counted > TOGGLES);

    server.sigterm().await;
    let exit = server.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    let (lines, _) = server.finish().await;
    assert!(
        lines.iter().any(|l| l["message"] == "persist_flushed"),
        "nothing was lost at shutdown"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l["message"] == "persist_queue_lost_at_shutdown"),
        "{lines:#?}"
    );

    let mut server = spawn(&vars);
    let port = server.listening_port().await;
    let restored = server.find_message("rooms_restored").await;
    assert_eq!(restored["restored"], 1, "{restored}");
    assert_eq!(restored["failed"], 1, "{restored}");
    let failed = server.find_message("room_restore_failed").await;
    assert_eq!(failed["roomCode"], "POISON", "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("is in persist_dead_letters")),
        "{failed}"
    );
    let mut clean = connect(port, "clean").await;
    let hello = join(&mut clean, "CLEAN1", "host", None, Some(last)).await;
    assert_eq!(hello["recovered"], true, "{hello}");
    assert_eq!(hello["snapshot"]["version"], last + 1, "{hello}");
    server.sigterm().await;
    assert_eq!(server.wait_exit().await.code(), Some(0));
    drop((poison, clean));
    database.drop_database().await;
}

/// The database connection stops answering in the middle of a write (a proxy that
/// freezes after forwarding the INSERT): the stall is logged while it lasts, the
/// write is abandoned at the statement timeout and retried on a fresh connection,
/// the rows land once, and `persistence_recovered` counts the outage from the freeze.
#[tokio::test]
async fn a_frozen_database_connection_is_logged_abandoned_and_retried_postgres() {
    let database = TestDatabase::fresh(Backend::Postgres).await;
    let proxy = Proxy::start(db::postgres_addr()).await;
    let name = database.pg_name.clone().expect("a PostgreSQL database");
    // In plaintext: the proxy finds the write by the room code in the bytes it
    // forwards (the default `sslmode=prefer` would encrypt them).
    let via_proxy = format!("postgres://postgres@{}/{name}?sslmode=disable", proxy.addr);
    let vars = env(
        &via_proxy,
        &[
            ("PERSIST_STATEMENT_TIMEOUT_MS", "1000"),
            ("SNAPSHOT_INTERVAL_MS", "3600000"),
        ],
    );
    let room = "FROZE1";
    let mut server = spawn(&vars);
    let port = server.listening_port().await;
    let mut host = connect(port, "host").await;
    join(
        &mut host,
        room,
        "host",
        Some(seed_snapshot(room, &["host"])),
        None,
    )
    .await;
    await_snapshot(&database, room, 1).await;
    await_events(&database, room, 2..=2).await;

    // The next write carrying this room's rows freezes its connection.
    proxy.freeze_next(room.as_bytes());
    host.send(set_ready(room, true)).await;
    host.see("ready_update", 3).await;

    let stalled = server.find_message("persist_write_stalled").await;
    assert_eq!(proxy.frozen_connections(), 1, "logged while it lasts");
    let elapsed = stalled["elapsed_ms"].as_u64().expect("elapsed_ms");
    assert!(
        (250..1000).contains(&elapsed),
        "logged a quarter into the timeout, before it: {stalled}"
    );
    let failed = server.find_message("persist_batch_failed").await;
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer within 1000 ms")),
        "{failed}"
    );
    let recovered = server.find_message("persistence_recovered").await;
    assert_eq!(
        proxy.frozen_connections(),
        1,
        "written while the first connection is still frozen: on a fresh one"
    );
    let outage = recovered["outage_ms"].as_u64().expect("outage_ms");
    assert!(
        outage >= 1000,
        "at least the statement timeout: {recovered}"
    );
    // From the freeze to the recovery, not from the first failure.
    let frozen_at = proxy.frozen_wall_time().expect("a frozen connection");
    let recovered_at = time::OffsetDateTime::parse(
        recovered["time"].as_str().expect("time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("an RFC 3339 time");
    let frozen_for = (recovered_at - frozen_at).whole_milliseconds();
    assert!(
        i128::from(outage) + 5 >= frozen_for,
        "outage {outage} ms, frozen {frozen_for} ms before recovering"
    );
    eprintln!(
        "frozen connection: stall logged at {elapsed} ms, outage {outage} ms, \
         frozen {frozen_for} ms before the recovery"
    );
    // Once: the first INSERT went through before the freeze, the retry is a no-op.
    await_events(&database, room, 2..=3).await;

    // The writer goes on, the frozen connection aside.
    host.send(set_ready(room, false)).await;
    host.see("ready_update", 4).await;
    await_events(&database, room, 2..=4).await;
    assert_eq!(proxy.frozen_connections(), 1);
    proxy.thaw();

    server.sigterm().await;
    let exit = server.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    let (lines, _) = server.finish().await;
    assert!(
        lines.iter().any(|l| l["message"] == "persist_flushed"),
        "{lines:#?}"
    );
    drop(host);
    database.drop_database().await;
}
