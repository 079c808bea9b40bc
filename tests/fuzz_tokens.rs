//! Property tests that act as a fuzzer for join-token verification.
//!
//! `TokenKeys::verify` decides who may join which room, so beyond never panicking it
//! must never accept a token the shared secret did not sign as it stands: random
//! text, any single-byte change to a valid token, another secret's tokens, expired
//! tokens, tokens of any algorithm but HS256, tokens living longer than the maximum
//! lifetime or not valid yet, JWT headers with `crit`, and claims that are not a JSON
//! object are all refused. The cargo-fuzz
//! target in `fuzz/` runs the same checks for longer, on nightly.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use karaoke_realtime::auth::{
    CLOCK_SKEW_SECS, Claims, DEFAULT_MAX_LIFETIME_SECS as MAX, TokenError, TokenKeys,
};
use karaoke_realtime::protocol::limits;
use proptest::prelude::*;
use proptest::sample::Index;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-test-secret";
/// A fixed clock, so expiry is judged the same way on every run.
const NOW: u64 = 1_800_000_000;

fn keys() -> TokenKeys {
    TokenKeys::new(SECRET, MAX)
}

#[derive(Debug, Clone, Copy)]
enum Form {
    Jwt,
    Legacy,
}

fn mint(k: &TokenKeys, form: Form, room: &str, player: &str, exp: u64) -> String {
    match form {
        // `mint_jwt` takes an issue time and a lifetime; exp = iat + ttl. Issued a
        // minute before expiry, or now if that is later, so never in the future.
        Form::Jwt => {
            let iat = exp.saturating_sub(60).min(NOW);
            k.mint_jwt(room, player, iat, exp - iat)
        }
        Form::Legacy => k.mint_legacy(room, player, exp),
    }
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![Just(Form::Jwt), Just(Form::Legacy)]
}

/// Room codes and player ids: mostly ordinary, sometimes anything at all.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9_-]{1,24}",
        1 => ".{1,24}",
    ]
}

/// Expiry times a token may have: within the maximum lifetime from now.
fn future_exp() -> impl Strategy<Value = u64> {
    (NOW + 1)..=(NOW + MAX)
}

/// Expiry times beyond the maximum lifetime (and its clock skew), up to `u64::MAX`.
fn too_far_exp() -> impl Strategy<Value = u64> {
    prop_oneof![
        (NOW + MAX + CLOCK_SKEW_SECS + 1)..(NOW + 100 * 365 * 24 * 3600),
        Just(4_102_444_800u64), // 2100-01-01
        Just(u64::MAX),
        (u64::MAX - 1000)..=u64::MAX,
    ]
}

/// Signs `header.payload` the way a JWT is signed with HMAC-SHA256.
fn hs256_jwt(secret: &[u8], header: &str, payload: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fn payload(room: &str, player: &str, exp: u64) -> String {
    serde_json::json!({"roomCode": room, "playerId": player, "exp": exp, "iat": NOW}).to_string()
}

/// HMAC pads short keys with zero bytes, so `k` and `k\0` are the same key; two
/// secrets are really different only if they differ once trailing zeros are gone.
fn same_hmac_key(a: &[u8], b: &[u8]) -> bool {
    fn trim(s: &[u8]) -> &[u8] {
        let end = s.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        &s[..end]
    }
    trim(a) == trim(b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_text_never_verifies(token in any::<String>()) {
        prop_assert!(keys().verify(&token, NOW).is_err());
    }

    #[test]
    fn token_shaped_text_never_verifies(
        token in r"[A-Za-z0-9_-]{0,120}\.[A-Za-z0-9_-]{0,120}(\.[A-Za-z0-9_-]{0,120})?",
    ) {
        prop_assert!(keys().verify(&token, NOW).is_err());
    }

    #[test]
    fn base64_of_anything_never_verifies(
        parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..96), 1..5),
    ) {
        let token: Vec<String> = parts.iter().map(|p| URL_SAFE_NO_PAD.encode(p)).collect();
        prop_assert!(keys().verify(&token.join("."), NOW).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn minted_tokens_verify_to_their_claims(
        form in form(), room in name(), player in name(), exp in future_exp(),
    ) {
        let k = keys();
        let token = mint(&k, form, &room, &player, exp);
        prop_assume!(token.len() <= limits::TOKEN_MAX);
        let claims = k.verify(&token, NOW);
        prop_assert!(claims.is_ok(), "{form:?} {token} -> {claims:?}");
        let claims = claims.unwrap_or_else(|_| unreachable!());
        prop_assert_eq!(&claims.room_code, &room);
        prop_assert_eq!(&claims.player_id, &player);
        prop_assert_eq!(claims.exp, exp);
        // Verification is a pure function of token and clock.
        prop_assert_eq!(k.verify(&token, NOW), Ok(claims));
    }

    #[test]
    fn any_single_byte_change_never_verifies(
        form in form(), room in name(), player in name(), exp in future_exp(),
        at in any::<Index>(), flip in 1u8..128,
    ) {
        let k = keys();
        let token = mint(&k, form, &room, &player, exp);
        prop_assert!(k.verify(&token, NOW).is_ok());
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        // Tokens are ASCII; XOR with 1..128 gives another ASCII byte, so the result is
        // still a string that could arrive in a JSON text frame.
        bytes[i] ^= flip;
        let tampered = String::from_utf8(bytes).expect("still ASCII");
        prop_assert_ne!(&tampered, &token);
        let verdict = k.verify(&tampered, NOW);
        prop_assert!(
            verdict.is_err(),
            "{form:?} token changed at byte {i} still verifies: {tampered} -> {verdict:?}"
        );
    }

    #[test]
    fn any_single_character_edit_never_verifies(
        form in form(), room in name(), player in name(), exp in future_exp(),
        at in any::<Index>(), ch in any::<char>(), edit in 0u8..3,
    ) {
        let k = keys();
        let token = mint(&k, form, &room, &player, exp);
        let mut chars: Vec<char> = token.chars().collect();
        let i = at.index(chars.len());
        match edit {
            0 => chars.insert(i, ch),
            1 => {
                chars.remove(i);
            }
            _ => chars[i] = ch,
        }
        let tampered: String = chars.into_iter().collect();
        prop_assume!(tampered != token);
        let verdict = k.verify(&tampered, NOW);
        prop_assert!(verdict.is_err(), "edited token still verifies: {tampered} -> {verdict:?}");
    }

    #[test]
    fn another_secrets_tokens_never_verify(
        form in form(), room in name(), player in name(), exp in future_exp(),
        other in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        prop_assume!(!same_hmac_key(&other, SECRET));
        let token = mint(&TokenKeys::new(&other, MAX), form, &room, &player, exp);
        prop_assert_eq!(keys().verify(&token, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_swapped_signature_never_verifies(
        form in form(), room in name(), player in name(), other_player in name(),
        exp in future_exp(),
    ) {
        prop_assume!(player != other_player);
        let k = keys();
        let mine = mint(&k, form, &room, &player, exp);
        let theirs = mint(&k, form, &room, &other_player, exp);
        // My claims with their (valid) signature.
        let (body, _) = mine.rsplit_once('.').expect("has a signature");
        let (_, signature) = theirs.rsplit_once('.').expect("has a signature");
        let forged = format!("{body}.{signature}");
        prop_assert_eq!(keys().verify(&forged, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn expired_tokens_never_verify(
        form in form(), room in name(), player in name(), exp in 1u64..=NOW,
    ) {
        let k = keys();
        let token = mint(&k, form, &room, &player, exp);
        prop_assert_eq!(k.verify(&token, NOW), Err(TokenError::Expired));
        // The same token is fine before it expires.
        prop_assert!(k.verify(&token, exp - 1).is_ok());
    }

    #[test]
    fn other_algorithms_never_verify(
        room in name(), player in name(), exp in future_exp(),
        alg in prop::sample::select(vec![Algorithm::HS384, Algorithm::HS512]),
    ) {
        // Properly signed with the right secret, but not HS256.
        let claims = Claims { room_code: room, player_id: player, exp, iat: Some(NOW), nbf: None };
        let token = jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET))
            .expect("encodes");
        prop_assert_eq!(keys().verify(&token, NOW), Err(TokenError::WrongAlgorithm));
    }

    #[test]
    fn alg_none_and_unknown_algorithms_never_verify(
        room in name(), player in name(), exp in future_exp(),
        alg in prop::sample::select(vec![
            "none", "None", "NONE", "nOnE", "", "hs256", "HS256 ", " HS256", "RS256", "ES256",
            "PS256", "EdDSA", "HS1", "HS256\u{0}",
        ]),
        signed in any::<bool>(),
    ) {
        let header = serde_json::json!({"alg": alg, "typ": "JWT"}).to_string();
        let body = payload(&room, &player, exp);
        let token = if signed {
            // Even with a correct HMAC-SHA256 over header and payload.
            hs256_jwt(SECRET, &header, &body)
        } else {
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(&header), URL_SAFE_NO_PAD.encode(&body))
        };
        let verdict = keys().verify(&token, NOW);
        prop_assert!(verdict.is_err(), "alg {alg:?}: {verdict:?}");
    }

    #[test]
    fn tokens_living_past_the_maximum_never_verify(
        form in form(), room in name(), player in name(), exp in too_far_exp(),
    ) {
        let k = keys();
        let token = match form {
            Form::Jwt => hs256_jwt(SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, &payload(&room, &player, exp)),
            Form::Legacy => k.mint_legacy(&room, &player, exp),
        };
        prop_assume!(token.len() <= limits::TOKEN_MAX);
        prop_assert_eq!(k.verify(&token, NOW), Err(TokenError::LifetimeTooLong));
    }

    #[test]
    fn a_jwt_issued_for_longer_than_the_maximum_never_verifies(
        room in name(), player in name(), age in 1u64..(10 * MAX), extra in 1u64..(10 * MAX),
    ) {
        // Issued `age` ago, living more than the maximum, not expired yet.
        let iat = NOW - age;
        let exp = (iat + MAX + extra).max(NOW + 1);
        let claims = serde_json::json!({"roomCode": room, "playerId": player, "exp": exp, "iat": iat});
        let token = hs256_jwt(SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, &claims.to_string());
        prop_assume!(token.len() <= limits::TOKEN_MAX);
        prop_assert_eq!(keys().verify(&token, NOW), Err(TokenError::LifetimeTooLong));
    }

    #[test]
    fn tokens_not_valid_yet_never_verify(
        room in name(), player in name(), ahead in (CLOCK_SKEW_SECS + 1)..MAX,
        field in prop::sample::select(vec!["nbf", "iat"]),
    ) {
        let start = NOW + ahead;
        let mut claims = serde_json::json!({"roomCode": room, "playerId": player, "exp": start + 60});
        claims[field] = start.into();
        let token = hs256_jwt(SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, &claims.to_string());
        prop_assume!(token.len() <= limits::TOKEN_MAX);
        prop_assert_eq!(keys().verify(&token, NOW), Err(TokenError::NotYetValid));
        // The same token is fine once its start has come.
        prop_assert!(keys().verify(&token, start).is_ok());
    }

    #[test]
    fn a_crit_header_never_verifies(
        room in name(), player in name(), exp in future_exp(),
        crit in prop::sample::select(vec![
            serde_json::json!(["exp"]), serde_json::json!([]), serde_json::Value::Null,
            serde_json::json!("b64"), serde_json::json!({}), serde_json::json!(0),
        ]),
    ) {
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "crit": crit}).to_string();
        let token = hs256_jwt(SECRET, &header, &payload(&room, &player, exp));
        prop_assume!(token.len() <= limits::TOKEN_MAX);
        prop_assert_eq!(keys().verify(&token, NOW), Err(TokenError::UnsupportedHeader));
    }

    #[test]
    fn claims_that_are_not_an_object_never_verify(
        form in form(), room in name(), player in name(), exp in future_exp(),
    ) {
        // The fields in struct order, as serde would read an array positionally.
        let body = serde_json::json!([room, player, exp, NOW]).to_string();
        let token = match form {
            Form::Jwt => hs256_jwt(SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, &body),
            Form::Legacy => legacy_signed(SECRET, &body),
        };
        prop_assume!(token.len() <= limits::TOKEN_MAX);
        prop_assert_eq!(keys().verify(&token, NOW), Err(TokenError::Malformed));
    }
}

/// A legacy token whose body is `body` as given, correctly signed.
fn legacy_signed(secret: &[u8], body: &str) -> String {
    let body = URL_SAFE_NO_PAD.encode(body);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(body.as_bytes());
    format!(
        "{body}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[test]
fn hand_signed_hs256_verifies_so_the_alg_tests_are_meaningful() {
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let token = hs256_jwt(SECRET, header, &payload("R", "p", NOW + 60));
    let claims = keys()
        .verify(&token, NOW)
        .expect("valid hand-made HS256 token");
    assert_eq!(claims.room_code, "R");
    assert_eq!(claims.player_id, "p");
    // The same with alg none is refused.
    let none = hs256_jwt(
        SECRET,
        r#"{"alg":"none","typ":"JWT"}"#,
        &payload("R", "p", NOW + 60),
    );
    assert!(keys().verify(&none, NOW).is_err());
}

#[test]
fn expiry_boundary_is_exact() {
    let k = keys();
    for form in [Form::Jwt, Form::Legacy] {
        let token = mint(&k, form, "R", "p", NOW + 1);
        assert!(k.verify(&token, NOW).is_ok(), "{form:?}: one second left");
        assert_eq!(
            k.verify(&token, NOW + 1),
            Err(TokenError::Expired),
            "{form:?}"
        );
    }
}

#[test]
fn oversized_tokens_are_malformed_even_when_signed() {
    let k = keys();
    let big = "x".repeat(limits::TOKEN_MAX);
    for form in [Form::Jwt, Form::Legacy] {
        let token = mint(&k, form, "R", &big, NOW + 60);
        assert!(token.len() > limits::TOKEN_MAX);
        assert_eq!(
            k.verify(&token, NOW),
            Err(TokenError::Malformed),
            "{form:?}"
        );
    }
    let huge = "a.".repeat(1 << 20);
    assert_eq!(k.verify(&huge, NOW), Err(TokenError::Malformed));
}

#[test]
fn signed_but_ill_formed_claims_are_rejected() {
    let k = keys();
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    for claims in [
        r#"{"roomCode":"R","playerId":"p"}"#,
        r#"{"roomCode":"R","exp":9999999999}"#,
        r#"{"roomCode":"R","playerId":"p","exp":-1}"#,
        r#"{"roomCode":"R","playerId":"p","exp":"9999999999"}"#,
        r#"{"roomCode":"R","playerId":7,"exp":9999999999}"#,
        r#"{"roomCode":"R","playerId":"p","exp":1800000060.0}"#,
        r#"{"roomCode":"R","playerId":"p","exp":1.80000006e9}"#,
        r#"["R","p",1800000060]"#,
        r#"[]"#,
        r#"null"#,
        r#"not json"#,
    ] {
        let token = hs256_jwt(SECRET, header, claims);
        assert!(k.verify(&token, NOW).is_err(), "{claims}");
    }
}

/// Exhaustive over every ASCII substitution at the places where base64 is most
/// forgiving: the last characters of each part (trailing bits) and the separators.
#[test]
fn every_substitution_near_part_boundaries_is_rejected() {
    let k = keys();
    for form in [Form::Jwt, Form::Legacy] {
        let token = mint(&k, form, "ROOM", "player-1", NOW + 600);
        let bytes = token.as_bytes();
        let mut positions: Vec<usize> = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'.' {
                positions.extend(i.saturating_sub(3)..=(i + 3).min(bytes.len() - 1));
            }
        }
        positions.extend(bytes.len().saturating_sub(4)..bytes.len());
        positions.extend(0..4);
        positions.sort_unstable();
        positions.dedup();
        for &i in &positions {
            for b in 0u8..128 {
                if b == bytes[i] {
                    continue;
                }
                let mut changed = bytes.to_vec();
                changed[i] = b;
                let changed = String::from_utf8(changed).expect("ASCII");
                assert!(
                    k.verify(&changed, NOW).is_err(),
                    "{form:?}: byte {i} set to {b:#04x} still verifies: {changed}"
                );
            }
        }
    }
}
