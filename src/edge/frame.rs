//! WebSocket frames (RFC 6455 §5): the server's frames built once, complete, and the
//! client's frames parsed and checked.
//!
//! Server-to-client frames are never masked, so a broadcast is the same bytes for
//! every recipient: [`Frame`] holds the whole frame, header and payload, in one
//! reference-counted buffer that every socket's queue shares and writes as it is.
//! Client frames must be masked; [`parse_header`] checks everything the RFC requires
//! of a header, and the caller unmasks the payload in place with [`unmask`].

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes (RFC 6455 §5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Close codes the server sends, with the reason text that goes with them.
pub mod close {
    pub const NORMAL: u16 = 1000;
    /// Heartbeat timeout: the peer went away without closing.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame that breaks RFC 6455 (unmasked, reserved bits or opcodes, bad control
    /// frames, continuation out of place).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// The server failed (a room's owner crashed).
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The room was closed through the admin plane.
    pub const ROOM_CLOSED: u16 = 4000;
    /// The player was removed from the room's roster.
    pub const REMOVED: u16 = 4001;

    /// The reason sent with `code` when the caller gives none.
    pub fn reason(code: u16) -> &'static str {
        match code {
            GOING_AWAY => "heartbeat timeout",
            PROTOCOL_ERROR => "protocol error",
            INVALID_DATA => "invalid UTF-8",
            POLICY => "rate limit exceeded",
            TOO_BIG => "message too big",
            INTERNAL_ERROR => "internal error",
            RESTART => "server restarting",
            TRY_AGAIN_LATER => "outbound queue full",
            ROOM_CLOSED => "room closed",
            REMOVED => "removed from room",
            _ => "",
        }
    }

    /// Whether a client may send `code` in its Close frame (RFC 6455 §7.4).
    pub fn is_valid_from_peer(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
    }
}

/// The longest header a server frame needs: 2 bytes plus a 64-bit length.
const MAX_HEADER: usize = 10;

/// One complete server → client frame, shared by reference count.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    /// Where the payload starts in `bytes` (after the header).
    header_len: u8,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("opcode", &(self.bytes[0] & 0x0F))
            .field("payload_len", &self.payload().len())
            .finish()
    }
}

/// Writes the header of an unmasked, final frame with `opcode` and `len` payload
/// bytes into `out`; returns its length.
fn write_header(out: &mut [u8; MAX_HEADER], opcode: u8, len: usize) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

impl Frame {
    /// A final frame with `opcode` carrying `payload` (copied once, after the header).
    pub fn new(opcode: u8, payload: &[u8]) -> Frame {
        let mut header = [0u8; MAX_HEADER];
        let n = write_header(&mut header, opcode, payload.len());
        let mut bytes = BytesMut::with_capacity(n + payload.len());
        bytes.put_slice(&header[..n]);
        bytes.put_slice(payload);
        Frame {
            bytes: bytes.freeze(),
            header_len: n as u8,
        }
    }

    /// A text frame whose payload is `value` serialized as JSON, written straight
    /// after room reserved for the header: no second copy of the payload.
    pub fn json(value: &impl serde::Serialize) -> Frame {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0u8; MAX_HEADER]);
        if serde_json::to_writer(&mut buf, value).is_err() {
            // Plain data always serializes; keep the signature infallible.
            return Frame::text(
                r#"{"type":"error","code":"internal_error","message":"encoding failed"}"#,
            );
        }
        // Frames can live long (the resume history, the cached hello_ack): give back
        // what the doubling growth over-allocated.
        if buf.capacity() > buf.len() + buf.len() / 4 + 64 {
            buf.shrink_to_fit();
        }
        let len = buf.len() - MAX_HEADER;
        let mut header = [0u8; MAX_HEADER];
        let n = write_header(&mut header, opcode::TEXT, len);
        let start = MAX_HEADER - n;
        buf[start..MAX_HEADER].copy_from_slice(&header[..n]);
        Frame {
            bytes: Bytes::from(buf).slice(start..),
            header_len: n as u8,
        }
    }

    pub fn text(text: &str) -> Frame {
        Frame::new(opcode::TEXT, text.as_bytes())
    }

    /// A Close frame with `code` and `reason` (cut to the 123 bytes a control frame
    /// has room for, at a character boundary).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        Frame::new(opcode::CLOSE, &payload)
    }

    /// The whole frame as it goes on the wire.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The payload (for a text frame, the JSON text) without copying.
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(usize::from(self.header_len)..)
    }

    /// Bytes this frame occupies on the wire (what queue byte bounds count).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A client frame's header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    pub payload_len: u64,
    /// Bytes the header takes on the wire.
    pub header_len: usize,
}

impl Header {
    pub fn is_control(&self) -> bool {
        self.opcode >= 0x8
    }
}

/// Why a client frame breaks the protocol; each maps to the close code it earns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// RFC 6455 violations: close 1002.
    Protocol(&'static str),
    /// A frame or message larger than the server accepts: close 1009.
    TooBig,
    /// A text message or close reason that is not UTF-8: close 1007.
    InvalidUtf8,
}

impl Violation {
    pub fn close_code(self) -> u16 {
        match self {
            Violation::Protocol(_) => close::PROTOCOL_ERROR,
            Violation::TooBig => close::TOO_BIG,
            Violation::InvalidUtf8 => close::INVALID_DATA,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(why) => why,
            Violation::TooBig => close::reason(close::TOO_BIG),
            Violation::InvalidUtf8 => close::reason(close::INVALID_DATA),
        }
    }
}

/// Parses the header at the start of `buf`. `Ok(None)`: more bytes are needed.
/// `max_payload` is the largest payload accepted (judged on the header alone, before
/// any of the payload is buffered).
pub fn parse_header(buf: &[u8], max_payload: u64) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        // No extension was negotiated, so no reserved bit may be set.
        return Err(Violation::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Err(Violation::Protocol("reserved opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(Violation::Protocol("client frames must be masked"));
    }
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([b[0], b[1]]));
            if len < 126 {
                return Err(Violation::Protocol("length not minimally encoded"));
            }
            (len, 2)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut raw = [0u8; 8];
            raw.copy_from_slice(b);
            let len = u64::from_be_bytes(raw);
            if len >> 63 != 0 {
                return Err(Violation::Protocol("length has its top bit set"));
            }
            if len <= u64::from(u16::MAX) {
                return Err(Violation::Protocol("length not minimally encoded"));
            }
            (len, 8)
        }
        n => (u64::from(n), 0),
    };
    let is_control = opcode >= 0x8;
    if is_control && (!fin || payload_len > 125) {
        return Err(Violation::Protocol(
            "control frames must be final and at most 125 bytes",
        ));
    }
    if payload_len > max_payload {
        return Err(Violation::TooBig);
    }
    let mask_at = 2 + len_bytes;
    let Some(mask) = buf.get(mask_at..mask_at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: [mask[0], mask[1], mask[2], mask[3]],
        payload_len,
        header_len: mask_at + 4,
    }))
}

/// Unmasks (or masks: it is its own inverse) `data` in place; `offset` is the
/// position of `data[0]` within the frame's payload.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

/// What a Close frame from the client said: its code, if it gave one.
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close::is_valid_from_peer(code) {
                return Err(Violation::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask, 0);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn server_frames_match_the_rfc_for_each_length_form() {
        for (len, header) in [
            (0usize, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xFF, 0xFF]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let payload = "x".repeat(len);
            let frame = Frame::text(&payload);
            let bytes = frame.as_bytes();
            assert_eq!(&bytes[..header.len()], &header[..], "len {len}");
            assert_eq!(&bytes[header.len()..], payload.as_bytes(), "len {len}");
            assert_eq!(frame.payload().len(), len);
        }
    }

    #[test]
    fn json_frames_carry_the_serialized_value_after_a_minimal_header() {
        for len in [0usize, 123, 124, 65_533, 65_534, 70_000] {
            let text = "y".repeat(len);
            let frame = Frame::json(&text);
            let json = serde_json::to_vec(&text).expect("serializes");
            assert_eq!(frame.payload(), &json[..]);
            let parsed_len = match frame.as_bytes()[1] {
                126 => {
                    assert_eq!(frame.as_bytes().len(), 4 + json.len());
                    u64::from(u16::from_be_bytes([
                        frame.as_bytes()[2],
                        frame.as_bytes()[3],
                    ]))
                }
                127 => {
                    let mut raw = [0u8; 8];
                    raw.copy_from_slice(&frame.as_bytes()[2..10]);
                    u64::from_be_bytes(raw)
                }
                n => u64::from(n),
            };
            assert_eq!(parsed_len, json.len() as u64);
            assert_eq!(frame.as_bytes()[0], 0x81);
        }
    }

    #[test]
    fn close_frames_carry_code_and_a_cut_reason() {
        let frame = Frame::close(1008, "rate limit exceeded");
        assert_eq!(&frame.as_bytes()[..4], &[0x88, 21, 0x03, 0xF0]);
        let long = "é".repeat(100);
        let frame = Frame::close(4000, &long);
        assert!(frame.payload().len() <= 125);
        assert!(std::str::from_utf8(&frame.payload()[2..]).is_ok());
    }

    #[test]
    fn client_headers_parse_in_each_length_form() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let bytes = client_frame(true, opcode::TEXT, &vec![b'a'; len]);
            let h = parse_header(&bytes, 1 << 20)
                .expect("valid")
                .expect("complete");
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(h.header_len + len, bytes.len());
            assert!(h.fin);
            let mut body = bytes[h.header_len..].to_vec();
            unmask(&mut body, h.mask, 0);
            assert!(body.iter().all(|b| *b == b'a'));
            // Every strict prefix of the header asks for more bytes.
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&bytes[..cut], 1 << 20), Ok(None), "cut {cut}");
            }
        }
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_at_once() {
        let mask = [1, 2, 3, 4];
        let data: Vec<u8> = (0..=255).collect();
        let mut whole = data.clone();
        unmask(&mut whole, mask, 0);
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(7);
        unmask(a, mask, 0);
        unmask(b, mask, 7);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn protocol_violations_are_refused_with_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            // Unmasked.
            (vec![0x81, 0x01, b'a'], 1002),
            // RSV1 set.
            (vec![0xC1, 0x80, 0, 0, 0, 0], 1002),
            // Reserved opcodes.
            (vec![0x83, 0x80, 0, 0, 0, 0], 1002),
            (vec![0x8B, 0x80, 0, 0, 0, 0], 1002),
            // Fragmented ping, and a ping longer than 125 bytes.
            (vec![0x09, 0x80, 0, 0, 0, 0], 1002),
            (vec![0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0], 1002),
            // Non-minimal lengths, and the top bit of a 64-bit length.
            (vec![0x81, 0x80 | 126, 0, 5, 0, 0, 0, 0], 1002),
            (
                vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0],
                1002,
            ),
            (
                vec![0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                1002,
            ),
            // Larger than the bound.
            (vec![0x81, 0x80 | 126, 0x10, 0, 0, 0, 0, 0], 1009),
        ];
        for (bytes, code) in cases {
            let got = parse_header(&bytes, 1024).expect_err(&format!("{bytes:02x?}"));
            assert_eq!(got.close_code(), code, "{bytes:02x?}");
        }
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(parse_close(&[]), Ok(None));
        assert_eq!(parse_close(&[0x03, 0xE8]), Ok(Some(1000)));
        assert_eq!(parse_close(&[0x0F, 0xA0, b'o', b'k']), Ok(Some(4000)));
        for bad in [
            &[0x03][..],
            &[0x03, 0xED],
            &[0x03, 0xEE],
            &[0x00, 0x00],
            &[0x13, 0x88],
        ] {
            assert_eq!(
                parse_close(bad).map_err(Violation::close_code),
                Err(1002),
                "{bad:02x?}"
            );
        }
        assert_eq!(
            parse_close(&[0x03, 0xE8, 0xFF]).map_err(Violation::close_code),
            Err(1007)
        );
    }
}
