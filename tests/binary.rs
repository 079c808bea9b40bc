//! The real `karaoke-realtime` binary, run as a separate process: configuration from
//! the environment, JSON log lines on stdout, the `metrics_flush` counters, and
//! graceful shutdown on SIGTERM.

mod binproc;
mod common;

use binproc::{Proc, WAIT, http_get, seed_snapshot};
use common::{Client, version_of};
use karaoke_realtime::auth::{TokenKeys, now_secs};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = "binary-test-shared-secret-7f3a9c";

/// Every counter name dashboards and alerts use (operations.md, Telemetry).
const COUNTERS: [&str; 18] = [
    "ws_connections_total",
    "ws_messages_total",
    "ws_message_parse_failures_total",
    "ws_message_handler_failures_total",
    "join_room_attempts_total",
    "join_room_success_total",
    "join_room_failures_total",
    "auth_failures_total",
    "ready_update_attempts_total",
    "ready_update_success_total",
    "ready_update_failures_total",
    "phase_change_attempts_total",
    "phase_change_success_total",
    "phase_change_failures_total",
    "heartbeat_timeouts_total",
    "snapshots_persisted_total",
    "event_persist_success_total",
    "event_persist_failures_total",
];

/// Environment of a fully configured test server; `extra` entries override.
fn configured(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut vars = vec![
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("REALTIME_SHARED_SECRET", SECRET),
        ("ALLOW_CLIENT_SEEDED_ROOMS", "true"),
        ("DATABASE_URL", "memory:"),
        ("HEARTBEAT_INTERVAL_MS", "600000"),
        ("HEARTBEAT_TIMEOUT_MS", "1200000"),
        ("METRICS_FLUSH_INTERVAL_MS", "0"),
        ("LOG_LEVEL", "info"),
    ];
    for (name, value) in extra {
        vars.retain(|(n, _)| n != name);
        vars.push((name, value));
    }
    vars
}

fn token(room: &str, player: &str) -> String {
    TokenKeys::new(
        SECRET.as_bytes(),
        karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
    )
    .mint_jwt(room, player, now_secs(), 600)
}

/// Whether `line` names `var` as a whole word (so `PORT` does not match `ADMIN_PORT`).
fn names(line: &str, var: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    line.match_indices(var).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + var.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

#[tokio::test]
async fn starts_with_nothing_but_a_port_and_answers_health_and_readiness() {
    // Port 0 for both planes so parallel tests never collide; nothing else is set.
    let mut server = Proc::spawn(&[("PORT", "0"), ("ADMIN_PORT", "0")]);
    let port = server.listening_port().await;
    let warning = server
        .find("the random-secret warning", |v| {
            v["level"] == "warn"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("REALTIME_SHARED_SECRET"))
        })
        .await;
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("random")),
        "{warning}"
    );
    let listening = server.find_message("realtime_server_listening").await;
    assert_eq!(listening["level"], "info", "{listening}");
    assert!(
        listening["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{listening}"
    );

    let (status, body) = http_get(port, "/health").await;
    assert_eq!(status, 200, "/health: {body}");
    let (status, body) = http_get(port, "/readyz").await;
    assert_eq!(status, 200, "/readyz: {body}");

    server.sigterm().await;
    let exit = server.wait_exit().await;
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test]
async fn bad_values_stop_start_up_with_one_line_per_variable() {
    let short_secret = "tooShort-9x";
    let mut server = Proc::spawn(&[
        ("PORT", "abc"),
        ("LOG_LEVEL", "loud"),
        ("HEARTBEAT_INTERVAL_MS", "-5"),
        ("REALTIME_SHARED_SECRET", short_secret),
        ("METRICS_FLUSH_INTERVAL_MS", "200"),
    ]);
    let exit = server.wait_exit().await;
    let (stdout, stderr) = server.finish().await;
    assert!(!exit.success(), "exit status {exit}");
    assert!(
        stdout.is_empty(),
        "nothing is logged (in particular no realtime_server_listening): {stdout:?}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let bad = [
        "PORT",
        "LOG_LEVEL",
        "HEARTBEAT_INTERVAL_MS",
        "REALTIME_SHARED_SECRET",
    ];
    assert_eq!(
        lines.len(),
        bad.len(),
        "one line per bad variable: {lines:#?}"
    );
    for var in bad {
        let naming: Vec<&&str> = lines.iter().filter(|l| names(l, var)).collect();
        assert_eq!(naming.len(), 1, "exactly one line names {var}: {lines:#?}");
    }
    assert!(
        !lines.iter().any(|l| names(l, "METRICS_FLUSH_INTERVAL_MS")),
        "a good value is not reported: {lines:#?}"
    );
    assert!(
        !stderr.contains(short_secret),
        "the secret is not echoed: {stderr}"
    );

    // A single bad variable next to good ones: still refused, still one line.
    let mut server = Proc::spawn(&configured(&[("HEARTBEAT_TIMEOUT_MS", "soon")]));
    let exit = server.wait_exit().await;
    let (stdout, stderr) = server.finish().await;
    assert!(!exit.success(), "exit status {exit}");
    assert!(stdout.is_empty(), "nothing is logged: {stdout:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(names(lines[0], "HEARTBEAT_TIMEOUT_MS"), "{lines:#?}");
}

/// Sums the deltas of successive `metrics_flush` lines.
#[derive(Default)]
struct Totals(std::collections::BTreeMap<String, u64>);

impl Totals {
    fn add(&mut self, metrics: &serde_json::Map<String, Value>) {
        for name in COUNTERS {
            let delta = metrics
                .get(name)
                .and_then(Value::as_u64)
                .unwrap_or_else(|| panic!("metrics_flush carries counter {name}: {metrics:?}"));
            *self.0.entry(name.to_string()).or_default() += delta;
        }
    }
}

#[tokio::test]
async fn metrics_flush_counts_what_clients_did_and_logs_carry_room_and_player() {
    let mut server = Proc::spawn(&configured(&[("METRICS_FLUSH_INTERVAL_MS", "200")]));
    let port = server.listening_port().await;
    let room = "METR1";
    let seed = seed_snapshot(room, &["host", "p2"]);

    // A: seeds the room, readies up, advances, then tries an invalid transition.
    let mut a = Client::connect(port, room, WAIT).await;
    let host_token = token(room, "host");
    let hello = a
        .join_with(room, "host", &host_token, Some(seed.clone()), None)
        .await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    a.send(json!({"type":"set_ready","roomCode":room,"playerId":"host","isReady":true}))
        .await;
    a.expect("ready_update").await;
    a.expect("room_state").await;
    a.send(json!({"type":"advance_phase","roomCode":room,"playerId":"host"}))
        .await;
    let changed = a.expect("status_changed").await;
    assert_eq!(changed["status"], "briefing", "{changed}");
    // The ready reset is a change of its own, at the next version.
    let reset = a.expect("room_state").await;
    assert_eq!(
        version_of(&reset),
        version_of(&changed).map(|v| v + 1),
        "{reset}"
    );
    a.send(json!({"type":"set_status","roomCode":room,"playerId":"host","status":"voting","currentPhase":null}))
        .await;
    a.expect_error("invalid_transition").await;

    // B: a token signed with another secret, then a frame that is not JSON.
    let mut b = Client::connect(port, room, WAIT).await;
    let forged = TokenKeys::new(
        b"some-other-secret-entirely-000",
        karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
    )
    .mint_jwt(room, "p2", now_secs(), 600);
    let refused = b
        .join_with(room, "p2", &forged, Some(seed.clone()), None)
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    b.send_text("this is not json").await;
    b.expect_error("invalid_payload").await;

    // C: a valid token for a player outside the roster joins, then cannot ready up.
    let mut c = Client::connect(port, room, WAIT).await;
    let ghost_token = token(room, "ghost");
    let hello = c.join(room, "ghost", &ghost_token).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    c.send(json!({"type":"set_ready","roomCode":room,"playerId":"ghost","isReady":true}))
        .await;
    c.expect_error("player_not_found").await;

    let expected: Vec<(&str, u64)> = vec![
        ("ws_connections_total", 3),
        // A: join, set_ready, advance_phase, set_status; B: join, garbage; C: join, set_ready.
        ("ws_messages_total", 8),
        ("ws_message_parse_failures_total", 1),
        // The refused set_status and the ghost's set_ready.
        ("ws_message_handler_failures_total", 2),
        ("join_room_attempts_total", 3),
        ("join_room_success_total", 2),
        ("join_room_failures_total", 1),
        ("auth_failures_total", 1),
        ("ready_update_attempts_total", 2),
        ("ready_update_success_total", 1),
        ("ready_update_failures_total", 1),
        ("phase_change_attempts_total", 2),
        ("phase_change_success_total", 1),
        ("phase_change_failures_total", 1),
        ("heartbeat_timeouts_total", 0),
        ("snapshots_persisted_total", 0),
        ("event_persist_success_total", 0),
        ("event_persist_failures_total", 0),
    ];
    let expected: std::collections::BTreeMap<String, u64> = expected
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    assert_eq!(
        expected.keys().collect::<Vec<_>>().len(),
        COUNTERS.len(),
        "every counter has an expectation"
    );

    // Counters move just after the replies the clients saw, so sum the flushed
    // deltas until they reach the expectation...
    let mut totals = Totals::default();
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            let flush = server.next_flush().await;
            totals.add(&flush);
            if totals.0 == expected {
                return flush;
            }
        }
    })
    .await;
    let last = match reached {
        Ok(flush) => flush,
        Err(_) => panic!(
            "flushed counters never matched:\n got      {:?}\n expected {expected:?}",
            totals.0
        ),
    };
    assert_eq!(last["ws_connections_live"], 3, "{last:?}");
    assert_eq!(last["rooms_live"], 1, "{last:?}");
    // ...then one more flush must add nothing: the totals are exact, not a lower bound.
    let quiet = server.next_flush().await;
    totals.add(&quiet);
    assert_eq!(totals.0, expected, "a later flush added counts: {quiet:?}");

    let joined = server
        .find("join_room_success for host", |v| {
            v["message"] == "join_room_success" && v["playerId"] == "host"
        })
        .await;
    assert_eq!(joined["roomCode"], room, "{joined}");
    assert_eq!(joined["level"], "info", "{joined}");
    let failed = server.find_message("token_verification_failed").await;
    assert_eq!(failed["roomCode"], room, "{failed}");
    assert_eq!(failed["playerId"], "p2", "{failed}");

    server.sigterm().await;
    let exit = server.wait_exit().await;
    assert!(exit.success(), "exit status {exit}");
    let (_, stderr) = server.finish().await;
    let mut output = server.stdout_lines();
    output.extend(stderr.lines().map(str::to_string));
    for line in &output {
        assert!(!line.contains(SECRET), "the secret was logged: {line}");
        for credential in [&host_token, &ghost_token, &forged] {
            assert!(
                !line.contains(credential.as_str()),
                "a token was logged: {line}"
            );
        }
    }
    drop((a, b, c));
}

#[tokio::test]
async fn log_level_error_suppresses_info_and_warn_lines() {
    let mut server = Proc::spawn(&configured(&[
        ("LOG_LEVEL", "error"),
        ("METRICS_FLUSH_INTERVAL_MS", "100"),
    ]));
    // The listening line is info, so the port comes from the kernel's socket table.
    let port = server.listening_port_from_proc().await;
    let room = "QUIET";
    let mut a = Client::connect(port, room, WAIT).await;
    let hello = a
        .join_with(
            room,
            "host",
            &token(room, "host"),
            Some(seed_snapshot(room, &["host"])),
            None,
        )
        .await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    // A warn-level event (token_verification_failed) and info-level ones (join,
    // metrics_flush, shutdown) all happen; none may be printed.
    let mut b = Client::connect(port, room, WAIT).await;
    let refused = b.join(room, "host", "not-a-token").await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    server.sigterm().await;
    assert_eq!(a.close_code().await, CloseCode::Restart);
    let exit = server.wait_exit().await;
    assert!(exit.success(), "exit status {exit}");
    let (lines, stderr) = server.finish().await;
    for line in &lines {
        assert_eq!(
            line["level"], "error",
            "only error lines at LOG_LEVEL=error: {line}"
        );
    }
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
}

#[tokio::test]
async fn sigterm_closes_joined_sockets_with_1012_and_exits_cleanly() {
    let mut server = Proc::spawn(&configured(&[]));
    let port = server.listening_port().await;
    let room = "TERM1";
    let seed = seed_snapshot(room, &["host", "p2"]);
    let mut a = Client::connect(port, room, WAIT).await;
    let hello = a
        .join_with(room, "host", &token(room, "host"), Some(seed.clone()), None)
        .await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    let mut b = Client::connect(port, room, WAIT).await;
    let hello = b
        .join_with(room, "p2", &token(room, "p2"), Some(seed), None)
        .await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    a.expect("room_state").await;

    server.sigterm().await;
    assert_eq!(a.close_code().await, CloseCode::Restart, "host socket");
    assert_eq!(b.close_code().await, CloseCode::Restart, "second socket");
    let exit = server.wait_exit().await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    let (lines, stderr) = server.finish().await;
    let started = lines
        .iter()
        .position(|v| v["message"] == "shutdown_started")
        .unwrap_or_else(|| panic!("shutdown_started logged: {lines:#?}"));
    let complete = lines
        .iter()
        .position(|v| v["message"] == "shutdown_complete")
        .unwrap_or_else(|| panic!("shutdown_complete logged: {lines:#?}"));
    assert!(started < complete, "started before complete");
    assert_eq!(
        lines[complete]["drained"], true,
        "every socket closed within the grace: {}",
        lines[complete]
    );
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
}
