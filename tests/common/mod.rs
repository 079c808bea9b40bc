//! Shared helpers for integration tests: a real server on port 0 and real
//! WebSocket clients speaking to it over loopback.
#![allow(dead_code)]

pub mod db;
pub mod proxy;

use futures_util::{SinkExt, StreamExt};
use karaoke_realtime::auth::{TokenKeys, now_secs};
use karaoke_realtime::config::Config;
use karaoke_realtime::owner::RoomHandle;
use karaoke_realtime::protocol::PlayerSummary;
use karaoke_realtime::room::{Room, Settings};
use karaoke_realtime::server::{self, ServerHandle};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "integration-test-secret";
/// Upper bound for any single expected event; generous for a loaded CI machine.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub handle: ServerHandle,
    pub url: String,
    pub keys: TokenKeys,
}

pub async fn spawn_server() -> TestServer {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = Config::for_tests(SECRET);
    adjust(&mut config);
    let handle = server::start(config).await.expect("server starts");
    let url = format!("ws://{}/?room=test", handle.addr);
    TestServer {
        handle,
        url,
        keys: TokenKeys::new(SECRET.as_bytes()),
    }
}

pub fn player(id: &str, seat: i64, host: bool) -> PlayerSummary {
    PlayerSummary {
        id: id.into(),
        name: format!("Player {id}"),
        emoji: "🎤".into(),
        is_ready: false,
        is_host: host,
        seat_index: seat,
        connected: false,
    }
}

impl TestServer {
    /// Creates a room through the library API; the first player listed is host.
    pub fn create_room(&self, code: &str, ids: &[&str]) -> RoomHandle {
        self.create_room_with(code, ids, Settings::default())
    }

    pub fn create_room_with(&self, code: &str, ids: &[&str], settings: Settings) -> RoomHandle {
        let players = ids
            .iter()
            .enumerate()
            .map(|(i, id)| player(id, i as i64, i == 0))
            .collect();
        let room = Room::new(code, players, settings).expect("valid room");
        self.handle.registry().create(room).expect("room created")
    }

    pub fn token(&self, room: &str, player: &str) -> String {
        self.keys.mint_jwt(room, player, now_secs(), 600)
    }

    pub async fn connect(&self) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.url.as_str())
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// Connects and joins; returns the client and its `hello_ack`.
    pub async fn join(&self, room: &str, player: &str) -> (Client, Value) {
        let mut c = self.connect().await;
        let hello = c.join(room, player, &self.token(room, player)).await;
        assert_eq!(hello["type"], "hello_ack", "join failed: {hello}");
        (c, hello)
    }

    pub async fn version(&self, room: &str) -> u64 {
        self.handle
            .registry()
            .get(room)
            .expect("room exists")
            .snapshot()
            .await
            .expect("snapshot")
            .version
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn join(&mut self, room: &str, player: &str, token: &str) -> Value {
        self.send(
            json!({"type":"join_room","roomCode":room,"playerId":player,"playerToken":token}),
        )
        .await;
        self.recv().await
    }

    /// Next JSON message other than a server heartbeat.
    pub async fn recv(&mut self) -> Value {
        loop {
            let v = self.recv_any().await;
            if v["type"] != "heartbeat" {
                return v;
            }
        }
    }

    /// Next JSON message, heartbeats included.
    pub async fn recv_any(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message within the wait")
                .expect("socket open")
                .expect("no socket error");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Next message, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "expected {kind}, got {v}");
        v
    }

    /// Next message, which must be an error with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "{v}");
        v
    }

    /// Reads until the server closes; returns the close frame (skipping messages).
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close within the wait");
            match msg {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error before close: {e}"),
                None => return None,
            }
        }
    }

    pub async fn set_ready(&mut self, room: &str, player: &str, ready: bool) {
        self.send(json!({"type":"set_ready","roomCode":room,"playerId":player,"isReady":ready}))
            .await;
    }
}
