//! Whole games end to end, as the real callers play them: the real binary on a fresh
//! PostgreSQL database, `tests/e2e/game.mjs` as the Next.js backend, and four headless
//! Chromium tabs (Debian's `chromium`, driven by `playwright-core`) playing a game
//! from the lobby to the results on the page in `tests/e2e/page/`. Then the store
//! holds the game's events.
//!
//! Variants (one test each):
//! - `grpc`: the backend drives the room through the admin plane (@grpc/grpc-js);
//! - `hook`: the backend speaks the HTTP broadcast hook (`/api/broadcast`) with
//!   client-seeded rooms and legacy tokens, as the existing app does.
//!
//! A cluster variant (three nodes, the owner killed mid-game) waits for cluster mode;
//! `Variant` and the script's `E2E_WS_URLS` list are where it plugs in.
//!
//! Screenshots of each tab at the end land in
//! `<target dir>/e2e-artifacts/<run>/<variant>/tab-N.png` (printed by the test).
//! scripts/test installs chromium and the Node modules; a missing one fails the test,
//! it never skips.

mod binproc;
mod common;

use binproc::tools::{missing_tool, run, show, text};
use binproc::{Proc, WAIT};
use common::db;
use serde_json::Value;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

const SHARED_SECRET: &str = "e2e-browser-shared-secret-4f0a9c";
const ADMIN_TOKEN: &str = "e2e-browser-admin-token-7d21b3e8";
const HOOK_SECRET: &str = "e2e-browser-broadcast-secret-93ce";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound of the whole Node script (browser start, a whole game, screenshots).
const GAME_LIMIT: Duration = Duration::from_secs(240);
/// The page's heartbeat period, and the server's: a game sees several of each.
const HEARTBEAT_MS: &str = "2000";

#[derive(Clone, Copy, Debug)]
enum Variant {
    Grpc,
    Hook,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Grpc => "grpc",
            Variant::Hook => "hook",
        }
    }
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

/// The server for one variant, on free ports and its own database.
async fn server(variant: Variant, database_url: &str) -> (Proc, u16, u16) {
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
    let mut proc = Proc::spawn(&vars);
    let port = proc.listening_port().await;
    let line = proc.find_message("admin_plane_listening").await;
    let admin_port = line["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or_else(|| panic!("admin_plane_listening carries a port: {line}"));
    (proc, port, admin_port)
}

/// Runs tests/e2e/game.mjs against the server; returns its `E2E_RESULT` object.
async fn play(variant: Variant, port: u16, admin_port: u16, artifacts: &Path) -> Value {
    let mut cmd = Command::new("node");
    cmd.arg("tests/e2e/game.mjs")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("E2E_BACKEND", variant.name())
        .env("E2E_WS_URLS", format!("ws://127.0.0.1:{port}/"))
        .env("E2E_HTTP_URL", format!("http://127.0.0.1:{port}"))
        .env("E2E_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("E2E_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("E2E_SHARED_SECRET", SHARED_SECRET)
        .env("E2E_HOOK_SECRET", HOOK_SECRET)
        .env("E2E_ARTIFACT_DIR", artifacts)
        .env("E2E_HEARTBEAT_MS", HEARTBEAT_MS)
        .env("E2E_CHROMIUM", CHROMIUM);
    let out = run("node", cmd, GAME_LIMIT).await;
    // The script's progress, for whoever reads the test's output.
    eprintln!("{}", text(&out.stderr));
    assert!(
        out.status.success(),
        "tests/e2e/game.mjs ({}) plays a whole game:\n{}",
        variant.name(),
        show(&out)
    );
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("E2E_RESULT "))
        .unwrap_or_else(|| panic!("the script prints its E2E_RESULT line:\n{}", show(&out)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("E2E_RESULT is JSON ({e}): {line}"))
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
    let (mut proc, port, admin_port) = server(variant, &database.url).await;
    let artifacts = artifact_dir(variant);
    let result = play(variant, port, admin_port, &artifacts).await;
    let room = result["room"]
        .as_str()
        .unwrap_or_else(|| panic!("E2E_RESULT names the room: {result}"))
        .to_string();
    let version = result["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("E2E_RESULT carries the final version: {result}"));

    // Every tab joined once, sent heartbeats, and was shot at the end.
    assert_eq!(result["tabs"], 4, "{result}");
    // Tab 3 (index 2) dropped its socket once in the headline phase and came back.
    assert_eq!(result["joins"], serde_json::json!([1, 1, 2, 1]), "{result}");
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

    // A clean stop flushes every pending write; then the store holds the whole game.
    proc.sigterm().await;
    let status = proc.wait_exit().await;
    assert!(status.success(), "the server exits cleanly: {status}");
    let (events, snapshot) = stored(&database.url, &room).await;
    let versions: Vec<i64> = events.iter().map(|(v, _)| *v).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, t) in &events {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    // Versions 1..=`version` are the game the tabs saw; after it, only the four tabs
    // closing (player_left) when the browser went away.
    let last = versions.last().copied().unwrap_or(0);
    assert_eq!(
        versions,
        (1..=last).collect::<Vec<_>>(),
        "one stored event per version, none missing; types {counts:?}"
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
