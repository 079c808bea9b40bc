//! Join tokens: verification of both accepted forms, and minting.
//!
//! 1. JWT HS256 `{roomCode, playerId, exp, iat}` (what the admin plane mints).
//! 2. The legacy form of the existing Next.js app:
//!    `base64url(JSON{roomCode, playerId, exp}) "." base64url(HMAC-SHA256(secret, part1))`.
//!
//! Both are HMAC-SHA256 under the shared secret; a token with three dot-separated parts
//! is read as a JWT, two parts as legacy, anything else is malformed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::limits;

/// What a valid token grants: one player in one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub room_code: String,
    pub player_id: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
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
}

/// Verifies and mints join tokens under one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    secret: Vec<u8>,
    decoding: DecodingKey,
    encoding: EncodingKey,
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
    pub fn new(secret: &[u8]) -> TokenKeys {
        TokenKeys {
            secret: secret.to_vec(),
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
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
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn verify_jwt(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::WrongAlgorithm);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is judged below against the caller's clock, with no leeway, the same
        // way for both token forms.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                _ => TokenError::Malformed,
            },
        )?;
        Ok(data.claims)
    }

    fn verify_legacy(&self, token: &str) -> Result<Claims, TokenError> {
        let (body, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
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
            exp: now + ttl_secs,
            iat: Some(now),
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn keys() -> TokenKeys {
        TokenKeys::new(b"test-secret")
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
        let other = TokenKeys::new(b"other");
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
}
