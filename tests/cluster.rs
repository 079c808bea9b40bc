//! Cluster mode with three (and four) real `karaoke-realtime` processes on loopback,
//! the real PostgreSQL (a database per test) and Redis: the machine's, under a key
//! prefix per test, or one the test starts itself on a free port when it stops,
//! restarts or cuts it. docs/cluster.md states the guarantees checked here.

mod binproc;
mod common;

use binproc::{Proc, WAIT, http_get, seed_snapshot};
use common::proxy::Proxy;
use common::{Client, db};
use karaoke_realtime::auth::{TokenKeys, now_secs};
use serde_json::{Value, json};
use sqlx::Connection;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = "cluster-test-shared-secret-a81f02";

fn token(room: &str, player: &str) -> String {
    TokenKeys::new(
        SECRET.as_bytes(),
        karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
    )
    .mint_jwt(room, player, now_secs(), 600)
}

/// The machine's Redis (started before the session and before CI).
const MACHINE_REDIS: &str = "redis://127.0.0.1:6379";

/// A key prefix no other test or run shares.
fn prefix() -> String {
    format!("kt{}", uuid::Uuid::new_v4().simple())
}

/// A Redis server of the test's own, on a free port, that it can stop and start.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = OwnRedis { port, child: None };
        redis.up().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts redis-server (nothing kept on disk) and waits until it answers.
    async fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--bind")
            .arg("127.0.0.1")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (it is on this machine kind)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("redis url");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "redis-server answers");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }
}

/// One node of the cluster.
struct Node {
    proc: Proc,
    id: String,
    port: u16,
    admin: u16,
}

impl Node {
    async fn start(db: &str, redis: &str, prefix: &str, id: &str, extra: &[(&str, &str)]) -> Node {
        let mut vars: Vec<(&str, &str)> = vec![
            ("PORT", "0"),
            ("ADMIN_PORT", "0"),
            ("BIND_ADDR", "127.0.0.1"),
            ("REALTIME_SHARED_SECRET", SECRET),
            ("ALLOW_CLIENT_SEEDED_ROOMS", "true"),
            ("DATABASE_URL", db),
            ("REDIS_URL", redis),
            ("REDIS_KEY_PREFIX", prefix),
            ("NODE_ID", id),
            ("CLUSTER_LEASE_TTL_MS", "1500"),
            ("SNAPSHOT_INTERVAL_MS", "100"),
            ("HEARTBEAT_INTERVAL_MS", "600000"),
            ("HEARTBEAT_TIMEOUT_MS", "1200000"),
            ("METRICS_FLUSH_INTERVAL_MS", "0"),
            ("SHUTDOWN_GRACE_MS", "3000"),
            ("LOG_LEVEL", "info"),
        ];
        for (name, value) in extra {
            vars.retain(|(n, _)| n != name);
            vars.push((name, value));
        }
        let mut proc = Proc::spawn(&vars);
        let port = proc.listening_port().await;
        let admin = proc.find_message("admin_plane_listening").await["port"]
            .as_u64()
            .expect("admin port") as u16;
        let node = Node {
            proc,
            id: id.to_string(),
            port,
            admin,
        };
        node.await_ready(true).await;
        node
    }

    /// Waits until `/readyz` says `ready` (the node's probe of its own subscription
    /// came back) or, with `false`, until it says 503.
    async fn await_ready(&self, ready: bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, _) = http_get(self.port, "/readyz").await;
            if (status == 200) == ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} /readyz {} within {WAIT:?}",
                self.id,
                if ready { "200" } else { "503" }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn player(&self, name: &'static str) -> Client {
        Client::connect(self.port, "any", WAIT).await.named(name)
    }
}

/// Three nodes on one database and one Redis, all seeing each other.
async fn three_nodes(db: &str, redis: &str, prefix: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(Node::start(db, redis, prefix, id, &[]).await);
    }
    for node in &mut nodes {
        node.proc
            .find("sees all three nodes", |v| {
                v["message"] == "cluster_membership_changed" && v["live"] == 3
            })
            .await;
    }
    nodes
}

async fn join(c: &mut Client, room: &str, player: &str, seed: Option<Value>, last: Option<u64>) -> Value {
    let hello = c.join_with(room, player, &token(room, player), seed, last).await;
    assert_eq!(hello["type"], "hello_ack", "{}: {hello}", c.name());
    hello
}

/// Every client reads up to a message of `kind`: the first one's version, the same
/// for all (the same events in the same order with the same versions on every node).
async fn all_see(clients: &mut [&mut Client], kind: &str) -> u64 {
    let first = loop {
        let v = clients[0].recv().await;
        assert_ne!(v["type"], "error", "{}: {v}", clients[0].name());
        if v["type"] == kind {
            break v;
        }
    };
    let version = first["version"].as_u64().unwrap_or_else(|| panic!("{first}"));
    for c in clients.iter_mut().skip(1) {
        let seen = c.see(kind, version).await;
        assert_eq!(seen, first, "{} got the same message", c.name());
    }
    version
}

/// Rows of the room's event log: (version, event_type), in order.
async fn event_log(db_url: &str, room: &str) -> Vec<(i64, String)> {
    let mut conn = sqlx::PgConnection::connect(db_url).await.expect("connect");
    sqlx::query_as("SELECT version, event_type FROM room_events WHERE room_code = $1 ORDER BY version")
        .bind(room)
        .fetch_all(&mut conn)
        .await
        .expect("events")
}

async fn owner_epoch(db_url: &str, room: &str) -> Option<(i64, String)> {
    let mut conn = sqlx::PgConnection::connect(db_url).await.expect("connect");
    sqlx::query_as("SELECT epoch, node_id FROM room_owners WHERE room_code = $1")
        .bind(room)
        .fetch_optional(&mut conn)
        .await
        .expect("owner")
}

/// The players of one room spread over all three nodes play through the lobby,
/// briefing and a creation phase: every socket sees the same messages with the same
/// versions, whichever node it is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_spread_over_three_nodes_play_one_game() {
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let nodes = three_nodes(&database.url, MACHINE_REDIS, &prefix).await;
    let room = "SPREAD";
    let seed = seed_snapshot(room, &["host", "p2", "p3"]);
    let mut host = nodes[0].player("host@a").await;
    let mut p2 = nodes[1].player("p2@b").await;
    let mut p3 = nodes[2].player("p3@c").await;
    let hello = join(&mut host, room, "host", Some(seed), None).await;
    assert_eq!(hello["snapshot"]["version"], 2, "{hello}");
    let hello = join(&mut p2, room, "p2", None, None).await;
    assert_eq!(hello["snapshot"]["version"], 3, "{hello}");
    host.see("room_state", 3).await;
    let hello = join(&mut p3, room, "p3", None, None).await;
    assert_eq!(hello["snapshot"]["version"], 4, "{hello}");
    host.see("room_state", 4).await;
    p2.see("room_state", 4).await;

    p3.set_ready(room, "p3", true).await;
    let v = all_see(&mut [&mut host, &mut p2, &mut p3], "ready_update").await;
    assert_eq!(v, 5);
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"})).await;
    let v = all_see(&mut [&mut p2, &mut host, &mut p3], "status_changed").await;
    assert_eq!(v, 6);
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"})).await;
    all_see(&mut [&mut p3, &mut p2, &mut host], "status_changed").await;
    p2.send(json!({"type":"submit_big_idea","roomCode":room,"adlobId":"ad-1","text":"Socks that sing"}))
        .await;
    let v = all_see(&mut [&mut host, &mut p2, &mut p3], "big_idea_submitted").await;

    // A player's refused message is answered on its own socket, across nodes.
    p3.send(json!({"type":"advance_phase","roomCode":room,"playerId":"p3"})).await;
    p3.expect_error("forbidden").await;

    // The store holds every change once, in one sequence.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = event_log(&database.url, room).await;
        if log.last().is_some_and(|(last, _)| *last == v as i64) {
            let versions: Vec<i64> = log.iter().map(|(v, _)| *v).collect();
            // v1 is the seed, a snapshot; every change after it is one event row.
            assert_eq!(versions, (2..=v as i64).collect::<Vec<_>>(), "{log:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "events stored: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (epoch, owner) = owner_epoch(&database.url, room).await.expect("an owner row");
    assert_eq!(epoch, 1, "one owner all game");
    assert!(nodes.iter().any(|n| n.id == owner), "{owner}");
}
