//! The API key: `Authorization: Bearer KEY`, compared in constant time.
//!
//! Both sides are hashed with SHA-256 first and the digests compared with `subtle`, so the
//! time taken reveals neither where a guess first differs nor the key's length.

use super::openai::ApiError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The key clients must present.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key, not even its digest.
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    pub fn new(key: &str) -> Self {
        ApiKey {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// Checks the value of the `Authorization` header (`None`: the header is absent; bytes
    /// because a header need not be text).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized(
                "missing_api_key",
                "this server needs an API key: send it as the header Authorization: Bearer KEY",
            ));
        };
        let Some(presented) = bearer_token(value) else {
            return Err(ApiError::unauthorized(
                "invalid_authorization",
                "the Authorization header must be \"Bearer KEY\"",
            ));
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        if bool::from(digest.ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "invalid_api_key",
                "incorrect API key provided; send the key the server was started with \
                 ([server] api_key or $LLMHOST_API_KEY)",
            ))
        }
    }
}

/// The token after `Bearer ` (the scheme is case-insensitive, as RFC 7235 says).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_key_and_rejects_others() {
        let key = ApiKey::new("s3cret");
        assert!(key.check(Some(b"Bearer s3cret")).is_ok());
        assert!(key.check(Some(b"bearer  s3cret ")).is_ok());
        for (header, code) in [
            (None, "missing_api_key"),
            (Some(&b"Bearer wrong"[..]), "invalid_api_key"),
            (Some(&b"Bearer s3cre"[..]), "invalid_api_key"),
            (Some(&b"Bearer "[..]), "invalid_authorization"),
            (Some(&b"Basic czNjcmV0"[..]), "invalid_authorization"),
            (Some(&b"s3cret"[..]), "invalid_authorization"),
            (Some(&b"Bearer \xff"[..]), "invalid_api_key"),
        ] {
            let e = key.check(header).unwrap_err();
            assert_eq!(
                (e.status, e.kind, e.code),
                (401, "authentication_error", Some(code))
            );
        }
        assert_eq!(format!("{key:?}"), "ApiKey(..)");
    }
}
