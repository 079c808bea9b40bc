mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn two_players_see_each_others_ready() {
    let s = spawn_server().await;
    s.create_room("ROOM1", &["host", "p2"]);
    let (mut a, hello) = s.join("ROOM1", "host").await;
    assert_eq!(hello["snapshot"]["version"], 1);
    let (mut b, _) = s.join("ROOM1", "p2").await;
    let st = a.expect("room_state").await;
    assert_eq!(st["snapshot"]["version"], 2);
    b.set_ready("ROOM1", "p2", true).await;
    for c in [&mut a, &mut b] {
        let r = c.expect("ready_update").await;
        assert_eq!(
            r,
            json!({"type":"ready_update","roomCode":"ROOM1","playerId":"p2","isReady":true,"version":3})
        );
        c.expect("room_state").await;
    }
}
