//! Bearer-token authentication for the admin plane, compared in constant time.

use crate::config::Secret;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

#[derive(Clone)]
pub struct BearerAuth {
    /// `None`: no token configured; the admin plane is bound to loopback instead.
    token: Option<Arc<[u8]>>,
}

impl BearerAuth {
    pub fn new(token: Option<&Secret>) -> BearerAuth {
        BearerAuth {
            token: token.map(|t| Arc::from(t.0.as_slice())),
        }
    }

    /// Whether `header` (the `authorization` metadata value) carries the token.
    pub fn accepts(&self, header: Option<&str>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let given = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or_default();
        given.as_bytes().ct_eq(expected).into()
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.accepts(header) {
            Ok(request)
        } else {
            tracing::warn!("admin_auth_failed");
            Err(Status::unauthenticated(
                "missing or invalid admin token (authorization: Bearer <token>)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_bearer_token() {
        let auth = BearerAuth::new(Some(&Secret(b"0123456789abcdef".to_vec())));
        assert!(auth.accepts(Some("Bearer 0123456789abcdef")));
        assert!(!auth.accepts(Some("Bearer 0123456789abcdeX")));
        assert!(!auth.accepts(Some("Bearer 0123456789abcdef0")));
        assert!(!auth.accepts(Some("0123456789abcdef")));
        assert!(!auth.accepts(None));
        assert!(BearerAuth::new(None).accepts(None));
    }
}
