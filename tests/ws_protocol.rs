//! The WebSocket protocol at its edges, as a client observes it (RFC 6455): the close
//! code of every protocol violation, the close handshake in both directions, and
//! clients that keep writing while the server closes. Every test reads the server's
//! frames off the wire and asserts which arrived before the connection ended.

mod common;

use common::raw::{RawWs, frame_bytes, text_frame};
use common::{WAIT, spawn_with};
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A server with one room `ROOM` (host `h`, guest `g`) and a joined raw client.
async fn joined_raw(
    adjust: impl FnOnce(&mut karaoke_realtime::config::Config),
) -> (common::TestServer, RawWs) {
    let s = spawn_with(adjust).await;
    s.create_room("ROOM", &["h", "g"]);
    let mut ws = RawWs::connect(s.handle.addr).await;
    let join = json!({"type":"join_room","roomCode":"ROOM","playerId":"h","playerToken":s.token("ROOM","h")});
    ws.send_text(&join.to_string()).await;
    let hello = ws.next_frame(WAIT).await.expect("hello_ack");
    assert_eq!(hello.text().expect("text")["type"], "hello_ack");
    (s, ws)
}

#[tokio::test]
async fn each_protocol_violation_closes_with_its_code() {
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "text that is not UTF-8",
            frame_bytes(0x81, &[0xC3, 0x28], true),
            1007,
        ),
        ("an unmasked frame", frame_bytes(0x81, b"{}", false), 1002),
        ("RSV1 set", frame_bytes(0xC1, b"{}", true), 1002),
        ("RSV3 set", frame_bytes(0x91, b"{}", true), 1002),
        ("reserved data opcode 3", frame_bytes(0x83, b"", true), 1002),
        (
            "reserved control opcode 0xB",
            frame_bytes(0x8B, b"", true),
            1002,
        ),
        ("a fragmented ping", frame_bytes(0x09, b"", true), 1002),
        ("a 126-byte ping", frame_bytes(0x89, &[0; 126], true), 1002),
        (
            "a close frame of one byte",
            frame_bytes(0x88, &[3], true),
            1002,
        ),
        (
            "a close frame with code 1005",
            frame_bytes(0x88, &[0x03, 0xED], true),
            1002,
        ),
        (
            "a close reason that is not UTF-8",
            frame_bytes(0x88, &[0x03, 0xE8, 0xFF], true),
            1007,
        ),
        (
            "a continuation with no message",
            frame_bytes(0x80, b"x", true),
            1002,
        ),
        (
            "a new message inside a fragmented one",
            [
                frame_bytes(0x01, b"{", true),
                frame_bytes(0x81, b"{}", true),
            ]
            .concat(),
            1002,
        ),
        (
            "a fragmented text that is not UTF-8 once whole",
            [
                frame_bytes(0x01, &[0xE2, 0x82], true),
                frame_bytes(0x80, &[0x28], true),
            ]
            .concat(),
            1007,
        ),
    ];
    for (what, bytes, code) in cases {
        let (_s, mut ws) = joined_raw(|_| {}).await;
        ws.send_raw(&bytes).await;
        let ending = ws.read_to_end(WAIT).await;
        assert_eq!(ending.close_code, Some(code), "{what}: {ending:?}");
    }
}

#[tokio::test]
async fn a_violation_mid_burst_still_reaches_the_client_as_its_close_code() {
    let (_s, mut ws) = joined_raw(|_| {}).await;
    // A bad frame followed by more traffic the server will never parse.
    let mut bytes = frame_bytes(0x81, &[0xFF], true);
    for _ in 0..500 {
        bytes.extend(text_frame(r#"{"type":"heartbeat","roomCode":"ROOM"}"#));
    }
    ws.send_raw(&bytes).await;
    assert_eq!(ws.read_to_end(WAIT).await.close_code, Some(1007));
}

#[tokio::test]
async fn a_client_close_is_answered_with_its_own_code() {
    let s = spawn_with(|_| {}).await;
    s.create_room("ROOM", &["h"]);
    for code in [CloseCode::Normal, CloseCode::Away, CloseCode::Library(4321)] {
        let (mut c, _) = s.join("ROOM", "h").await;
        c.ws.close(Some(CloseFrame {
            code,
            reason: "bye".into(),
        }))
        .await
        .expect("send close");
        let echoed = loop {
            match tokio::time::timeout(WAIT, c.ws.next())
                .await
                .expect("reply in time")
            {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("expected the server's Close, got {other:?}"),
            }
        };
        assert_eq!(echoed.map(|f| f.code), Some(code));
        // Then the server ends the connection (it closes TCP first).
        let end = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("end in time");
        assert!(end.is_none(), "{end:?}");
    }
}

#[tokio::test]
async fn a_two_thousand_message_burst_gets_rate_limited_errors_and_then_1008() {
    let (_s, mut ws) = joined_raw(|c| {
        c.rate_limit_per_sec = 50;
        c.rate_limit_burst = 100;
    })
    .await;
    let burst: Vec<u8> = (0..2000)
        .flat_map(|_| text_frame(r#"{"type":"heartbeat","roomCode":"ROOM"}"#))
        .collect();
    // All of it in one write, as a misbehaving client would; the server closes while
    // it is still arriving.
    ws.send_raw(&burst).await;
    let ending = ws.read_to_end(WAIT).await;
    assert_eq!(ending.close_code, Some(1008), "{:?}", ending.close_reason);
    let limited = ending.errors("rate_limited");
    assert!(
        limited >= 90,
        "the rate_limited errors reach the client first: {limited}"
    );
    assert_eq!(
        limited,
        ending.texts.len(),
        "only rate_limited errors: {:?}",
        ending.texts
    );
}

#[tokio::test]
async fn an_oversized_frame_from_a_client_still_sending_closes_with_1009() {
    let (_s, mut ws) = joined_raw(|c| c.max_message_bytes = 1024).await;
    let mut bytes = frame_bytes(0x81, &vec![b'x'; 100_000], true);
    bytes.extend(text_frame(r#"{"type":"heartbeat","roomCode":"ROOM"}"#));
    // The server refuses on the header and closes while the payload still streams in.
    let _ = ws.try_send_raw(&bytes).await;
    assert_eq!(ws.read_to_end(WAIT).await.close_code, Some(1009));
}

#[tokio::test]
async fn a_message_grown_past_the_limit_by_fragments_closes_with_1009() {
    let (_s, mut ws) = joined_raw(|c| c.max_message_bytes = 1024).await;
    let mut bytes = frame_bytes(0x01, &[b'x'; 600], true);
    bytes.extend(frame_bytes(0x00, &[b'x'; 600], true));
    ws.send_raw(&bytes).await;
    assert_eq!(ws.read_to_end(WAIT).await.close_code, Some(1009));
}

#[tokio::test]
async fn endless_empty_continuation_frames_are_throttled_then_closed_with_1008() {
    let (_s, mut ws) = joined_raw(|c| {
        c.rate_limit_per_sec = 50;
        c.rate_limit_burst = 100;
    })
    .await;
    let mut bytes = frame_bytes(0x01, b"{", true);
    for _ in 0..10_000 {
        bytes.extend(frame_bytes(0x00, b"", true));
    }
    let _ = ws.try_send_raw(&bytes).await;
    let ending = ws.read_to_end(WAIT).await;
    assert_eq!(ending.close_code, Some(1008), "{ending:?}");
}

#[tokio::test]
async fn a_client_mid_stream_at_shutdown_sees_1012() {
    let (s, mut ws) = joined_raw(|_| {}).await;
    let sending = tokio::spawn(async move {
        // Keep writing heartbeats (well inside the rate budget) until the server
        // is gone.
        let frame = text_frame(r#"{"type":"heartbeat","roomCode":"ROOM"}"#);
        let mut sent = 0u32;
        loop {
            if !ws.try_send_raw(&frame).await {
                break;
            }
            sent += 1;
            if sent == 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ws
    });
    // Shut down while the client writes.
    s.handle.shutdown().await;
    let mut ws = sending.await.expect("sender");
    assert_eq!(ws.read_to_end(WAIT).await.close_code, Some(1012));
}

#[tokio::test]
async fn server_closes_come_after_what_was_queued() {
    let s = spawn_with(|_| {}).await;
    let room = s.create_room("ROOM", &["h", "g"]);
    let (mut h, _) = s.join("ROOM", "h").await;
    let (mut g, _) = s.join("ROOM", "g").await;
    h.expect("room_state").await;
    // The guest is removed right after an event it has not read yet: it gets the
    // event, then 4001.
    h.set_ready("ROOM", "h", true).await;
    h.expect("ready_update").await;
    room.apply(
        karaoke_realtime::observe::Origin::Server,
        karaoke_realtime::room::Action::RemovePlayer {
            player_id: "g".into(),
        },
    )
    .await
    .expect("removed");
    g.expect("ready_update").await;
    g.expect("room_state").await;
    assert_eq!(g.close_code().await, CloseCode::Library(4001));
}

#[tokio::test]
async fn a_socket_that_never_joins_is_closed_at_the_join_deadline_even_while_pinging() {
    let s = spawn_with(|c| c.join_timeout = Duration::from_millis(300)).await;
    let mut ws = RawWs::connect(s.handle.addr).await;
    // Pings keep a socket alive, but they are not a join.
    for _ in 0..3 {
        ws.send_raw(&frame_bytes(0x89, b"hi", true)).await;
        let pong = ws.next_frame(WAIT).await.expect("pong");
        assert_eq!((pong.opcode, &pong.payload[..]), (0xA, &b"hi"[..]));
    }
    let ending = ws.read_to_end(WAIT).await;
    assert_eq!(ending.close_code, Some(1008));
    assert_eq!(ending.close_reason, "no join_room in time");
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_closed_with_1013_and_memory_stays_bounded() {
    let s = spawn_with(|c| {
        c.outbound_queue_bytes = 6 << 20;
        c.rate_limit_per_sec = 1_000_000;
        c.rate_limit_burst = 1_000_000;
    })
    .await;
    s.create_room("ROOM", &["h", "reader"]);
    let (mut host, _) = s.join("ROOM", "h").await;
    // The guest joins and then never reads again.
    let mut silent = RawWs::connect(s.handle.addr).await;
    let join = json!({"type":"join_room","roomCode":"ROOM","playerId":"reader","playerToken":s.token("ROOM","reader")});
    silent.send_text(&join.to_string()).await;
    host.expect("room_state").await;
    let present = json!({"type":"presentation_state","roomCode":"ROOM","playerId":"h","presentIndex":1,"showCampaign":true});
    let mut sent = 0u64;
    loop {
        for _ in 0..100 {
            host.send(present.clone()).await;
        }
        sent += 100;
        // Read our own echoes back so only the silent socket falls behind.
        let mut left = false;
        for _ in 0..100 {
            let m = host.recv().await;
            if m["type"] == "player_left" {
                left = true;
            }
        }
        if left {
            break;
        }
        assert!(sent < 2_000_000, "the silent socket was never cut off");
    }
    // Whatever the silent socket reads now ends in 1013, not in a reset.
    let ending = silent.read_to_end(WAIT).await;
    assert_eq!(ending.close_code, Some(1013));
    let metrics = &s.handle.app.metrics;
    assert!(
        metrics
            .counters
            .slow_consumer_closes_total
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}
