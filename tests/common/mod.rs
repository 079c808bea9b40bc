//! Shared helpers for integration tests: a real server on port 0 and real
//! WebSocket clients speaking to it over loopback.
#![allow(dead_code)]

pub mod db;
pub mod proxy;
pub mod raw;

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
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
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
        keys: TokenKeys::new(
            SECRET.as_bytes(),
            karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS,
        ),
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
        self.handle
            .registry()
            .create_here(room)
            .expect("room created")
    }

    pub fn token(&self, room: &str, player: &str) -> String {
        self.keys.mint_jwt(room, player, now_secs(), 600)
    }

    pub async fn connect(&self) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.url.as_str())
            .await
            .expect("websocket connects");
        Client::new(ws)
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

/// The room version a server message carries, if any.
pub fn version_of(v: &Value) -> Option<u64> {
    v["version"]
        .as_u64()
        .or_else(|| v["snapshot"]["version"].as_u64())
}

/// A WebSocket client. It remembers the newest room version it has seen; a name, when
/// given, prefixes its panic messages.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    name: Option<&'static str>,
    /// Upper bound for each read.
    wait: Duration,
    /// The newest room version any message on this socket carried.
    pub seen: u64,
}

impl Client {
    /// A client on an open socket, reading with the default `WAIT`.
    pub fn new(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            name: None,
            wait: WAIT,
            seen: 0,
        }
    }

    /// Connects to `ws://127.0.0.1:{port}/?room={room}` (a server in another process),
    /// waiting up to `wait` for that and for each later read.
    pub async fn connect(port: u16, room: &str, wait: Duration) -> Client {
        let url = format!("ws://127.0.0.1:{port}/?room={room}");
        let (ws, _) = tokio::time::timeout(wait, tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket connects within the wait")
            .expect("websocket connects");
        Client {
            wait,
            ..Client::new(ws)
        }
    }

    /// The same client, named `name` in its panic messages.
    pub fn named(mut self, name: &'static str) -> Client {
        self.name = Some(name);
        self
    }

    pub fn name(&self) -> &str {
        self.name.unwrap_or("client")
    }

    /// Prefix for panic messages: "name: ", or nothing for an unnamed client.
    fn who(&self) -> String {
        self.name.map(|n| format!("{n}: ")).unwrap_or_default()
    }

    fn note_version(&mut self, v: &Value) {
        if let Some(version) = version_of(v) {
            self.seen = self.seen.max(version);
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn join(&mut self, room: &str, player: &str, token: &str) -> Value {
        self.join_with(room, player, token, None, None).await
    }

    /// Sends `join_room`, with an `initialSnapshot` and a `lastVersion` when given, and
    /// returns the reply.
    pub async fn join_with(
        &mut self,
        room: &str,
        player: &str,
        token: &str,
        seed: Option<Value>,
        last: Option<u64>,
    ) -> Value {
        let mut msg =
            json!({"type":"join_room","roomCode":room,"playerId":player,"playerToken":token});
        if let Some(seed) = seed {
            msg["initialSnapshot"] = seed;
        }
        if let Some(last) = last {
            msg["lastVersion"] = json!(last);
        }
        self.send(msg).await;
        self.recv().await
    }

    /// Next JSON message other than a server heartbeat.
    pub async fn recv(&mut self) -> Value {
        loop {
            let v = self.recv_any().await;
            if v["type"] != "heartbeat" {
                self.note_version(&v);
                return v;
            }
        }
    }

    /// Next JSON message, heartbeats included.
    pub async fn recv_any(&mut self) -> Value {
        let who = self.who();
        loop {
            let msg = tokio::time::timeout(self.wait, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{who}a message within {:?}", self.wait))
                .unwrap_or_else(|| panic!("{who}socket open"))
                .unwrap_or_else(|e| panic!("{who}no socket error: {e}"));
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("{who}unexpected frame {other:?}"),
            }
        }
    }

    /// Next message, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "{}expected {kind}, got {v}", self.who());
        v
    }

    /// Next message, which must be an error with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "{}{v}", self.who());
        v
    }

    /// Reads until a message of `kind` carrying `version`; every message on the way
    /// must be older (nothing is skipped that the test did not expect).
    pub async fn see(&mut self, kind: &str, version: u64) -> Value {
        loop {
            let v = self.recv().await;
            assert_ne!(v["type"], "error", "{}{v}", self.who());
            if v["type"] == kind && version_of(&v) == Some(version) {
                return v;
            }
            assert!(
                version_of(&v).is_some_and(|seen| seen <= version),
                "{}waiting for {kind} v{version}, got {v}",
                self.who()
            );
        }
    }

    /// Reads until the server closes (noting versions on the way); returns the close
    /// frame, or `None` if the socket ended without one.
    pub async fn expect_close(&mut self) -> Option<CloseFrame> {
        let who = self.who();
        loop {
            let msg = tokio::time::timeout(self.wait, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{who}close within {:?}", self.wait));
            match msg {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("server sends JSON");
                    self.note_version(&v);
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{who}socket error before close: {e}"),
                None => return None,
            }
        }
    }

    /// Reads until the server's close frame and returns its code.
    pub async fn close_code(&mut self) -> CloseCode {
        match self.expect_close().await {
            Some(frame) => frame.code,
            None => panic!("{}a close frame with a code", self.who()),
        }
    }

    pub async fn set_ready(&mut self, room: &str, player: &str, ready: bool) {
        self.send(json!({"type":"set_ready","roomCode":room,"playerId":player,"isReady":ready}))
            .await;
    }
}
