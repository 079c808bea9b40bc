//! The admin plane's protobuf codec: prost's, except for what a request that does
//! not decode is answered with.
//!
//! tonic-prost answers a body that is not valid protobuf (a `string` field that is
//! not UTF-8, a truncated varint, …) with INTERNAL, which says the server is broken.
//! It is the caller's mistake, so this answers INVALID_ARGUMENT naming the field, as
//! every other bad request is answered. prost's decode errors never carry the bytes
//! themselves, so nothing the caller sent is echoed. Selected for the generated code
//! by `codec_path` in `build.rs`; the generated client uses it too, where a response
//! that does not decode also comes out as INVALID_ARGUMENT.

use prost::Message;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// `tonic_prost::ProstCodec` with decode errors as INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy)]
pub struct AdminCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for AdminCodec<T, U> {
    fn default() -> Self {
        AdminCodec(PhantomData)
    }
}

impl<T, U> Codec for AdminCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = AdminDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        AdminDecoder(PhantomData)
    }
}

/// Decodes `U` with prost; a failure is INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy)]
pub struct AdminDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for AdminDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(describe(&e)))
    }
}

/// `field.path: problem`, as the admin plane's other INVALID_ARGUMENT messages read.
/// prost renders its error as `failed to decode Protobuf message: Inner.field:
/// Outer.field: problem` (innermost first); that is turned into `field.field: problem`,
/// and anything not of that shape is kept as it is after `request: `.
fn describe(error: &prost::DecodeError) -> String {
    let text = error.to_string();
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut path = Vec::new();
    while let Some((head, tail)) = rest.split_once(": ") {
        match head.split_once('.') {
            Some((message, field)) if is_ident(message) && is_ident(field) => {
                path.push(field);
                rest = tail;
            }
            _ => break,
        }
    }
    path.reverse();
    let field = if path.is_empty() {
        "request".to_string()
    } else {
        path.join(".")
    };
    format!("{field}: {rest}")
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::pb;

    fn message_of<U: Message + Default>(bytes: &[u8]) -> String {
        match U::decode(bytes) {
            Ok(_) => panic!("must not decode"),
            Err(e) => describe(&e),
        }
    }

    #[test]
    fn decode_errors_name_the_field() {
        // GetRoomRequest.room_code (field 1, length-delimited) = "A\xFF".
        assert_eq!(
            message_of::<pb::GetRoomRequest>(&[0x0A, 2, b'A', 0xFF]),
            "room_code: invalid string value: data is not UTF-8 encoded"
        );
        // UpsertPlayerRequest.player (2) = Player { name (2) = "\xC3" }.
        assert_eq!(
            message_of::<pb::UpsertPlayerRequest>(&[0x12, 3, 0x12, 1, 0xC3]),
            "player.name: invalid string value: data is not UTF-8 encoded"
        );
        // A field of the wrong wire type is named too.
        assert_eq!(
            message_of::<pb::GetRoomRequest>(&[0x08, 1]),
            "room_code: invalid wire type: Varint (expected LengthDelimited)"
        );
        // A key that is not a varint: no field to name.
        let message = message_of::<pb::GetRoomRequest>(&[0x80]);
        assert!(message.starts_with("request: "), "{message}");
    }
}
