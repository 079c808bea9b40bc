//! Fuzzes join-token verification. The fuzzer does not know the secret, so nothing
//! it makes may ever verify; and a valid token changed at any one byte must not
//! verify either. Never a panic. (tests/fuzz_tokens.rs runs the same properties in CI.)
#![no_main]

use karaoke_realtime::auth::TokenKeys;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret";
const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let keys = TokenKeys::new(SECRET, karaoke_realtime::auth::DEFAULT_MAX_LIFETIME_SECS);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // Arbitrary text as a token: it can only verify by forging the HMAC.
        if let Ok(token) = std::str::from_utf8(rest) {
            assert!(keys.verify(token, NOW).is_err(), "forged token: {token:?}");
        }
        return;
    }
    // A valid token for fuzzer-chosen claims, then one byte changed.
    let [at_hi, at_lo, flip, rest @ ..] = rest else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let middle = text.char_indices().nth(text.chars().count() / 2);
    let (room, player) = text.split_at(middle.map_or(0, |(i, _)| i));
    if room.is_empty() || player.is_empty() {
        return;
    }
    let token = if mode % 4 == 1 {
        keys.mint_jwt(room, player, NOW, 600)
    } else {
        keys.mint_legacy(room, player, NOW + 600)
    };
    let claims = keys.verify(&token, NOW);
    if token.len() > karaoke_realtime::protocol::limits::TOKEN_MAX {
        assert!(claims.is_err());
        return;
    }
    assert!(claims.is_ok(), "minted token does not verify: {token}");
    let mut bytes = token.into_bytes();
    let at = (usize::from(*at_hi) << 8 | usize::from(*at_lo)) % bytes.len();
    // Tokens are ASCII; XOR with 1..=127 keeps it ASCII and changes the byte.
    bytes[at] ^= 1 + (flip % 127);
    let tampered = String::from_utf8(bytes).expect("still ASCII");
    assert!(
        keys.verify(&tampered, NOW).is_err(),
        "token changed at byte {at} still verifies: {tampered}"
    );
});
