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

/// At most this many cluster tests at once: each runs two to four server processes,
/// and a 2-core CI machine running all of them together stalls them past their
/// leases, which would test the machine's scheduler rather than the cluster.
async fn one_of_few() -> tokio::sync::SemaphorePermit<'static> {
    static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
    TURNS
        .acquire()
        .await
        .expect("the semaphore is never closed")
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

    /// Starts redis-server (nothing kept on disk) and waits until it answers.
    async fn up(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
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
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server answers"
            );
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
            ("CLUSTER_LEASE_TTL_MS", "3000"),
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
    let version = common::version_of(&first).unwrap_or_else(|| panic!("{first}"));
    for c in clients.iter_mut().skip(1) {
        let seen = c.see(kind, version).await;
        assert_eq!(seen, first, "{} got the same message", c.name());
    }
    version
}

/// Rows of the room's event log: (version, event_type), in order.
async fn event_log(db_url: &str, room: &str) -> Vec<(i64, String)> {
    let mut conn = sqlx::PgConnection::connect(db_url).await.expect("connect");
    sqlx::query_as(
        "SELECT version, event_type FROM room_events WHERE room_code = $1 ORDER BY version",
    )
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
    let _turn = one_of_few().await;
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
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"}))
        .await;
    let v = all_see(&mut [&mut p2, &mut host, &mut p3], "status_changed").await;
    assert_eq!(v, 6);
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"}))
        .await;
    all_see(&mut [&mut p3, &mut p2, &mut host], "status_changed").await;
    p2.send(
        json!({"type":"submit_big_idea","roomCode":room,"adlobId":"ad-1","text":"Socks that sing"}),
    )
    .await;
    let v = all_see(&mut [&mut host, &mut p2, &mut p3], "big_idea_submitted").await;

    // A player's refused message is answered on its own socket, across nodes.
    p3.send(json!({"type":"advance_phase","roomCode":room,"playerId":"p3"}))
        .await;
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
        assert!(
            tokio::time::Instant::now() < deadline,
            "events stored: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (epoch, owner) = owner_epoch(&database.url, room)
        .await
        .expect("an owner row");
    assert_eq!(epoch, 1, "one owner all game");
    assert!(nodes.iter().any(|n| n.id == owner), "{owner}");
}

// ---------------------------------------------------------------------------------
// Helpers for the tests below.
// ---------------------------------------------------------------------------------

use karaoke_realtime::admin::pb::{self, room_admin_client::RoomAdminClient};

type Admin = RoomAdminClient<tonic::transport::Channel>;

async fn admin(node: &Node) -> Admin {
    RoomAdminClient::connect(format!("http://127.0.0.1:{}", node.admin))
        .await
        .expect("admin plane connects")
}

fn pb_player(id: &str, seat: i32, host: bool) -> pb::Player {
    pb::Player {
        id: id.into(),
        name: format!("Player {id}"),
        emoji: "🎤".into(),
        is_ready: false,
        is_host: host,
        seat_index: seat,
        connected: false,
    }
}

fn brief(code: &str, brief_id: &str) -> pb::PublishEventRequest {
    pb::PublishEventRequest {
        room_code: code.into(),
        event: Some(pb::publish_event_request::Event::BriefUpdated(
            pb::BriefUpdated {
                brief_id: brief_id.into(),
            },
        )),
    }
}

/// The node that owns `room` now, by the store's owner row.
async fn owner_of<'a>(db_url: &str, nodes: &'a [Node], room: &str) -> &'a Node {
    let (_, owner) = owner_epoch(db_url, room)
        .await
        .expect("the room has an owner");
    nodes
        .iter()
        .find(|n| n.id == owner)
        .unwrap_or_else(|| panic!("owner {owner} is one of the nodes"))
}

/// Joins `player` on `node`, retrying while the cluster answers `unavailable` (a room
/// between owners) or the socket is closed under it, as the real client's reconnect
/// loop does; returns the client and its `hello_ack`.
async fn rejoin(
    node: &Node,
    name: &'static str,
    room: &str,
    player: &str,
    last: Option<u64>,
) -> (Client, Value) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = node.player(name).await;
        let reply = c
            .join_with(room, player, &token(room, player), None, last)
            .await;
        if reply["type"] == "hello_ack" {
            return (c, reply);
        }
        assert_eq!(reply["code"], "unavailable", "{name}: {reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} rejoins within {WAIT:?}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the room's event log ends at `version` or later; returns the log.
async fn await_log(db_url: &str, room: &str, version: u64) -> Vec<(i64, String)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = event_log(db_url, room).await;
        if log.last().is_some_and(|(last, _)| *last >= version as i64) {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room} logged v{version}: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until the socket ends: the close code the server sent, or `None` when the
/// connection just broke (its node was killed).
async fn cut_off(c: &mut Client) -> Option<CloseCode> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let next = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .unwrap_or_else(|_| panic!("{}: cut off within {WAIT:?}", c.name()));
        match next {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if let Some(version) = common::version_of(&v) {
                    c.seen = c.seen.max(version);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// Every version once, in order (a takeover may skip ahead, never back).
fn assert_one_sequence(log: &[(i64, String)]) {
    for pair in log.windows(2) {
        assert!(pair[0].0 < pair[1].0, "one increasing sequence: {log:?}");
    }
}

/// Seeds `room` with host, p2 and p3, each joined on its own node (host on
/// `nodes[0]`, p2 on `nodes[1]`, p3 on `nodes[2]`); returns them at version 4.
async fn seat_three(nodes: &[Node], room: &str) -> (Client, Client, Client) {
    let seed = seed_snapshot(room, &["host", "p2", "p3"]);
    let mut host = nodes[0].player("host").await;
    let mut p2 = nodes[1].player("p2").await;
    let mut p3 = nodes[2].player("p3").await;
    join(&mut host, room, "host", Some(seed), None).await;
    join(&mut p2, room, "p2", None, None).await;
    host.see("room_state", 3).await;
    join(&mut p3, room, "p3", None, None).await;
    host.see("room_state", 4).await;
    p2.see("room_state", 4).await;
    (host, p2, p3)
}

/// Admin calls, WatchRoom and resume, all on a node that does not own the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_watch_and_resume_work_on_a_node_that_does_not_own_the_room() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let nodes = three_nodes(&database.url, MACHINE_REDIS, &prefix).await;
    let room = "ADMINX";
    // Created through one node; it lands on the node its code prefers.
    let created = admin(&nodes[0])
        .await
        .create_room(pb::CreateRoomRequest {
            code: room.into(),
            host: Some(pb_player("host", 0, true)),
            settings: None,
        })
        .await
        .expect("CreateRoom")
        .into_inner()
        .room
        .expect("room");
    assert_eq!(created.code, room);
    let owner = owner_of(&database.url, &nodes, room).await;
    let other = nodes
        .iter()
        .find(|n| n.id != owner.id)
        .expect("a non-owner");
    let mut remote = admin(other).await;

    // The same room from every node; ListRooms is the whole cluster's.
    for node in &nodes {
        let got = admin(node)
            .await
            .get_room(pb::GetRoomRequest {
                room_code: room.into(),
            })
            .await
            .expect("GetRoom")
            .into_inner()
            .room
            .expect("room");
        assert_eq!(
            (got.code.as_str(), got.version),
            (room, created.version),
            "{}",
            node.id
        );
        let listed = admin(node)
            .await
            .list_rooms(pb::ListRoomsRequest {
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .expect("ListRooms")
            .into_inner();
        assert_eq!(
            listed
                .rooms
                .iter()
                .map(|r| r.code.as_str())
                .collect::<Vec<_>>(),
            vec![room],
            "{}",
            node.id
        );
    }
    let missing = remote
        .get_room(pb::GetRoomRequest {
            room_code: "NOSUCH".into(),
        })
        .await
        .expect_err("an unknown room");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    remote
        .upsert_player(pb::UpsertPlayerRequest {
            room_code: room.into(),
            player: Some(pb_player("p2", 1, false)),
        })
        .await
        .expect("UpsertPlayer on a non-owner");
    let minted = remote
        .mint_player_token(pb::MintPlayerTokenRequest {
            room_code: room.into(),
            player_id: "p2".into(),
            ttl_seconds: 0,
        })
        .await
        .expect("MintPlayerToken on a non-owner")
        .into_inner()
        .token;
    let mut watch = remote
        .watch_room(pb::WatchRoomRequest {
            room_code: room.into(),
        })
        .await
        .expect("WatchRoom on a non-owner")
        .into_inner();
    let first = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("an event in time")
        .expect("stream open")
        .expect("an event");
    assert_eq!(first.r#type, "room_state");

    // p2 plays on the non-owner, the host on the owner.
    let mut p2 = other.player("p2").await;
    let hello = p2.join_with(room, "p2", &minted, None, None).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    let mut host = owner.player("host").await;
    join(&mut host, room, "host", None, None).await;
    let v = remote
        .publish_event(brief(room, "b1"))
        .await
        .expect("PublishEvent on a non-owner")
        .into_inner()
        .version;
    for c in [&mut host, &mut p2] {
        c.see("brief_updated", v).await;
    }
    let event = loop {
        let e = tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("an event");
        if e.r#type == "brief_updated" {
            break e;
        }
    };
    assert_eq!(event.version, v);

    // Resume on the non-owner: p2 leaves, misses a change, comes back with lastVersion.
    drop(p2);
    let missed = remote
        .publish_event(brief(room, "b2"))
        .await
        .expect("PublishEvent")
        .into_inner()
        .version;
    host.see("brief_updated", missed).await;
    let mut p2 = other.player("p2 again").await;
    let hello = p2.join_with(room, "p2", &minted, None, Some(v)).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    assert_eq!(hello["recovered"], true, "{hello}");
    let replayed = p2.recv().await;
    assert!(
        replayed["version"]
            .as_u64()
            .is_some_and(|r| r > v && r <= missed + 1),
        "a missed event is replayed: {replayed}"
    );

    // CloseRoom on the non-owner: everyone gets 4000, the watch ends.
    remote
        .close_room(pb::CloseRoomRequest {
            room_code: room.into(),
            reason: String::new(),
        })
        .await
        .expect("CloseRoom on a non-owner");
    for c in [&mut host, &mut p2] {
        assert_eq!(c.close_code().await, CloseCode::from(4000));
    }
    let after = remote
        .get_room(pb::GetRoomRequest {
            room_code: room.into(),
        })
        .await
        .expect_err("a closed room is gone");
    assert_eq!(after.code(), tonic::Code::NotFound);
}

/// kill -9 of the owner mid-game: the players reconnect to the other nodes, resume
/// and finish; the store holds every change once, in one sequence, and no version a
/// client held is used again for another change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_owner_mid_game_the_players_finish_on_the_other_nodes() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let mut nodes = three_nodes(&database.url, MACHINE_REDIS, &prefix).await;
    let room = "KILLED";
    let (mut host, mut p2, mut p3) = seat_three(&nodes, room).await;
    p2.set_ready(room, "p2", true).await;
    let before = all_see(&mut [&mut host, &mut p2, &mut p3], "ready_update").await;
    await_log(&database.url, room, before).await;

    let owner_id = owner_of(&database.url, &nodes, room).await.id.clone();
    let at = nodes.iter().position(|n| n.id == owner_id).expect("owner");
    let mut dead = nodes.remove(at);
    dead.proc.kill().await;
    // Everyone is cut off: the dead node's own player at once, the others when their
    // node notices the owner is gone (1012: reconnect).
    let mut seen = Vec::new();
    for (c, who) in [(&mut host, "host"), (&mut p2, "p2"), (&mut p3, "p3")] {
        if let Some(code) = cut_off(c).await {
            assert_eq!(code, CloseCode::Restart, "{who}");
        }
        seen.push((who, c.seen));
    }
    // Back on the two live nodes, with the version each last saw.
    let mut back = Vec::new();
    for (i, (who, last)) in seen.iter().enumerate() {
        let node = &nodes[i % nodes.len()];
        let name: &'static str = who;
        let (c, hello) = rejoin(node, name, room, who, Some(*last)).await;
        let version = hello["snapshot"]["version"].as_u64().expect("version");
        assert!(
            version > *last,
            "{who} resumes past everything it saw: {hello}"
        );
        assert!(
            hello["snapshot"]["players"][1]["isReady"] == true,
            "the change survived: {hello}"
        );
        back.push(c);
    }
    let [mut host, mut p2, mut p3] = <[Client; 3]>::try_from(back).ok().expect("three");
    for c in [&mut host, &mut p2, &mut p3] {
        c.seen = 0;
    }
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"}))
        .await;
    let v = all_see(&mut [&mut host, &mut p2, &mut p3], "status_changed").await;
    let log = await_log(&database.url, room, v).await;
    assert_one_sequence(&log);
    let versions: Vec<i64> = log.iter().map(|(v, _)| *v).collect();
    assert!(
        versions.contains(&(before as i64)),
        "the change before the kill is stored once: {log:?}"
    );
    let (epoch, new_owner) = owner_epoch(&database.url, room).await.expect("owner");
    assert!(epoch >= 2, "taken over under a new epoch");
    assert_ne!(new_owner, owner_id);
}

/// SIGTERM of the owner with players mid-game: the room is handed over at once. The
/// lease lives 60 s here: had anyone waited for it, the rejoins below would time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_room_over_and_nobody_waits_for_a_lease_to_expire() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(
            Node::start(
                &database.url,
                MACHINE_REDIS,
                &prefix,
                id,
                &[("CLUSTER_LEASE_TTL_MS", "60000")],
            )
            .await,
        );
    }
    for node in &mut nodes {
        node.proc
            .find("sees all three nodes", |v| {
                v["message"] == "cluster_membership_changed" && v["live"] == 3
            })
            .await;
    }
    let room = "HANDED";
    let (mut host, mut p2, mut p3) = seat_three(&nodes, room).await;
    p3.set_ready(room, "p3", true).await;
    let before = all_see(&mut [&mut host, &mut p2, &mut p3], "ready_update").await;

    let owner_id = owner_of(&database.url, &nodes, room).await.id.clone();
    let at = nodes.iter().position(|n| n.id == owner_id).expect("owner");
    let mut leaving = nodes.remove(at);
    leaving.proc.sigterm().await;
    let mut seen = Vec::new();
    for (c, who) in [(&mut host, "host"), (&mut p2, "p2"), (&mut p3, "p3")] {
        assert_eq!(c.close_code().await, CloseCode::Restart, "{who}");
        seen.push((who, c.seen));
    }
    leaving.proc.find_message("rooms_handed_over").await;
    assert!(leaving.proc.wait_exit().await.success());
    // The change made just before is in the store: it was saved before the lease went.
    let log = await_log(&database.url, room, before).await;
    assert!(log.iter().any(|(v, _)| *v == before as i64), "{log:?}");

    let mut back = Vec::new();
    for (i, (who, last)) in seen.iter().enumerate() {
        let (c, hello) = rejoin(&nodes[i % 2], who, room, who, Some(*last)).await;
        assert_eq!(hello["snapshot"]["players"][2]["isReady"], true, "{hello}");
        back.push(c);
    }
    let [mut host, mut p2, mut p3] = <[Client; 3]>::try_from(back).ok().expect("three");
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"}))
        .await;
    let v = all_see(&mut [&mut host, &mut p2, &mut p3], "status_changed").await;
    assert_one_sequence(&await_log(&database.url, room, v).await);
}

/// Closes each client's socket and joins again on its node with the version it last
/// saw; returns the clients. Nothing a client held may be ahead of the room.
async fn reseat(seats: Vec<(Client, &Node, &'static str)>, room: &str) -> Vec<Client> {
    let mut back = Vec::new();
    for (c, node, who) in seats {
        let last = c.seen;
        drop(c);
        let (c, hello) = rejoin(node, who, room, who, Some(last)).await;
        let version = hello["snapshot"]["version"].as_u64().expect("version");
        assert!(
            version >= last,
            "{who} held v{last}, the room is at v{version}: {hello}"
        );
        back.push(c);
    }
    back
}

/// Redis restarted mid-game (a Redis of the test's own, nothing kept on disk): the
/// nodes say so (`/readyz` 503), keep serving their own rooms, and rejoin when it
/// returns; nothing is lost or stored twice and every client ends on one snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_game_loses_nothing_and_every_client_converges() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let mut redis = OwnRedis::start().await;
    let prefix = prefix();
    let mut nodes = three_nodes(&database.url, &redis.url(), &prefix).await;
    let room = "REDISR";
    let (mut host, mut p2, mut p3) = seat_three(&nodes, room).await;
    p2.set_ready(room, "p2", true).await;
    all_see(&mut [&mut host, &mut p2, &mut p3], "ready_update").await;
    let owner_id = owner_of(&database.url, &nodes, room).await.id.clone();
    let owner_at = nodes.iter().position(|n| n.id == owner_id).expect("owner");

    redis.down().await;
    for node in &nodes {
        node.await_ready(false).await;
    }
    for node in &mut nodes {
        node.proc.find_message("cluster_redis_unreachable").await;
    }
    // The owner's own player goes on playing meanwhile.
    let mut seats = vec![(host, "host"), (p2, "p2"), (p3, "p3")];
    let local = &mut seats[owner_at];
    let who = local.1;
    local.0.set_ready(room, who, false).await;
    let during = loop {
        let v = local.0.recv().await;
        if v["type"] == "ready_update" {
            break v["version"].as_u64().expect("version");
        }
    };
    await_log(&database.url, room, during).await;

    redis.up().await;
    for node in &nodes {
        node.await_ready(true).await;
    }
    for node in &mut nodes {
        node.proc.find_message("cluster_redis_recovered").await;
    }
    let seats: Vec<(Client, &Node, &'static str)> = seats
        .into_iter()
        .enumerate()
        .map(|(i, (c, who))| (c, &nodes[i], who))
        .collect();
    let mut back = reseat(seats, room).await;
    back[2].set_ready(room, "p3", true).await;
    let [host, p2, p3] = &mut back[..] else {
        panic!("three")
    };
    let v = all_see(&mut [host, p2, p3], "room_state").await;
    let log = await_log(&database.url, room, v).await;
    assert_one_sequence(&log);
    assert!(
        log.iter().any(|(x, _)| *x == during as i64),
        "the change during the outage is stored: {log:?}"
    );
}

/// One node cut from Redis (a proxy in front of Redis for that node only) while it
/// owns a room mid-game: the others take the room over under a new epoch, the cut
/// node stops serving it (its sockets 1012) and never gets a write accepted after the
/// takeover; the players finish on the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_redis_loses_its_room_through_the_fence() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let room = "CUTOFF";
    let ids = ["node-a", "node-b", "node-c"];
    let set: std::collections::BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    let owner_id = karaoke_realtime::cluster::preferred(room, &set).expect("a node");
    let redis_addr: SocketAddr = "127.0.0.1:6379".parse().expect("addr");
    let proxy = Proxy::start(redis_addr).await;
    let proxied = format!("redis://{}", proxy.addr);
    let mut nodes = Vec::new();
    for id in ids {
        let url = if id == owner_id {
            proxied.as_str()
        } else {
            MACHINE_REDIS
        };
        nodes.push(Node::start(&database.url, url, &prefix, id, &[]).await);
    }
    for node in &mut nodes {
        node.proc
            .find("sees all three nodes", |v| {
                v["message"] == "cluster_membership_changed" && v["live"] == 3
            })
            .await;
    }
    let (mut host, mut p2, mut p3) = seat_three(&nodes, room).await;
    p2.set_ready(room, "p2", true).await;
    let before = all_see(&mut [&mut host, &mut p2, &mut p3], "ready_update").await;
    await_log(&database.url, room, before).await;
    assert_eq!(
        owner_epoch(&database.url, room).await.expect("owner"),
        (1, owner_id.clone())
    );

    proxy.cut().await;
    // Everyone is sent away with 1012: the cut node's players when it learns the room
    // is no longer its own, the others' when their node sees the owner gone.
    let mut seen = Vec::new();
    for (c, who) in [(&mut host, "host"), (&mut p2, "p2"), (&mut p3, "p3")] {
        assert_eq!(cut_off(c).await, Some(CloseCode::Restart), "{who}");
        seen.push((who, c.seen));
    }
    let (epoch, new_owner) = owner_epoch(&database.url, room).await.expect("owner");
    assert!(
        epoch >= 2 && new_owner != owner_id,
        "taken over: {epoch} {new_owner}"
    );
    let cut = nodes
        .iter()
        .position(|n| n.id == owner_id)
        .expect("cut node");
    let line = nodes[cut]
        .proc
        .find("the cut node stops serving the room", |v| {
            v["roomCode"] == room
                && (v["message"] == "room_epoch_moved" || v["message"] == "persist_fenced")
        })
        .await;
    assert!(
        line["message"] == "room_epoch_moved" || line["message"] == "persist_fenced",
        "{line}"
    );
    nodes[cut].await_ready(false).await;

    let live: Vec<&Node> = nodes.iter().filter(|n| n.id != owner_id).collect();
    let mut back = Vec::new();
    for (i, (who, last)) in seen.iter().enumerate() {
        let (c, hello) = rejoin(live[i % 2], who, room, who, Some(*last)).await;
        assert_eq!(hello["snapshot"]["players"][1]["isReady"], true, "{hello}");
        back.push(c);
    }
    let [mut host, mut p2, mut p3] = <[Client; 3]>::try_from(back).ok().expect("three");
    host.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"}))
        .await;
    let v = all_see(&mut [&mut host, &mut p2, &mut p3], "status_changed").await;
    let log = await_log(&database.url, room, v).await;
    assert_one_sequence(&log);

    // Redis comes back for the cut node: it rejoins and, being the node the room's
    // code prefers, gets it back by hand-over, under a newer epoch still.
    proxy.restore();
    nodes[cut].await_ready(true).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (now, node) = owner_epoch(&database.url, room).await.expect("owner");
        if node == owner_id && now > epoch {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room} handed back to {owner_id}: {now} {node}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A write under a stale epoch is refused by the store, whole, and names the room;
/// the current epoch's write lands.
#[tokio::test]
async fn the_store_refuses_a_write_made_under_a_stale_owner_epoch() {
    let _turn = one_of_few().await;
    use karaoke_realtime::config::Database;
    use karaoke_realtime::store::{Batch, EventRow, Store, WriteError};
    let database = db::fresh_postgres().await;
    let store = Store::connect(
        &Database::Postgres(database.url.clone()),
        Duration::from_secs(10),
    )
    .await
    .expect("connect")
    .expect("a store");
    store.migrate().await.expect("migrate");
    let row = |version: u64, epoch: u64| EventRow {
        room_code: "FENCED".into(),
        event_type: "ready_update",
        version,
        payload: "{}".into(),
        created_at: time::OffsetDateTime::now_utc(),
        trace: None,
        epoch,
    };
    let first = store.raise_epoch("FENCED", "node-a").await.expect("epoch");
    let ok = row(1, first);
    store
        .write(&Batch {
            events: vec![&ok],
            ..Batch::default()
        })
        .await
        .expect("the owner's write");
    let second = store.raise_epoch("FENCED", "node-b").await.expect("epoch");
    assert_eq!(second, first + 1);
    let stale = row(2, first);
    let refused = store
        .write(&Batch {
            events: vec![&stale],
            ..Batch::default()
        })
        .await
        .expect_err("a stale owner's write");
    assert_eq!(refused, WriteError::Fenced(vec![("FENCED".into(), first)]));
    // Unfenced rows of another room in the same batch are not written either.
    let mut mixed = row(1, 0);
    mixed.room_code = "OTHER".into();
    let refused = store
        .write(&Batch {
            events: vec![&mixed, &stale],
            ..Batch::default()
        })
        .await
        .expect_err("stale");
    assert!(matches!(refused, WriteError::Fenced(_)));
    assert_eq!(
        event_log(&database.url, "FENCED").await,
        vec![(1, "ready_update".to_string())]
    );
    assert!(event_log(&database.url, "OTHER").await.is_empty());
    let current = row(2, second);
    store
        .write(&Batch {
            events: vec![&current],
            ..Batch::default()
        })
        .await
        .expect("the new owner's write");
    assert_eq!(event_log(&database.url, "FENCED").await.len(), 2);
}

/// Room codes for the fourth-node test: `moving` that prefer node-d among four nodes
/// and `staying` that do not.
fn codes_for_four(moving: usize, staying: usize) -> (Vec<String>, Vec<String>) {
    let four: std::collections::BTreeSet<String> = ["node-a", "node-b", "node-c", "node-d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (mut m, mut s) = (Vec::new(), Vec::new());
    for i in 0.. {
        let code = format!("ROOM{i:03}");
        let to_d = karaoke_realtime::cluster::preferred(&code, &four).as_deref() == Some("node-d");
        if to_d && m.len() < moving {
            m.push(code);
        } else if !to_d && s.len() < staying {
            s.push(code);
        }
        if m.len() == moving && s.len() == staying {
            break;
        }
    }
    (m, s)
}

/// A fourth node joins: the rooms whose code now prefers it move to it, by hand-over
/// (a player there is sent away with 1012 and plays on at once); no other room moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_takes_only_the_rooms_that_hash_to_it() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let mut nodes = three_nodes(&database.url, MACHINE_REDIS, &prefix).await;
    let (moving, staying) = codes_for_four(3, 6);
    let mut a = admin(&nodes[0]).await;
    for code in moving.iter().chain(&staying) {
        a.create_room(pb::CreateRoomRequest {
            code: code.clone(),
            host: Some(pb_player("host", 0, true)),
            settings: None,
        })
        .await
        .expect("CreateRoom");
    }
    let mut before = std::collections::HashMap::new();
    for code in moving.iter().chain(&staying) {
        before.insert(
            code.clone(),
            owner_epoch(&database.url, code).await.expect("owner"),
        );
    }
    // A player in one of the rooms that will move.
    let watched = &moving[0];
    let mut host = nodes[0].player("host").await;
    join(&mut host, watched, "host", None, None).await;

    nodes.push(Node::start(&database.url, MACHINE_REDIS, &prefix, "node-d", &[]).await);
    for node in &mut nodes {
        node.proc
            .find("sees all four nodes", |v| {
                v["message"] == "cluster_membership_changed" && v["live"] == 4
            })
            .await;
    }
    assert_eq!(host.close_code().await, CloseCode::Restart);
    let deadline = tokio::time::Instant::now() + WAIT;
    for code in &moving {
        loop {
            let (epoch, node) = owner_epoch(&database.url, code).await.expect("owner");
            if node == "node-d" {
                assert_eq!(epoch, before[code].0 + 1, "{code}: one takeover");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{code} moved to node-d: {node}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for code in &staying {
        assert_eq!(
            owner_epoch(&database.url, code).await.as_ref(),
            before.get(code),
            "{code} stays"
        );
    }
    let (mut host, hello) = rejoin(&nodes[0], "host again", watched, "host", Some(host.seen)).await;
    assert_eq!(hello["snapshot"]["code"], watched.as_str());
    host.set_ready(watched, "host", true).await;
    host.expect("ready_update").await;
}

/// A socket on a node that does not own its room gets the room's heartbeats (the
/// real client reads them for the version), and a watcher there never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_on_a_non_owner_gets_the_rooms_heartbeats() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let fast = [
        ("HEARTBEAT_INTERVAL_MS", "200"),
        ("HEARTBEAT_TIMEOUT_MS", "60000"),
    ];
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        nodes.push(Node::start(&database.url, MACHINE_REDIS, &prefix, id, &fast).await);
    }
    for node in &mut nodes {
        node.proc
            .find("sees both nodes", |v| {
                v["message"] == "cluster_membership_changed" && v["live"] == 2
            })
            .await;
    }
    let room = "BEATS";
    let mut host = nodes[0].player("host").await;
    join(
        &mut host,
        room,
        "host",
        Some(seed_snapshot(room, &["host", "p2"])),
        None,
    )
    .await;
    let owner = owner_of(&database.url, &nodes, room).await;
    let other = nodes
        .iter()
        .find(|n| n.id != owner.id)
        .expect("a non-owner");
    let mut p2 = other.player("p2").await;
    let hello = join(&mut p2, room, "p2", None, None).await;
    let version = hello["snapshot"]["version"].as_u64().expect("version");
    let mut watch = admin(other)
        .await
        .watch_room(pb::WatchRoomRequest {
            room_code: room.into(),
        })
        .await
        .expect("WatchRoom")
        .into_inner();
    let beat = loop {
        let v = p2.recv_any().await;
        if v["type"] == "heartbeat" {
            break v;
        }
    };
    assert_eq!(beat["roomCode"], room, "{beat}");
    assert_eq!(beat["version"], version, "{beat}");
    // Two heartbeats later, the watcher has had its room_state and nothing else.
    for _ in 0..2 {
        while p2.recv_any().await["type"] != "heartbeat" {}
    }
    let first = watch.message().await.expect("open").expect("an event");
    assert_eq!(first.r#type, "room_state");
    let next = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(next.is_err(), "no heartbeat reaches a watcher: {next:?}");
}

/// A subscriber that is connected but wedged (its connection forwards nothing, while
/// commands on the other connection still work) makes `/readyz` say 503; it comes back
/// by itself when the connection moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_subscriber_does_not_look_healthy() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let proxy = Proxy::start("127.0.0.1:6379".parse().expect("addr")).await;
    let url = format!("redis://{}", proxy.addr);
    let node = Node::start(&database.url, &url, &prefix, "node-w", &[]).await;
    // The subscriber's connection is the one that sends PING on every tick (the
    // command connection publishes and runs scripts).
    proxy.freeze_next(b"PING");
    node.await_ready(false).await;
    let (status, body) = http_get(node.port, "/readyz").await;
    assert_eq!((status, body.trim()), (503, "cluster unreachable"));
    proxy.thaw();
    node.await_ready(true).await;
}

/// PostgreSQL cut from a cluster node mid-game behaves as on one node: the owner keeps
/// its room (its lease lives in Redis), changes go on in memory and queue, and when the
/// database returns every one of them is stored, once, in order; the players on the
/// other node see them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_in_cluster_mode_loses_nothing() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let room = "PGDOWN";
    let ids = ["node-a", "node-b"];
    let set: std::collections::BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    let owner_id = karaoke_realtime::cluster::preferred(room, &set).expect("a node");
    // The owner reaches PostgreSQL through a proxy the test can cut (plaintext: the
    // proxy only forwards bytes).
    let proxy = Proxy::start(db::postgres_addr()).await;
    let via_proxy = format!(
        "postgres://postgres@{}/{}?sslmode=disable",
        proxy.addr, database.name
    );
    let mut nodes = Vec::new();
    for id in ids {
        let url = if id == owner_id {
            via_proxy.as_str()
        } else {
            database.url.as_str()
        };
        nodes.push(Node::start(url, MACHINE_REDIS, &prefix, id, &[]).await);
    }
    for node in &mut nodes {
        node.proc
            .find("sees both nodes", |v| {
                v["message"] == "cluster_membership_changed" && v["live"] == 2
            })
            .await;
    }
    let seed = seed_snapshot(room, &["host", "p2"]);
    let (owner, other) = if nodes[0].id == owner_id {
        (0, 1)
    } else {
        (1, 0)
    };
    let mut host = nodes[owner].player("host").await;
    let mut p2 = nodes[other].player("p2").await;
    join(&mut host, room, "host", Some(seed), None).await;
    join(&mut p2, room, "p2", None, None).await;
    host.see("room_state", 3).await;
    assert_eq!(
        owner_epoch(&database.url, room).await.expect("owner").1,
        owner_id
    );

    proxy.cut().await;
    let mut last = 3;
    for ready in [true, false, true, false, true] {
        p2.set_ready(room, "p2", ready).await;
        last = all_see(&mut [&mut p2, &mut host], "ready_update").await;
    }
    nodes[owner]
        .proc
        .find("the writer says the database is failing", |v| {
            v["message"] == "persist_batch_failed"
        })
        .await;
    proxy.restore();
    let log = await_log(&database.url, room, last).await;
    let versions: Vec<i64> = log.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        (2..=last as i64).collect::<Vec<_>>(),
        "every change once: {log:?}"
    );
    assert_eq!(
        owner_epoch(&database.url, room).await.expect("owner"),
        (1, owner_id),
        "the room never moved"
    );
}

/// `ListRooms` lists a room no node serves (its cluster restarted) as the store has
/// it, without taking it over; `GetRoom` takes it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rooms_never_takes_a_room_over() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let mut first = Node::start(&database.url, MACHINE_REDIS, &prefix, "node-a", &[]).await;
    let created = admin(&first)
        .await
        .create_room(pb::CreateRoomRequest {
            code: "DORMANT".into(),
            host: Some(pb_player("host", 0, true)),
            settings: None,
        })
        .await
        .expect("CreateRoom")
        .into_inner()
        .room
        .expect("room");
    first.proc.sigterm().await;
    assert!(first.proc.wait_exit().await.success());
    let before = owner_epoch(&database.url, "DORMANT").await.expect("owner");

    let second = Node::start(&database.url, MACHINE_REDIS, &prefix, "node-b", &[]).await;
    let mut b = admin(&second).await;
    let listed = b
        .list_rooms(pb::ListRoomsRequest {
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("ListRooms")
        .into_inner();
    assert_eq!(listed.rooms.len(), 1, "{listed:?}");
    let room = &listed.rooms[0];
    assert_eq!(
        (room.code.as_str(), room.version, room.connection_count),
        ("DORMANT", created.version, 0)
    );
    assert_eq!(
        owner_epoch(&database.url, "DORMANT").await.as_ref(),
        Some(&before),
        "not taken over"
    );

    let got = b
        .get_room(pb::GetRoomRequest {
            room_code: "DORMANT".into(),
        })
        .await
        .expect("GetRoom")
        .into_inner()
        .room
        .expect("room");
    assert_eq!(got.code, "DORMANT");
    let (epoch, node) = owner_epoch(&database.url, "DORMANT").await.expect("owner");
    assert_eq!(
        (epoch, node.as_str()),
        (before.0 + 1, "node-b"),
        "GetRoom took it over"
    );
}

/// A join carrying a seed, on a node at its cap of client-seeded rooms, still joins a
/// room the store holds (the stored room wins over the seed, and is not a seeded one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_at_the_cap_still_joins_a_stored_room() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let capped = [("MAX_SEEDED_ROOMS", "0")];
    let mut first = Node::start(&database.url, MACHINE_REDIS, &prefix, "node-a", &capped).await;
    admin(&first)
        .await
        .create_room(pb::CreateRoomRequest {
            code: "STORED".into(),
            host: Some(pb_player("host", 0, true)),
            settings: None,
        })
        .await
        .expect("CreateRoom");
    first.proc.sigterm().await;
    assert!(first.proc.wait_exit().await.success());

    let second = Node::start(&database.url, MACHINE_REDIS, &prefix, "node-b", &capped).await;
    let mut host = second.player("host").await;
    let hello = join(
        &mut host,
        "STORED",
        "host",
        Some(seed_snapshot("STORED", &["host"])),
        None,
    )
    .await;
    assert_eq!(hello["snapshot"]["code"], "STORED");
    // A room the store lacks is still refused at the cap.
    let mut other = second.player("other").await;
    let refused = other
        .join_with(
            "NEWONE",
            "host",
            &token("NEWONE", "host"),
            Some(seed_snapshot("NEWONE", &["host"])),
            None,
        )
        .await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
}

/// A peer that listens on its own inbox and publishes raw messages to a node, as a
/// node would (tests of what a node does with messages it did not expect).
struct Peer {
    messages: redis::aio::PubSubStream,
    redis: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl Peer {
    async fn join(prefix: &str, name: &str) -> Peer {
        let client = redis::Client::open(MACHINE_REDIS).expect("redis url");
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .expect("a pubsub connection");
        pubsub
            .subscribe(format!("{prefix}:inbox:{name}"))
            .await
            .expect("subscribe");
        Peer {
            messages: pubsub.into_on_message(),
            redis: client
                .get_multiplexed_async_connection()
                .await
                .expect("a connection"),
            prefix: prefix.to_string(),
        }
    }

    async fn send(&mut self, node: &str, message: Value) {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(format!("{}:inbox:{node}", self.prefix))
            .arg(message.to_string())
            .query_async(&mut self.redis)
            .await
            .expect("publish");
    }

    async fn next(&mut self) -> Value {
        use futures_util::StreamExt;
        let msg = tokio::time::timeout(WAIT, self.messages.next())
            .await
            .expect("a message within the wait")
            .expect("the subscription is open");
        serde_json::from_slice(msg.get_payload_bytes()).expect("JSON")
    }
}

/// A node that gets a relayed message for a room it relays no more (its own Unlink
/// was lost) tells the owner so, and a room to create must carry the code it is
/// created under: peers' messages are checked, not taken on trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_messages_it_did_not_expect() {
    let _turn = one_of_few().await;
    let database = db::fresh_postgres().await;
    let prefix = prefix();
    let node = Node::start(&database.url, MACHINE_REDIS, &prefix, "node-a", &[]).await;
    let mut peer = Peer::join(&prefix, "peer").await;

    peer.send(
        &node.id,
        json!({"t":"relay","room":"GHOST","from":"peer","link":7,"incarnation":1,"epoch":1,"seq":1,
               "body":{"t":"gone","code":1012,"reason":"x"}}),
    )
    .await;
    let unlink = peer.next().await;
    assert_eq!(
        unlink,
        json!({"t":"unlink","room":"GHOST","from":"node-a","link":7})
    );

    let stored = karaoke_realtime::room::Room::new("OTHER", Vec::new(), Default::default())
        .expect("a room")
        .to_stored(false);
    peer.send(
        &node.id,
        json!({"t":"create","room":"ASKED","from":"peer","call":5,"stored":stored,"seeded":false}),
    )
    .await;
    let answer = peer.next().await;
    assert_eq!(answer["t"], "answer", "{answer}");
    assert_eq!(answer["call"], 5);
    assert_eq!(
        answer["answer"]["result"]["Err"]["code"], "invalid_payload",
        "{answer}"
    );
    for code in ["ASKED", "OTHER"] {
        assert!(
            owner_epoch(&database.url, code).await.is_none(),
            "{code} was not taken"
        );
    }
}
