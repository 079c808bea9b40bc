mod common;
use common::*;
use karaoke_realtime::admin::pb::{self, room_admin_client::RoomAdminClient};

#[tokio::test]
async fn backend_flow_creates_a_game_players_can_join() {
    let s = spawn_server().await;
    let mut admin = RoomAdminClient::connect(format!("http://{}", s.handle.admin_addr))
        .await
        .expect("admin connects");
    let room = admin
        .create_room(pb::CreateRoomRequest {
            code: String::new(),
            host: Some(pb::Player {
                id: "host".into(),
                name: "Ada".into(),
                is_host: true,
                ..Default::default()
            }),
            settings: None,
        })
        .await
        .expect("create")
        .into_inner()
        .room
        .expect("room");
    assert_eq!(room.code.len(), 6);
    let token = admin
        .mint_player_token(pb::MintPlayerTokenRequest {
            room_code: room.code.clone(),
            player_id: "host".into(),
            ttl_seconds: 0,
        })
        .await
        .expect("mint")
        .into_inner()
        .token;
    let mut c = s.connect().await;
    let hello = c.join(&room.code, "host", &token).await;
    assert_eq!(hello["type"], "hello_ack", "{hello}");
    let v = admin
        .upsert_player(pb::UpsertPlayerRequest {
            room_code: room.code.clone(),
            player: Some(pb::Player {
                id: "p2".into(),
                name: "Bo".into(),
                seat_index: 1,
                ..Default::default()
            }),
        })
        .await
        .expect("upsert")
        .into_inner()
        .version;
    let joined = c.expect("player_joined").await;
    assert_eq!(joined["version"], v);
    assert_eq!(joined["player"]["id"], "p2");
    c.expect("room_state").await;
}

#[tokio::test]
async fn a_bad_admin_certificate_stops_start_up() {
    use karaoke_realtime::config::{AdminTls, Config, Secret};
    let mut config = Config::for_tests(SECRET);
    config.admin_tls = Some(AdminTls {
        cert_pem: b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec(),
        key_pem: Secret(b"not a key".to_vec()),
        client_ca_pem: None,
    });
    let err = match karaoke_realtime::server::start(config).await {
        Ok(_) => panic!("a server with an unusable certificate must not start"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("admin plane TLS"), "{err}");
}
