//! Join tokens: verification of both accepted forms, and minting.
//!
//! 1. JWT HS256 `{roomCode, playerId, exp, iat}` (what the admin plane mints).
//! 2. The legacy form of the existing Next.js app:
//!    `base64url(JSON{roomCode, playerId, exp})` "." base64url(HMAC-SHA256(secret, part1))`.
//!
//! Both are HMAC-SHA256 under the shared secret; a token with three dot-separated parts
//! is read as a JWT, two parts as legacy, anything else is malformed. Both are checked
//! here by hand, one way: the JWT header is parsed strictly (a library would accept
//! headers and claim shapes we do not understand), the signature is compared in
//! constant time, and the claims must be a JSON object of exactly typed fields.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::limits;

/// The longest token lifetime accepted when none is configured (24 h, the default of
/// `ADMIN_TOKEN_MAX_TTL_SECONDS`).
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 86_400;

/// Clock skew tolerated between the minter and this server: how far in the future
/// `iat` and `nbf` may be, and how much longer than the maximum lifetime `exp` may
/// lie ahead of our clock. Expiry itself has no leeway.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// What a valid token grants: one player in one room.
/// Only serialized (for minting): claims are read through `WireClaims`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub room_code: String,
    pub player_id: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// The claims as they may arrive, every field exactly typed (`exp` a non-negative
/// integer, not a float or a string), read only from a JSON object (`json_object`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireClaims {
    room_code: String,
    player_id: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    /// No audience is configured, so a token meant for one is not for us.
    #[serde(default, deserialize_with = "present")]
    aud: Option<serde::de::IgnoredAny>,
}

/// The JWT header fields we judge; others (`kid`, …) are ignored.
#[derive(Deserialize)]
struct JwtHeader {
    #[serde(default, deserialize_with = "present")]
    alg: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    typ: Option<serde_json::Value>,
    /// Critical extensions: we implement none, so any `crit` (even `null` or `[]`)
    /// means the token needs something we do not do (RFC 7515 §4.1.11).
    #[serde(default, deserialize_with = "present")]
    crit: Option<serde::de::IgnoredAny>,
}

/// `Some` whenever the field is in the JSON, `null` included (plain `Option` reads
/// `null` as absent).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token algorithm is not HS256")]
    WrongAlgorithm,
    /// A JWT header we cannot honour: `crit`, or a `typ` other than `JWT`.
    #[error("token header is not supported")]
    UnsupportedHeader,
    /// `nbf` or `iat` lies in the future (beyond the clock skew).
    #[error("token is not valid yet")]
    NotYetValid,
    /// `exp - iat`, or `exp - now`, exceeds the configured maximum lifetime.
    #[error("token lifetime is too long")]
    LifetimeTooLong,
}

/// Verifies and mints join tokens under one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    secret: Vec<u8>,
    encoding: EncodingKey,
    /// The longest lifetime a token may have (`ADMIN_TOKEN_MAX_TTL_SECONDS`).
    max_lifetime_secs: u64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(<secret>)")
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKeys {
    /// Keys for `secret`, accepting tokens that live at most `max_lifetime_secs`.
    pub fn new(secret: &[u8], max_lifetime_secs: u64) -> TokenKeys {
        TokenKeys {
            secret: secret.to_vec(),
            encoding: EncodingKey::from_secret(secret),
            max_lifetime_secs,
        }
    }

    /// Verifies a token of either form at time `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > limits::TOKEN_MAX {
            return Err(TokenError::Malformed);
        }
        let claims = match token.split('.').count() {
            3 => self.verify_jwt(token)?,
            2 => self.verify_legacy(token)?,
            _ => return Err(TokenError::Malformed),
        };
        self.check_times(&claims, now)?;
        Ok(claims)
    }

    /// Expiry with no leeway; then the lifetime cap, so a stolen or hand-made token
    /// with `exp` in 2100 (or `u64::MAX`) is not good forever; then `iat` and `nbf`.
    fn check_times(&self, claims: &Claims, now: u64) -> Result<(), TokenError> {
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        let max = self.max_lifetime_secs;
        if claims.exp - now > max.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::LifetimeTooLong);
        }
        if let Some(iat) = claims.iat {
            if claims.exp.saturating_sub(iat) > max {
                return Err(TokenError::LifetimeTooLong);
            }
            if iat > now.saturating_add(CLOCK_SKEW_SECS) {
                return Err(TokenError::NotYetValid);
            }
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(CLOCK_SKEW_SECS))
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }

    fn verify_jwt(&self, token: &str) -> Result<Claims, TokenError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, body) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        check_header(&decode_part(header)?)?;
        self.check_signature(signed, signature)?;
        parse_claims(&decode_part(body)?)
    }

    fn verify_legacy(&self, token: &str) -> Result<Claims, TokenError> {
        let (body, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        // The signature is checked before the body is decoded, so a forged body is
        // a bad signature whatever it holds.
        self.check_signature(body, signature)?;
        parse_claims(&decode_part(body)?)
    }

    /// HMAC-SHA256 of `signed` against the base64url `signature`, in constant time.
    fn check_signature(&self, signed: &str, signature: &str) -> Result<(), TokenError> {
        let signature = decode_part(signature)?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    }

    /// Mints a JWT for `player_id` in `room_code`, valid for `ttl_secs` from `now`.
    pub fn mint_jwt(&self, room_code: &str, player_id: &str, now: u64, ttl_secs: u64) -> String {
        let claims = Claims {
            room_code: room_code.to_string(),
            player_id: player_id.to_string(),
            exp: now.saturating_add(ttl_secs),
            iat: Some(now),
            nbf: None,
        };
        // Encoding HS256 with an in-memory key cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// Mints a token in the legacy two-part form (as the existing Next.js app does).
    pub fn mint_legacy(&self, room_code: &str, player_id: &str, exp: u64) -> String {
        let body = serde_json::json!({"roomCode": room_code, "playerId": player_id, "exp": exp});
        let body = URL_SAFE_NO_PAD.encode(body.to_string());
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{signature}")
    }
}

/// Decodes one base64url part (no padding, canonical).
fn decode_part(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)
}

/// Reads a JSON object into `T`. serde's derived structs also accept a JSON array
/// (fields by position), so anything but an object is refused first; a duplicate
/// field or trailing text is an error too.
fn json_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, TokenError> {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(TokenError::Malformed);
    }
    serde_json::from_slice(json).map_err(|_| TokenError::Malformed)
}

/// The header must be a JSON object with `alg` exactly `HS256`, no `crit`, and a
/// `typ`, if any, of `JWT`.
fn check_header(json: &[u8]) -> Result<(), TokenError> {
    let header: JwtHeader = json_object(json)?;
    match header.alg {
        Some(serde_json::Value::String(alg)) if alg == "HS256" => {}
        Some(serde_json::Value::String(_)) => return Err(TokenError::WrongAlgorithm),
        _ => return Err(TokenError::Malformed),
    }
    if header.crit.is_some() {
        return Err(TokenError::UnsupportedHeader);
    }
    match header.typ {
        None => Ok(()),
        Some(serde_json::Value::String(typ)) if typ == "JWT" => Ok(()),
        Some(_) => Err(TokenError::UnsupportedHeader),
    }
}

/// The claims must be a JSON object (not an array read by position) of exactly typed
/// fields, with no `aud`.
fn parse_claims(json: &[u8]) -> Result<Claims, TokenError> {
    let wire: WireClaims = json_object(json)?;
    if wire.aud.is_some() {
        return Err(TokenError::Malformed);
    }
    Ok(Claims {
        room_code: wire.room_code,
        player_id: wire.player_id,
        exp: wire.exp,
        iat: wire.iat,
        nbf: wire.nbf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn keys() -> TokenKeys {
        TokenKeys::new(b"test-secret", DEFAULT_MAX_LIFETIME_SECS)
    }

    #[test]
    fn both_forms_round_trip() {
        let k = keys();
        for token in [
            k.mint_jwt("ROOM", "p1", NOW, 60),
            k.mint_legacy("ROOM", "p1", NOW + 60),
        ] {
            let claims = k.verify(&token, NOW).expect("valid");
            assert_eq!(claims.room_code, "ROOM");
            assert_eq!(claims.player_id, "p1");
        }
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let k = keys();
        assert_eq!(
            k.verify(&k.mint_jwt("R", "p", NOW - 120, 60), NOW),
            Err(TokenError::Expired)
        );
        assert_eq!(
            k.verify(&k.mint_legacy("R", "p", NOW), NOW),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn other_secrets_are_rejected() {
        let other = TokenKeys::new(b"other", DEFAULT_MAX_LIFETIME_SECS);
        let k = keys();
        assert_eq!(
            k.verify(&other.mint_jwt("R", "p", NOW, 60), NOW),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            k.verify(&other.mint_legacy("R", "p", NOW + 60), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_rejected() {
        let k = keys();
        let body = URL_SAFE_NO_PAD.encode(r#"{"roomCode":"R","playerId":"p","exp":9999999999}"#);
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS512","typ":"JWT"}"#,
        ] {
            let token = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(header));
            assert!(k.verify(&token, NOW).is_err(), "{header}");
        }
    }

    #[test]
    fn tampered_claims_are_rejected() {
        let k = keys();
        let token = k.mint_legacy("R", "p", NOW + 60);
        let (_, sig) = token.split_once('.').unwrap_or_default();
        let forged =
            URL_SAFE_NO_PAD.encode(r#"{"roomCode":"R","playerId":"host","exp":9999999999}"#);
        assert_eq!(
            k.verify(&format!("{forged}.{sig}"), NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let k = keys();
        for token in ["", "abc", "a.b.c.d", "!!.!!", "a.b.c", &"x".repeat(5000)] {
            assert!(k.verify(token, NOW).is_err(), "{token}");
        }
    }

    /// A JWT with `header` and `claims`, correctly signed with the test secret.
    fn signed_jwt(header: &str, claims: &str) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut mac = keys().mac();
        mac.update(signed.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{signature}")
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    #[test]
    fn lifetime_is_capped_at_the_maximum() {
        let k = keys();
        let max = DEFAULT_MAX_LIFETIME_SECS;
        // Exactly the maximum is fine, from the minter and as seen from our clock.
        assert!(k.verify(&k.mint_jwt("R", "p", NOW, max), NOW).is_ok());
        assert!(k.verify(&k.mint_legacy("R", "p", NOW + max), NOW).is_ok());
        for exp in [NOW + max + CLOCK_SKEW_SECS + 1, 4_102_444_800, u64::MAX] {
            assert_eq!(
                k.verify(&k.mint_legacy("R", "p", exp), NOW),
                Err(TokenError::LifetimeTooLong),
                "{exp}"
            );
        }
        // A JWT issued long ago for a long life is refused even near its end.
        let old = k.mint_jwt("R", "p", NOW - 10 * max, 10 * max + 60);
        assert_eq!(k.verify(&old, NOW), Err(TokenError::LifetimeTooLong));
    }

    #[test]
    fn future_iat_and_nbf_are_not_valid_yet() {
        let k = keys();
        let ahead = NOW + CLOCK_SKEW_SECS + 1;
        let claims = format!(
            r#"{{"roomCode":"R","playerId":"p","exp":{},"iat":{ahead}}}"#,
            ahead + 60
        );
        assert_eq!(
            k.verify(&signed_jwt(HS256, &claims), NOW),
            Err(TokenError::NotYetValid)
        );
        let claims = format!(
            r#"{{"roomCode":"R","playerId":"p","exp":{},"nbf":{ahead}}}"#,
            NOW + 600
        );
        let token = signed_jwt(HS256, &claims);
        assert_eq!(k.verify(&token, NOW), Err(TokenError::NotYetValid));
        assert!(k.verify(&token, ahead).is_ok(), "valid once nbf has come");
        // Within the clock skew is accepted.
        let claims = format!(
            r#"{{"roomCode":"R","playerId":"p","exp":{},"nbf":{}}}"#,
            NOW + 600,
            NOW + 30
        );
        assert!(k.verify(&signed_jwt(HS256, &claims), NOW).is_ok());
    }

    #[test]
    fn headers_we_do_not_understand_are_refused() {
        let k = keys();
        let claims = format!(r#"{{"roomCode":"R","playerId":"p","exp":{}}}"#, NOW + 60);
        assert!(
            k.verify(&signed_jwt(r#"{"alg":"HS256"}"#, &claims), NOW)
                .is_ok()
        );
        for (header, want) in [
            (
                r#"{"alg":"HS256","crit":["exp"]}"#,
                TokenError::UnsupportedHeader,
            ),
            (
                r#"{"alg":"HS256","crit":null}"#,
                TokenError::UnsupportedHeader,
            ),
            (
                r#"{"alg":"HS256","typ":"JWS"}"#,
                TokenError::UnsupportedHeader,
            ),
            (
                r#"{"alg":"HS256","typ":null}"#,
                TokenError::UnsupportedHeader,
            ),
            (r#"{"typ":"JWT"}"#, TokenError::Malformed),
            (r#"{"alg":null}"#, TokenError::Malformed),
            (r#"{"alg":"HS256","alg":"HS256"}"#, TokenError::Malformed),
            (r#"["HS256"]"#, TokenError::Malformed),
            (r#"{"alg":"none"}"#, TokenError::WrongAlgorithm),
        ] {
            assert_eq!(
                k.verify(&signed_jwt(header, &claims), NOW),
                Err(want),
                "{header}"
            );
        }
    }

    #[test]
    fn claims_must_be_an_exactly_typed_object() {
        let k = keys();
        let exp = NOW + 60;
        for claims in [
            format!(r#"["R","p",{exp}]"#),
            format!(r#"{{"roomCode":"R","playerId":"p","exp":{exp}.0}}"#),
            format!(r#"{{"roomCode":"R","playerId":"p","exp":"{exp}"}}"#),
            format!(r#"{{"roomCode":"R","playerId":"p","exp":{exp},"aud":"x"}}"#),
            format!(r#"{{"roomCode":"R","playerId":"p","exp":{exp},"exp":{exp}}}"#),
            format!(r#"{{"roomCode":"R","playerId":"p","exp":{exp}}} x"#),
        ] {
            assert_eq!(
                k.verify(&signed_jwt(HS256, &claims), NOW),
                Err(TokenError::Malformed),
                "{claims}"
            );
            // The same body in the legacy form.
            let body = URL_SAFE_NO_PAD.encode(&claims);
            let mut mac = k.mac();
            mac.update(body.as_bytes());
            let legacy = format!(
                "{body}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            );
            assert_eq!(
                k.verify(&legacy, NOW),
                Err(TokenError::Malformed),
                "legacy {claims}"
            );
        }
    }
}
