//! The existing backend's HTTP broadcast hook, driven the way the backend drives it:
//! a Node script with plain `fetch` (tests/node/broadcast_hook.test.mjs) against the
//! real binary, while WebSocket players watch; and every error answer.

mod binproc;

use binproc::Proc;
use binproc::tools::node_test;
use std::time::Duration;

const SHARED_SECRET: &str = "hook-test-shared-secret-8a1c";
const HOOK_SECRET: &str = "hook-test-broadcast-secret-77";

async fn server(extra: &[(&str, &str)]) -> (Proc, String, u16) {
    let mut vars = vec![
        ("PORT", "0"),
        ("ADMIN_PORT", "0"),
        ("BIND_ADDR", "127.0.0.1"),
        ("REALTIME_SHARED_SECRET", SHARED_SECRET),
        ("DATABASE_URL", "memory:"),
        ("METRICS_FLUSH_INTERVAL_MS", "0"),
    ];
    vars.extend_from_slice(extra);
    let mut proc = Proc::spawn(&vars);
    let port = proc.listening_port().await;
    (proc, format!("http://127.0.0.1:{port}"), port)
}

#[tokio::test]
async fn the_backends_fetch_calls_drive_rooms_and_every_refusal_has_its_answer() {
    let (_hook, hook_url, _) = server(&[
        ("REALTIME_BROADCAST_SECRET", HOOK_SECRET),
        ("ALLOW_CLIENT_SEEDED_ROOMS", "true"),
    ])
    .await;
    let (_strict, strict_url, _) = server(&[("REALTIME_BROADCAST_SECRET", HOOK_SECRET)]).await;
    let (_none, no_hook_url, _) = server(&[]).await;
    node_test(
        "broadcast_hook.test.mjs",
        &[
            ("HOOK_URL", hook_url),
            ("STRICT_URL", strict_url),
            ("NO_HOOK_URL", no_hook_url),
            ("HOOK_SECRET", HOOK_SECRET.to_string()),
            ("SHARED_SECRET", SHARED_SECRET.to_string()),
        ],
        3,
        Duration::from_secs(120),
    )
    .await;
}

#[tokio::test]
async fn the_hook_logs_its_successes_and_failures_under_the_node_services_names() {
    let (mut proc, _, port) = server(&[
        ("REALTIME_BROADCAST_SECRET", HOOK_SECRET),
        ("ALLOW_CLIENT_SEEDED_ROOMS", "true"),
        ("LOG_LEVEL", "info"),
    ])
    .await;
    let post = |secret: &str| {
        format!(
            "{{\"roomCode\":\"LOG1\",\"secret\":\"{secret}\",\"event\":{{\"type\":\"brief_updated\",\"briefId\":\"b\"}}}}"
        )
    };
    let (status, _) = binproc::http_post(port, "/api/broadcast", &post(HOOK_SECRET)).await;
    assert_eq!(status, 200);
    let ok = proc.find_message("broadcast_success").await;
    assert_eq!(ok["roomCode"], "LOG1");
    assert_eq!(ok["type"], "brief_updated");
    assert_eq!(ok["clientCount"], 0);
    let (status, _) = binproc::http_post(port, "/api/broadcast", &post("wrong")).await;
    assert_eq!(status, 403);
    let failed = proc.find_message("broadcast_auth_failed").await;
    assert_eq!(failed["ip"], "127.0.0.1");
    // The secret itself is never logged.
    proc.sigterm().await;
    let (lines, _) = proc.finish().await;
    assert!(lines.iter().all(|l| !l.to_string().contains(HOOK_SECRET)));
}

#[tokio::test]
async fn a_body_that_never_finishes_is_answered_408_and_stalls_nobody() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut server, _, port) = server(&[("REALTIME_BROADCAST_SECRET", HOOK_SECRET)]).await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    slow.write_all(
        b"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"roomCode\":",
    )
    .await
    .expect("send the start of a body");
    // Everyone else is served meanwhile.
    let (status, _) = binproc::http_get(port, "/health").await;
    assert_eq!(status, 200);
    // The rest never comes: the hook gives up at its body timeout (10 s).
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match slow.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "an answer within the body timeout");
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    server.kill().await;
}
