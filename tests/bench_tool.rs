//! The load generator `karaoke-bench` against the real server binary: each scenario
//! runs briefly and must report sane numbers and no errors. (The published numbers
//! come from bench/run-workloads.sh; nothing here asserts speed.)
mod binproc;

use binproc::Proc;
use serde_json::Value;
use std::process::Stdio;

const SECRET: &str = "bench-tool-test-secret-0123456789";
const BENCH: &str = env!("CARGO_BIN_EXE_karaoke-bench");

async fn server() -> (Proc, u16) {
    let mut server = Proc::spawn(&[
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("REALTIME_SHARED_SECRET", SECRET),
        ("ALLOW_CLIENT_SEEDED_ROOMS", "true"),
        ("DATABASE_URL", "memory:"),
        ("RATE_LIMIT_PER_SEC", "100000"),
        ("RATE_LIMIT_BURST", "100000"),
    ]);
    let port = server.listening_port().await;
    (server, port)
}

/// Runs karaoke-bench to completion and returns its one JSON result line.
async fn bench(port: u16, pid: u32, args: &[&str]) -> Value {
    let output = tokio::process::Command::new(BENCH)
        .args([
            "--url",
            &format!("ws://127.0.0.1:{port}/"),
            "--secret",
            SECRET,
        ])
        .args(["--server-pid", &pid.to_string()])
        .args(["--duration", "1", "--warmup", "0.2"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("karaoke-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "karaoke-bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {stdout}");
    serde_json::from_str(lines[0]).expect("the line is JSON")
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is a number in {v}"))
}

#[tokio::test]
async fn every_scenario_reports_its_numbers_without_errors() {
    let (mut server, port) = server().await;
    let pid = server.pid;

    let join = bench(
        port,
        pid,
        &["--scenario", "join", "--rooms", "3", "--players", "4"],
    )
    .await;
    assert_eq!(join["sockets"], 12);
    assert!(number(&join, "joins_per_sec") > 0.0);
    assert!(number(&join, "rss_kib_per_socket").is_finite());
    assert!(
        join.get("errors").is_none(),
        "join reports no message errors: {join}"
    );

    let closed = bench(
        port,
        pid,
        &[
            "--scenario",
            "broadcast",
            "--rooms",
            "2",
            "--players",
            "3",
            "--tag",
            "closed",
        ],
    )
    .await;
    assert_eq!(closed["errors"], 0, "{closed}");
    assert_eq!(closed["tag"], "closed");
    assert!(number(&closed, "deliveries_per_sec") > 0.0, "{closed}");
    assert!(number(&closed, "latency_p99_ms") >= number(&closed, "latency_p50_ms"));

    let fixed = bench(
        port,
        pid,
        &[
            "--scenario",
            "broadcast",
            "--rooms",
            "2",
            "--players",
            "3",
            "--rate",
            "20",
        ],
    )
    .await;
    assert_eq!(fixed["errors"], 0, "{fixed}");
    assert!(number(&fixed, "sent") > 0.0, "{fixed}");
    // Every recipient (3 per room, sender included) gets each message; only the
    // ones still in flight at the window's edge may be missing from the count.
    assert!(number(&fixed, "undelivered_fraction") < 0.2, "{fixed}");

    let ready = bench(
        port,
        pid,
        &["--scenario", "ready", "--rooms", "2", "--players", "3"],
    )
    .await;
    assert_eq!(ready["errors"], 0, "{ready}");
    assert!(number(&ready, "round_trips_per_sec") > 0.0, "{ready}");
    assert!(number(&ready, "server_rss_kib") > 0.0, "{ready}");

    server.kill().await;
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// On one core the server runs a current-thread runtime (no worker threads): a
/// game's messages, round trips and joins are all served, and SIGTERM still ends it
/// cleanly.
#[tokio::test]
async fn on_one_core_the_server_runs_one_thread_and_serves_every_scenario() {
    let mut server = Proc::spawn_on_one_core(&[
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("REALTIME_SHARED_SECRET", SECRET),
        ("ALLOW_CLIENT_SEEDED_ROOMS", "true"),
        ("DATABASE_URL", "memory:"),
        ("RATE_LIMIT_PER_SEC", "100000"),
        ("RATE_LIMIT_BURST", "100000"),
    ]);
    let port = server.listening_port().await;
    let pid = server.pid;
    let names = thread_names(pid);
    assert!(
        !names.iter().any(|n| n.starts_with("tokio-rt-worker")),
        "no runtime worker threads on one core: {names:?}"
    );
    for args in [
        &["--scenario", "broadcast", "--rooms", "2", "--players", "3"][..],
        &["--scenario", "ready", "--rooms", "2", "--players", "3"][..],
        &["--scenario", "join", "--rooms", "3", "--players", "4"][..],
    ] {
        let result = bench(port, pid, args).await;
        assert!(result.get("errors").is_none_or(|e| e == 0), "{result}");
        let work = ["deliveries_per_sec", "round_trips_per_sec", "joins_per_sec"]
            .iter()
            .find_map(|key| result.get(*key).and_then(Value::as_f64));
        assert!(work.is_some_and(|n| n > 0.0), "{result}");
    }
    server.sigterm().await;
    assert!(server.wait_exit().await.success());
}

#[tokio::test]
async fn bad_arguments_exit_2_with_usage() {
    let output = tokio::process::Command::new(BENCH)
        .args(["--scenario", "dance", "--secret", SECRET])
        .output()
        .await
        .expect("karaoke-bench runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: karaoke-bench"));
}
