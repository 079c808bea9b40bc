//! Whole games end to end, as the real callers play them: the real binary on a fresh
//! PostgreSQL database, `tests/e2e/game.mjs` as the Next.js backend, and four headless
//! Chromium tabs (Debian's `chromium`, driven by `playwright-core`) playing a game
//! from the lobby to the results on the page in `tests/e2e/page/`. Then the store
//! holds the game's events.
//!
//! Variants (one test each):
//! - `grpc`: the backend drives the room through the admin plane (@grpc/grpc-js);
//! - `hook`: the backend speaks the HTTP broadcast hook (`/api/broadcast`) with
//!   client-seeded rooms and legacy tokens, as the existing app does;
//! - `cluster`: three cluster nodes (Redis, one PostgreSQL), the tabs spread over
//!   them and the backend's admin calls on them in turn; in the pitch phase the test
//!   kills the room's owner (kill -9) and the tabs reconnect to the live nodes and
//!   finish the game.
//!
//! Screenshots of each tab at the end land in
//! `<target dir>/e2e-artifacts/<run>/<variant>/tab-N.png` (printed by the test).
//! scripts/test installs chromium and the Node modules; a missing one fails the test,
//! it never skips.

mod binproc;
mod common;

use binproc::tools::missing_tool;
use binproc::{Proc, WAIT};
use common::db;
use serde_json::Value;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

const SHARED_SECRET: &str = "e2e-browser-shared-secret-4f0a9c";
const ADMIN_TOKEN: &str = "e2e-browser-admin-token-7d21b3e8";
const HOOK_SECRET: &str = "e2e-browser-broadcast-secret-93ce";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound of the whole Node script (browser start, a whole game, screenshots).
const GAME_LIMIT: Duration = Duration::from_secs(240);
/// The page's heartbeat period, and the server's: a game sees several of each.
const HEARTBEAT_MS: &str = "2000";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Grpc,
    Hook,
    Cluster,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Grpc => "grpc",
            Variant::Hook => "hook",
            Variant::Cluster => "cluster",
        }
    }

    /// The script's backend: the cluster variant's is the admin plane.
    fn backend(self) -> &'static str {
        match self {
            Variant::Hook => "hook",
            Variant::Grpc | Variant::Cluster => "grpc",
        }
    }
}

/// One server process of a game: its node name (cluster mode) and ports.
struct Server {
    proc: Proc,
    node: String,
    port: u16,
    admin_port: u16,
}

/// `<target dir>/e2e-artifacts/<run>/<variant>`: the test binary lives in
/// `<target dir>/<profile>/deps/`.
fn artifact_dir(variant: Variant) -> PathBuf {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| {
        format!(
            "{}-{}",
            karaoke_realtime::auth::now_secs(),
            std::process::id()
        )
    });
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    target.join("e2e-artifacts").join(run).join(variant.name())
}

fn require_tools() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/node_modules");
    for module in ["@grpc/grpc-js", "@grpc/proto-loader", "playwright-core"] {
        assert!(
            e2e.join(module).is_dir(),
            "{}",
            missing_tool(&format!(
                "the Node module {module} (tests/e2e/node_modules)"
            ))
        );
    }
    assert!(
        Path::new(CHROMIUM).exists(),
        "{}",
        missing_tool(&format!("{CHROMIUM} (Debian's chromium)"))
    );
}

/// The servers for one variant (three nodes for `cluster`, else one), on free ports
/// and the variant's own database (and Redis key prefix).
async fn servers(variant: Variant, database_url: &str) -> Vec<Server> {
    if variant != Variant::Cluster {
        return vec![server(variant, database_url, &[]).await];
    }
    let prefix = format!("e2e{}", uuid::Uuid::new_v4().simple());
    let mut nodes = Vec::new();
    for node in ["node-a", "node-b", "node-c"] {
        let extra = [
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("REDIS_KEY_PREFIX", prefix.as_str()),
            ("NODE_ID", node),
            ("CLUSTER_LEASE_TTL_MS", "3000"),
        ];
        let mut s = server(variant, database_url, &extra).await;
        s.node = node.to_string();
        nodes.push(s);
    }
    // The room goes to the node its code prefers among all three: wait for them all.
    for s in &mut nodes {
        s.proc
            .find("sees the three nodes", |v| {
                v["message"] == "cluster_membership_changed" && v["live"] == 3
            })
            .await;
    }
    nodes
}

async fn server(variant: Variant, database_url: &str, extra: &[(&str, &str)]) -> Server {
    let mut vars = vec![
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("ADMIN_BIND_ADDR", "127.0.0.1"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("REALTIME_SHARED_SECRET", SHARED_SECRET),
        ("DATABASE_URL", database_url),
        ("HEARTBEAT_INTERVAL_MS", HEARTBEAT_MS),
        // Generous: a loaded machine may stall a tab's timers for a while.
        ("HEARTBEAT_TIMEOUT_MS", "60000"),
        ("METRICS_FLUSH_INTERVAL_MS", "0"),
        ("LOG_LEVEL", "info"),
    ];
    if let Variant::Hook = variant {
        vars.push(("REALTIME_BROADCAST_SECRET", HOOK_SECRET));
        vars.push(("ALLOW_CLIENT_SEEDED_ROOMS", "true"));
    }
    vars.extend_from_slice(extra);
    let mut proc = Proc::spawn(&vars);
    let port = proc.listening_port().await;
    let line = proc.find_message("admin_plane_listening").await;
    let admin_port = line["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or_else(|| panic!("admin_plane_listening carries a port: {line}"));
    Server {
        proc,
        node: String::new(),
        port,
        admin_port,
    }
}

/// The cluster variant's kill: once the store holds `version` of `room`, the node
/// that owns it is killed (kill -9) and the script is told through its flag file.
/// Returns the killed node's name.
async fn kill_owner(
    servers: &mut [Server],
    database_url: &str,
    request: &Value,
    artifacts: &Path,
) -> String {
    let room = request["room"].as_str().expect("the room to kill");
    let version = request["version"]
        .as_i64()
        .expect("the version the tabs show");
    let deadline = Instant::now() + WAIT;
    let owner = loop {
        let mut conn = sqlx::PgConnection::connect(database_url)
            .await
            .expect("the test connects to its database");
        let (last,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(version) FROM room_events WHERE room_code = $1")
                .bind(room)
                .fetch_one(&mut conn)
                .await
                .expect("read room_events");
        let owner: Option<(String,)> =
            sqlx::query_as("SELECT node_id FROM room_owners WHERE room_code = $1")
                .bind(room)
                .fetch_optional(&mut conn)
                .await
                .expect("read room_owners");
        if let (Some(last), Some((owner,))) = (last, owner)
            && last >= version
        {
            break owner;
        }
        assert!(
            Instant::now() < deadline,
            "{room} stored up to v{version} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let node = servers
        .iter_mut()
        .find(|s| s.node == owner)
        .unwrap_or_else(|| panic!("the owner {owner} is one of the nodes"));
    node.proc.kill().await;
    std::fs::write(artifacts.join("owner-killed"), owner.as_bytes()).expect("the flag file");
    eprintln!("e2e cluster: killed {owner}, the owner of {room}, at v{version}");
    owner
}

/// Runs tests/e2e/game.mjs against the servers (and, for `cluster`, kills the owner
/// when the script asks); returns its `E2E_RESULT` object and the node killed.
async fn play(
    variant: Variant,
    servers: &mut [Server],
    database_url: &str,
    artifacts: &Path,
) -> (Value, Option<String>) {
    let list = |f: &dyn Fn(&Server) -> String| servers.iter().map(f).collect::<Vec<_>>().join(",");
    let ws_urls = list(&|s| format!("ws://127.0.0.1:{}/", s.port));
    let admin_addrs = list(&|s| format!("127.0.0.1:{}", s.admin_port));
    let mut cmd = Command::new("node");
    cmd.arg("tests/e2e/game.mjs")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("E2E_BACKEND", variant.backend())
        .env("E2E_WS_URLS", ws_urls)
        .env(
            "E2E_HTTP_URL",
            format!("http://127.0.0.1:{}", servers[0].port),
        )
        .env("E2E_ADMIN_ADDRS", admin_addrs)
        .env(
            "E2E_KILL_OWNER",
            if variant == Variant::Cluster {
                "1"
            } else {
                "0"
            },
        )
        .env("E2E_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("E2E_SHARED_SECRET", SHARED_SECRET)
        .env("E2E_HOOK_SECRET", HOOK_SECRET)
        .env("E2E_ARTIFACT_DIR", artifacts)
        .env("E2E_HEARTBEAT_MS", HEARTBEAT_MS)
        .env("E2E_CHROMIUM", CHROMIUM)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", missing_tool("node")));
    let stderr = child.stderr.take().expect("piped stderr");
    let progress = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut { stderr }, &mut text).await;
        text
    });
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let (mut result, mut killed, mut lines) = (None, None, Vec::new());
    let game = async {
        while let Some(line) = stdout.next_line().await.expect("read the script's stdout") {
            if let Some(request) = line.strip_prefix("E2E_KILL_OWNER ") {
                let request: Value = serde_json::from_str(request).expect("E2E_KILL_OWNER is JSON");
                killed = Some(kill_owner(servers, database_url, &request, artifacts).await);
            } else if let Some(found) = line.strip_prefix("E2E_RESULT ") {
                result = Some(
                    serde_json::from_str::<Value>(found)
                        .unwrap_or_else(|e| panic!("E2E_RESULT is JSON ({e}): {found}")),
                );
            }
            lines.push(line);
        }
        child.wait().await.expect("the script ends")
    };
    let status = tokio::time::timeout(GAME_LIMIT, game)
        .await
        .unwrap_or_else(|_| panic!("tests/e2e/game.mjs finishes within {GAME_LIMIT:?}"));
    let progress = progress.await.unwrap_or_default();
    // The script's progress, for whoever reads the test's output.
    eprintln!("{progress}");
    assert!(
        status.success(),
        "tests/e2e/game.mjs ({}) plays a whole game: {status}\nstdout:\n{}\nstderr:\n{progress}",
        variant.name(),
        lines.join("\n")
    );
    let result = result.unwrap_or_else(|| panic!("the script prints its E2E_RESULT line"));
    (result, killed)
}

/// What the store holds for one room: (version, event_type) of every event, and the
/// latest snapshot's version.
async fn stored(database_url: &str, room: &str) -> (Vec<(i64, String)>, Option<i64>) {
    let read = async {
        let mut conn = sqlx::PgConnection::connect(database_url)
            .await
            .expect("the test connects to its database");
        let events: Vec<(i64, String)> = sqlx::query_as(
            "SELECT version, event_type FROM room_events WHERE room_code = $1 ORDER BY version",
        )
        .bind(room)
        .fetch_all(&mut conn)
        .await
        .expect("read room_events");
        let snapshot: Option<(i64,)> = sqlx::query_as(
            "SELECT version FROM room_snapshots WHERE room_code = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(room)
        .fetch_optional(&mut conn)
        .await
        .expect("read room_snapshots");
        (events, snapshot.map(|(v,)| v))
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the store answers within the wait")
}

/// One game at a time: four Chromium tabs are already a full load for a small machine.
static ONE_GAME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn whole_game(variant: Variant) {
    require_tools();
    let _turn = ONE_GAME.lock().await;
    let started = Instant::now();
    let database = db::fresh_postgres().await;
    let mut servers = servers(variant, &database.url).await;
    let artifacts = artifact_dir(variant);
    let (result, killed) = play(variant, &mut servers, &database.url, &artifacts).await;
    assert_eq!(
        killed.is_some(),
        variant == Variant::Cluster,
        "only the cluster variant kills"
    );
    let room = result["room"]
        .as_str()
        .unwrap_or_else(|| panic!("E2E_RESULT names the room: {result}"))
        .to_string();
    let version = result["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("E2E_RESULT carries the final version: {result}"));

    // Every tab joined once, sent heartbeats, and was shot at the end.
    assert_eq!(result["tabs"], 4, "{result}");
    // Tab 3 (index 2) dropped its socket once in the headline phase and came back; in
    // the cluster variant every tab came back once more, after the owner's death.
    let joins = match variant {
        Variant::Cluster => serde_json::json!([2, 2, 3, 2]),
        _ => serde_json::json!([1, 1, 2, 1]),
    };
    assert_eq!(result["joins"], joins, "{result}");
    for n in ["heartbeatsSent", "heartbeatsReceived"] {
        let per_tab = result[n].as_array().expect("one number per tab");
        assert!(
            per_tab.iter().all(|v| v.as_u64() >= Some(1)),
            "{n}: {result}"
        );
    }
    assert_eq!(
        result["saved"], 16,
        "four pieces of work in each of four phases"
    );
    let shots = result["screenshots"].as_array().expect("screenshot paths");
    assert_eq!(shots.len(), 4, "{result}");
    for shot in shots {
        let path = shot.as_str().expect("a path");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("screenshot {path}: {e}"));
        assert!(bytes.starts_with(b"\x89PNG"), "{path} is a PNG");
    }
    println!(
        "e2e {}: screenshots of the four tabs in {}",
        variant.name(),
        artifacts.display()
    );

    // The tabs' sockets on relay nodes leave through Redis: the owner records them
    // before it is stopped (a socket leaving during a shutdown changes nothing, by
    // design). On one node they have left when the browser has closed.
    if variant == Variant::Cluster {
        let deadline = Instant::now() + WAIT;
        loop {
            let (events, _) = stored(&database.url, &room).await;
            if events.iter().filter(|(v, _)| *v > version).count() >= 4 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the four tabs' leaving is stored: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A clean stop flushes every pending write; then the store holds the whole game.
    // The nodes stop together, as a whole cluster does (one by one, each would hand
    // the room to the next, which would skip its versions again).
    let live: Vec<&mut Server> = servers
        .iter_mut()
        .filter(|s| Some(&s.node) != killed.as_ref())
        .collect();
    for s in &live {
        s.proc.sigterm().await;
    }
    for s in live {
        let status = s.proc.wait_exit().await;
        assert!(status.success(), "the server exits cleanly: {status}");
    }
    let (events, snapshot) = stored(&database.url, &room).await;
    let versions: Vec<i64> = events.iter().map(|(v, _)| *v).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, t) in &events {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    // Versions 1..=`version` are the game the tabs saw; after it, only the four tabs
    // closing (player_left) when the browser went away. In the cluster variant the
    // takeover skipped ahead once (past anything the dead owner may have published
    // unsaved): one stored event per version on each side of that one step.
    let last = versions.last().copied().unwrap_or(0);
    let steps: Vec<(i64, i64)> = versions
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]) && versions.first() == Some(&1),
        "one increasing sequence from 1: {versions:?}"
    );
    assert_eq!(
        steps.len(),
        usize::from(variant == Variant::Cluster),
        "one stored event per version, none missing (a takeover skips once): {steps:?}; types {counts:?}"
    );
    let after: Vec<&str> = events
        .iter()
        .filter(|(v, _)| *v > version)
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(
        after,
        vec!["player_left"; 4],
        "after the tabs' version {version}, the tabs leaving and nothing else"
    );
    assert_eq!(
        snapshot,
        Some(last),
        "the last snapshot is the room's last version"
    );
    for (kind, at_least) in [
        ("player_joined", 3),
        ("player_connected", 4),
        ("settings_changed", 1),
        ("brief_updated", 1),
        ("ready_update", 4 * 6),
        ("big_idea_submitted", 4),
        ("canvas_delta", 4),
        ("content_submitted", 16),
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) >= at_least,
            "at least {at_least} {kind} events stored: {counts:?}"
        );
    }
    let moves = counts.get("status_changed").copied().unwrap_or(0)
        + counts.get("phase_changed").copied().unwrap_or(0);
    assert!(moves >= 8, "every phase move is stored: {counts:?}");
    println!(
        "e2e {}: room {room}, {} events stored, {:.1} s",
        variant.name(),
        events.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn four_browser_tabs_play_a_game_the_backend_drives_over_grpc() {
    whole_game(Variant::Grpc).await;
}

#[tokio::test]
async fn four_browser_tabs_play_a_game_the_backend_drives_over_the_broadcast_hook() {
    whole_game(Variant::Hook).await;
}

#[tokio::test]
async fn four_browser_tabs_play_a_game_on_three_cluster_nodes_and_survive_the_owners_death() {
    whole_game(Variant::Cluster).await;
}
