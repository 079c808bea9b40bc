//! A WebSocket client at the byte level, for tests that must send what a library
//! client never would (unmasked frames, reserved bits, bad UTF-8, endless fragments)
//! or write a burst in one go, and then see exactly which frames came back before
//! the connection ended.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

pub struct RawWs {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

/// One frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    pub fn text(&self) -> Option<serde_json::Value> {
        (self.opcode == 1)
            .then(|| serde_json::from_slice(&self.payload).expect("server text frames are JSON"))
    }

    /// The close code of a Close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Everything the server sent until it closed the connection.
#[derive(Debug, Default)]
pub struct Ending {
    pub texts: Vec<serde_json::Value>,
    /// The code of the server's Close frame; `None` if the TCP connection ended
    /// without one (what a browser reports as 1006).
    pub close_code: Option<u16>,
    pub close_reason: String,
}

impl Ending {
    pub fn errors(&self, code: &str) -> usize {
        self.texts
            .iter()
            .filter(|t| t["type"] == "error" && t["code"] == code)
            .count()
    }
}

/// A client frame's bytes: `first` is the first header byte (FIN, RSV, opcode).
pub fn frame_bytes(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A final, masked text frame.
pub fn text_frame(text: &str) -> Vec<u8> {
    frame_bytes(0x81, text.as_bytes(), true)
}

impl RawWs {
    /// Connects and upgrades; panics unless the server answers 101.
    pub async fn connect(addr: SocketAddr) -> RawWs {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        RawWs::upgrade(tcp, addr).await
    }

    /// Upgrades an already connected socket.
    pub async fn upgrade(mut tcp: TcpStream, addr: SocketAddr) -> RawWs {
        let request = format!(
            "GET /?room=raw HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .expect("send upgrade");
        let mut ws = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let head = ws.read_http_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        ws
    }

    /// Reads an HTTP response head (status line and headers).
    pub async fn read_http_head(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk))
                .await
                .expect("an HTTP response in time")
                .expect("read");
            assert!(n > 0, "connection closed before the response head");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("send");
    }

    /// Like `send_raw`, but a write the server refuses (it closed) is not an error.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        self.tcp.write_all(bytes).await.is_ok()
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_raw(&text_frame(text)).await;
    }

    /// The next frame from the server, or `None` once the connection has ended.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<ServerFrame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout(wait, self.tcp.read(&mut chunk))
                .await
                .expect("the server sent something or closed in time");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads everything until the connection ends: the text frames, then the Close
    /// frame (and what follows it must be the end of the stream).
    pub async fn read_to_end(&mut self, wait: Duration) -> Ending {
        let mut ending = Ending::default();
        while let Some(frame) = self.next_frame(wait).await {
            match frame.opcode {
                1 => ending.texts.push(frame.text().expect("text")),
                8 => {
                    ending.close_code = frame.close_code();
                    ending.close_reason =
                        String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default())
                            .into_owned();
                    // Nothing may follow a Close frame.
                    let after = self.next_frame(wait).await;
                    assert_eq!(after, None, "a frame after the Close frame");
                    return ending;
                }
                _ => {}
            }
        }
        ending
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one unmasked server frame from the start of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<(ServerFrame, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    assert_eq!(b1 & 0x80, 0, "server frames are never masked");
    assert_eq!(b0 & 0x70, 0, "server frames set no reserved bit");
    let (len, at) = match b1 & 0x7F {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(buf.get(2..10)?);
            (u64::from_be_bytes(raw) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    Some((
        ServerFrame {
            opcode: b0 & 0x0F,
            payload,
        },
        at + len,
    ))
}

impl RawWs {
    /// Connects from `source` (an address of 127.0.0.0/8, so one machine can play
    /// many clients) and upgrades.
    pub async fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> RawWs {
        RawWs::upgrade(connect_from(addr, source).await, addr).await
    }
}

/// A TCP connection to `addr` from `source`.
pub async fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind((source, 0).into())
        .expect("bind the source address");
    socket.connect(addr).await.expect("connect")
}

/// Sends a plain HTTP/1.1 request on `tcp` and returns the status code and body.
pub async fn http(tcp: &mut TcpStream, request: &str) -> (u16, String) {
    tcp.write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An upgrade request, for connections that expect to be refused.
pub fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Waits until the peer closes `tcp` (EOF or reset); panics after `wait`.
pub async fn closed_by_peer(tcp: &mut TcpStream, wait: Duration) {
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, tcp.read(&mut chunk))
            .await
            .expect("the server closes the connection in time")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
