//! WebSocket framing over one TCP socket: the reader that turns client bytes into
//! checked frames and messages, and the writer that hands queued server frames to
//! the kernel in vectored writes.
//!
//! Both work on a shared `&TcpStream` through readiness (`readable`/`writable` then
//! `try_read`/`try_write_vectored`), so one task can run them side by side, the
//! `IoSlice`s of a write never live across an `.await` (the task stays small), and an
//! idle socket holds no read buffer at all.

use super::frame::{self, Frame, Header, Violation, opcode};
use crate::outbox::{Outbox, Weigh};
use bytes::{Buf, Bytes, BytesMut};
use std::io::{self, IoSlice};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 4096;
/// Frames handed to one `writev` at most (one wake-up may take several).
const WRITE_SLICES: usize = 64;

/// One thing the client sent: a frame, or the message it completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Bytes),
    Pong,
    /// The client's Close frame and the code it carried.
    Close(Option<u16>),
    /// A data frame that does not finish its message yet.
    Fragment,
}

#[derive(Debug)]
pub enum ReadError {
    /// The client broke the protocol; close with the violation's code.
    Violation(Violation),
    /// The client closed the TCP connection.
    Eof,
    Io(io::Error),
}

/// A fragmented message being assembled.
struct Partial {
    opcode: u8,
    data: Vec<u8>,
}

/// Reads and checks client frames. Holds a buffer only while a frame is incomplete.
pub struct FrameReader {
    buf: BytesMut,
    partial: Option<Partial>,
    max_message: usize,
}

impl FrameReader {
    /// A reader for messages of at most `max_message` bytes; `initial` are bytes
    /// already read from the socket (after the HTTP upgrade request).
    pub fn new(max_message: usize, initial: Bytes) -> FrameReader {
        FrameReader {
            buf: BytesMut::from(&initial[..]),
            partial: None,
            max_message,
        }
    }

    /// The next frame or message. Cancel-safe: bytes are only ever consumed inside
    /// one poll, together with the parse that uses them.
    pub async fn next(&mut self, stream: &mut ReadHalf<'_>) -> Result<Incoming, ReadError> {
        loop {
            if let Some(incoming) = self.parse().map_err(ReadError::Violation)? {
                return Ok(incoming);
            }
            if self.buf.capacity() == self.buf.len() {
                // Nothing pending: wait for data before taking a buffer for it, so an
                // idle socket holds none.
                stream.as_ref().readable().await.map_err(ReadError::Io)?;
                self.buf.reserve(READ_CHUNK);
            }
            // Through `AsyncRead`: tokio drops the socket's readiness after a short
            // read, so the next read waits for data instead of costing a `recv`
            // that finds none.
            match stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ReadError::Eof),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Parses one frame from the buffer, if a whole one is there.
    fn parse(&mut self) -> Result<Option<Incoming>, Violation> {
        let max = self.max_message as u64;
        let Some(header) = frame::parse_header(&self.buf, max)? else {
            return Ok(None);
        };
        // parse_header bounded the payload by max_message, so this cannot overflow.
        let total = header.header_len + header.payload_len as usize;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mut payload = self.buf.split_to(total);
        payload.advance(header.header_len);
        frame::unmask(&mut payload, header.mask, 0);
        if self.buf.is_empty() {
            // Nothing pending: let the allocation go with the frames that use it.
            self.buf = BytesMut::new();
        }
        self.on_frame(header, payload).map(Some)
    }

    fn on_frame(&mut self, header: Header, payload: BytesMut) -> Result<Incoming, Violation> {
        match header.opcode {
            opcode::PING => Ok(Incoming::Ping(payload.freeze())),
            opcode::PONG => Ok(Incoming::Pong),
            opcode::CLOSE => frame::parse_close(&payload).map(Incoming::Close),
            opcode::TEXT | opcode::BINARY => {
                if self.partial.is_some() {
                    return Err(Violation::Protocol(
                        "a new message began inside a fragmented one",
                    ));
                }
                if header.fin {
                    return complete(header.opcode, payload.to_vec());
                }
                self.partial = Some(Partial {
                    opcode: header.opcode,
                    data: payload.to_vec(),
                });
                Ok(Incoming::Fragment)
            }
            _ => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(Violation::Protocol("continuation frame without a message"));
                };
                if partial.data.len().saturating_add(payload.len()) > self.max_message {
                    return Err(Violation::TooBig);
                }
                partial.data.extend_from_slice(&payload);
                if !header.fin {
                    return Ok(Incoming::Fragment);
                }
                let done = self.partial.take().map(|p| (p.opcode, p.data));
                match done {
                    Some((opcode, data)) => complete(opcode, data),
                    None => Err(Violation::Protocol("continuation frame without a message")),
                }
            }
        }
    }
}

fn complete(opcode: u8, data: Vec<u8>) -> Result<Incoming, Violation> {
    if opcode == opcode::BINARY {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(data)
        .map(Incoming::Text)
        .map_err(|_| Violation::InvalidUtf8)
}

/// Writes `frames` in full, in vectored writes of up to `WRITE_SLICES` frames,
/// resuming partial writes where they stopped. A write that makes no progress for
/// `stall` fails with `TimedOut`.
pub async fn write_frames(stream: &TcpStream, frames: &[Frame], stall: Duration) -> io::Result<()> {
    // Position: frame index, and offset into that frame.
    let (mut at, mut offset) = (0usize, 0usize);
    while at < frames.len() {
        match tokio::time::timeout(stall, stream.writable()).await {
            Ok(ready) => ready?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
        let written = {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut n = 0;
            for (i, frame) in frames[at..].iter().take(WRITE_SLICES).enumerate() {
                let bytes = frame.as_bytes();
                slices[i] = IoSlice::new(if i == 0 { &bytes[offset..] } else { bytes });
                n = i + 1;
            }
            match stream.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        (at, offset) = advance(frames, at, offset, written);
    }
    Ok(())
}

/// The position `written` bytes after (`at`, `offset`).
fn advance(
    frames: &[Frame],
    mut at: usize,
    mut offset: usize,
    mut written: usize,
) -> (usize, usize) {
    while written > 0 && at < frames.len() {
        let left = frames[at].len() - offset;
        if written >= left {
            written -= left;
            at += 1;
            offset = 0;
        } else {
            offset += written;
            written = 0;
        }
    }
    (at, offset)
}

/// The writer side of one socket: drains `out` until it closes, then sends what is
/// still queued, the Close frame, and a FIN. Returns once the Close frame is out, the
/// socket failed, or `close_timeout` passed.
pub async fn write_loop(
    stream: &TcpStream,
    out: &Outbox,
    stall: Duration,
    close_timeout: Duration,
) {
    let mut batch = Vec::new();
    while !out.is_closing() && out.take(&mut batch).await {
        // Corking: wait for the runtime to run what is ready now (other sockets'
        // messages, their rooms' publications) before writing, so frames published
        // meanwhile leave in this same writev. A yielded task runs again after the
        // next I/O poll; under no load that costs microseconds.
        tokio::task::yield_now().await;
        out.take_now(&mut batch);
        let weight: usize = batch.iter().map(Weigh::weight).sum();
        let result = {
            let write = Box::pin(write_frames(stream, &batch, stall));
            tokio::pin!(write);
            // Once the socket is closing, the write in flight gets `close_timeout` to
            // finish (a socket closed for not reading could otherwise hold it until
            // the stall bound); past that it is abandoned mid-frame, and no Close
            // frame can follow.
            let mut give_up = None;
            loop {
                tokio::select! {
                    result = &mut write => break result,
                    _ = out.closed(), if give_up.is_none() => {
                        give_up = Some(tokio::time::Instant::now() + close_timeout);
                    }
                    _ = sleep_until(give_up) => return,
                }
            }
        };
        out.release(weight);
        batch.clear();
        if let Err(e) = result {
            let stalled = e.kind() == io::ErrorKind::TimedOut;
            out.close(if stalled {
                frame::close::TRY_AGAIN_LATER
            } else {
                frame::close::NORMAL
            });
            // Mid-frame or broken: nothing more can be sent.
            return;
        }
    }
    let code = out.close_code();
    let goodbye = async {
        // What was queued before the close goes first (a shutdown's last events, the
        // error frames before a 1008), except to a socket closed for not reading.
        if code != frame::close::TRY_AGAIN_LATER {
            out.take_now(&mut batch);
        }
        batch.push(Frame::close(code, &out.close_reason()));
        write_frames(stream, &batch, close_timeout).await?;
        // FIN after the Close frame: the server sends nothing more, and a client that
        // has answered with its own Close then closes its side, ending our read.
        socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
    };
    // Boxed, as the write in flight above: a socket's task stays as small as its
    // idle state while it lives.
    let _ = tokio::time::timeout(close_timeout, Box::pin(goodbye)).await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads and discards whatever the client still sends until it closes its side or
/// `limit` passes, so that closing the socket does not turn unread input into a
/// reset that destroys the frames we sent last.
pub async fn drain<R: AsyncRead + Unpin>(stream: &mut R, limit: Duration) {
    let discard = async {
        let mut sink = vec![0u8; READ_CHUNK];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(limit, discard).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn masked(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | op];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        frame::unmask(&mut body, mask, 0);
        out.extend_from_slice(&body);
        out
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), server.expect("accept").0)
    }

    #[test]
    fn advance_moves_across_frames() {
        let frames = [Frame::text("abc"), Frame::text("de"), Frame::text("f")];
        // Frames are 5, 4 and 3 bytes (2-byte headers).
        assert_eq!(advance(&frames, 0, 0, 0), (0, 0));
        assert_eq!(advance(&frames, 0, 0, 4), (0, 4));
        assert_eq!(advance(&frames, 0, 0, 5), (1, 0));
        assert_eq!(advance(&frames, 0, 4, 5), (2, 0));
        assert_eq!(advance(&frames, 1, 1, 6), (3, 0));
    }

    #[tokio::test]
    async fn many_frames_arrive_whole_and_in_order_through_partial_writes() {
        let (mut client, server) = pair().await;
        // Larger than any socket buffer, so the writes are partial and resume.
        let frames: Vec<Frame> = (0..300)
            .map(|i| Frame::text(&format!("{i:04}").repeat(1 + i * 7)))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.as_bytes().to_vec()).collect();
        let reading = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.expect("read");
            got == expected
        });
        write_frames(&server, &frames, Duration::from_secs(10))
            .await
            .expect("written");
        assert!(reading.await.expect("reader task"));
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_stalls_the_write_into_a_timeout() {
        let (_client, server) = pair().await;
        let big = Frame::text(&"z".repeat(8 << 20));
        let err = write_frames(&server, &[big], Duration::from_millis(200))
            .await
            .expect_err("stalls");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn fragmented_text_is_assembled_and_control_frames_interleave() {
        let (mut client, mut server) = pair().await;
        let mut bytes = masked(false, opcode::TEXT, b"hel");
        bytes.extend(masked(true, opcode::PING, b"p"));
        bytes.extend(masked(false, opcode::CONTINUATION, b""));
        bytes.extend(masked(true, opcode::CONTINUATION, "lo é".as_bytes()));
        bytes.extend(masked(true, opcode::CLOSE, &[0x03, 0xE8]));
        client.write_all(&bytes).await.expect("write");
        let mut reader = FrameReader::new(1024, Bytes::new());
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(reader.next(&mut server.split().0).await.expect("frame"));
        }
        assert_eq!(
            got,
            [
                Incoming::Fragment,
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Fragment,
                Incoming::Text("hello é".into()),
                Incoming::Close(Some(1000)),
            ]
        );
        drop(client);
        assert!(matches!(
            reader.next(&mut server.split().0).await,
            Err(ReadError::Eof)
        ));
    }

    #[tokio::test]
    async fn bad_sequences_are_violations() {
        for (bytes, code) in [
            (masked(true, opcode::CONTINUATION, b"x"), 1002),
            (
                [
                    masked(false, opcode::TEXT, b"a"),
                    masked(true, opcode::TEXT, b"b"),
                ]
                .concat(),
                1002,
            ),
            (masked(true, opcode::TEXT, &[0xff, 0xfe]), 1007),
            (
                [
                    masked(false, opcode::TEXT, &[b'a'; 100]),
                    masked(true, opcode::CONTINUATION, &[b'a'; 100]),
                ]
                .concat(),
                1009,
            ),
        ] {
            let (mut client, mut server) = pair().await;
            client.write_all(&bytes).await.expect("write");
            let mut reader = FrameReader::new(150, Bytes::new());
            let code_seen = loop {
                match reader.next(&mut server.split().0).await {
                    Ok(Incoming::Fragment) => continue,
                    Ok(other) => panic!("accepted {other:?}"),
                    Err(ReadError::Violation(v)) => break v.close_code(),
                    Err(e) => panic!("{e:?}"),
                }
            };
            assert_eq!(code_seen, code, "{bytes:02x?}");
        }
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (mut client, mut server) = pair().await;
        client
            .write_all(&masked(true, opcode::TEXT, b"{}"))
            .await
            .expect("write");
        let mut reader = FrameReader::new(1024, Bytes::new());
        assert_eq!(
            reader.next(&mut server.split().0).await.expect("frame"),
            Incoming::Text("{}".into())
        );
        assert_eq!(reader.buf.capacity(), 0, "the buffer went with the frame");
        // Waiting for the next frame takes no buffer either.
        let waiting = tokio::time::timeout(
            Duration::from_millis(50),
            reader.next(&mut server.split().0),
        )
        .await;
        assert!(waiting.is_err(), "nothing was sent");
        assert_eq!(reader.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn bytes_read_before_the_upgrade_are_parsed_first() {
        let (_client, mut server) = pair().await;
        let initial = Bytes::from(masked(true, opcode::TEXT, b"{}"));
        let mut reader = FrameReader::new(1024, initial);
        assert_eq!(
            reader.next(&mut server.split().0).await.expect("frame"),
            Incoming::Text("{}".into())
        );
    }
}
