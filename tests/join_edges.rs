//! Joins at the edges: seeds as hints, re-joins on one socket, moving rooms, and
//! what a late joiner learns about the presentation.
mod common;
use common::*;
use serde_json::json;

fn join_with_seed(room: &str, player: &str, token: &str, seed: serde_json::Value) -> String {
    json!({"type":"join_room","roomCode":room,"playerId":player,"playerToken":token,
           "initialSnapshot":seed})
    .to_string()
}

#[tokio::test]
async fn a_malformed_seed_never_blocks_joining_an_existing_room() {
    let s = spawn_with(|c| c.allow_client_seeded_rooms = true).await;
    s.create_room("HINT", &["host"]);
    let mut c = s.connect().await;
    // Not a snapshot at all: only a hint, and the room exists, so it is ignored.
    c.send_text(&join_with_seed(
        "HINT",
        "host",
        &s.token("HINT", "host"),
        json!({"players": 7}),
    ))
    .await;
    let hello = c.expect("hello_ack").await;
    assert_eq!(hello["snapshot"]["code"], "HINT");
    assert_eq!(hello["snapshot"]["version"], 1);
}

#[tokio::test]
async fn a_malformed_seed_for_an_unknown_room_is_invalid_payload_and_creates_nothing() {
    let s = spawn_with(|c| c.allow_client_seeded_rooms = true).await;
    let mut c = s.connect().await;
    c.send_text(&join_with_seed(
        "NEWR",
        "host",
        &s.token("NEWR", "host"),
        json!([1, 2]),
    ))
    .await;
    c.expect_error("invalid_payload").await;
    assert!(s.handle.registry().get("NEWR").is_none());
}

#[tokio::test]
async fn rejoining_the_same_room_on_one_socket_changes_nothing() {
    let s = spawn_server().await;
    s.create_room("SAME", &["host", "p2"]);
    let (mut host, _) = s.join("SAME", "host").await;
    let (mut p2, _) = s.join("SAME", "p2").await;
    assert_eq!(host.expect("room_state").await["snapshot"]["version"], 2);
    let hello = p2.join("SAME", "p2", &s.token("SAME", "p2")).await;
    assert_eq!(hello["type"], "hello_ack");
    assert_eq!(hello["snapshot"]["version"], 2, "no leave and re-connect");
    // Others get room_state on every join (Part A), with the unchanged version.
    assert_eq!(host.expect("room_state").await["snapshot"]["version"], 2);
    // Still exactly one membership: one ready_update each.
    p2.set_ready("SAME", "p2", true).await;
    assert_eq!(p2.expect("ready_update").await["version"], 3);
    assert_eq!(p2.expect("room_state").await["snapshot"]["version"], 3);
    assert_eq!(host.expect("ready_update").await["version"], 3);
}

#[tokio::test]
async fn a_second_join_moves_the_socket_only_once_the_new_room_accepts_it() {
    let s = spawn_with(|c| c.max_sockets_per_room = 1).await;
    s.create_room("ONE", &["a"]);
    s.create_room("TWO", &["a", "b"]);
    let (mut a, _) = s.join("ONE", "a").await;
    let (_b, _) = s.join("TWO", "b").await;
    // TWO is full (one socket): the move is refused and `a` stays in ONE.
    let err = a.join("TWO", "a", &s.token("TWO", "a")).await;
    assert_eq!(err["code"], "unavailable", "{err}");
    a.set_ready("ONE", "a", true).await;
    assert_eq!(a.expect("ready_update").await["roomCode"], "ONE");
    a.expect("room_state").await;
    assert_eq!(s.version("ONE").await, 2, "a never left ONE");
}

#[tokio::test]
async fn a_late_joiner_learns_the_current_presentation() {
    let s = spawn_server().await;
    s.create_room("SHOW", &["host", "p2"]);
    let (mut host, _) = s.join("SHOW", "host").await;
    host.send(
        json!({"type":"presentation_state","roomCode":"SHOW","playerId":"host",
                     "presentIndex":2,"showCampaign":true}),
    )
    .await;
    let echo = host.expect("presentation_state").await;
    assert_eq!(echo["version"], 1, "presentation does not bump the version");
    let (_p2, hello) = s.join("SHOW", "p2").await;
    assert_eq!(
        hello["snapshot"]["presentation"],
        json!({"presentIndex":2,"showCampaign":true})
    );
}

#[tokio::test]
async fn refusals_at_the_edge_count_under_the_messages_counter_family() {
    use std::sync::atomic::Ordering::Relaxed;
    let s = spawn_server().await;
    s.create_room("CNT", &["host", "p2"]);
    let (mut host, _) = s.join("CNT", "host").await;
    // Another player's id: refused at the edge, before the room.
    host.set_ready("CNT", "p2", true).await;
    host.expect_error("forbidden").await;
    // Another room's code: refused at the edge too.
    host.send(json!({"type":"advance_phase","roomCode":"ELSE","playerId":"host"}))
        .await;
    host.expect_error("forbidden").await;
    let c = &s.handle.app.metrics.counters;
    assert_eq!(c.ready_update_attempts_total.load(Relaxed), 1);
    assert_eq!(c.ready_update_failures_total.load(Relaxed), 1);
    assert_eq!(c.phase_change_attempts_total.load(Relaxed), 1);
    assert_eq!(c.phase_change_failures_total.load(Relaxed), 1);
    assert_eq!(c.ws_message_handler_failures_total.load(Relaxed), 2);
    assert_eq!(c.ready_update_success_total.load(Relaxed), 0);
}
