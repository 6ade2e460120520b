//! Bearer tokens: intake and admin tokens are separate, several of each may be valid at once
//! (rotation), and they are compared in constant time.

use http::{HeaderMap, StatusCode, header};
use subtle::ConstantTimeEq;

use crate::response::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Intake,
    Admin,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Intake => "intake",
            Scope::Admin => "admin",
        }
    }
}

/// The configured tokens. `Debug` never shows them.
#[derive(Clone)]
pub struct Tokens {
    pub intake: Vec<String>,
    pub admin: Vec<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokens {{ intake: {} token(s), admin: {} token(s) }}",
            self.intake.len(),
            self.admin.len()
        )
    }
}

fn matches_any(candidate: &[u8], tokens: &[String]) -> bool {
    // Check every token, so the time taken does not tell which one (or whether any) matched.
    tokens.iter().fold(false, |found, token| {
        found | bool::from(candidate.ct_eq(token.as_bytes()))
    })
}

impl Tokens {
    /// 401 without a valid token; 403 for a valid token of the other scope.
    pub fn check(&self, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!(
                    "missing Authorization header: send `Authorization: Bearer <{} token>`",
                    scope.name()
                ),
            ));
        };
        let Some(candidate) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Authorization must use the Bearer scheme",
            ));
        };
        let (wanted, other) = match scope {
            Scope::Intake => (&self.intake, &self.admin),
            Scope::Admin => (&self.admin, &self.intake),
        };
        if matches_any(candidate, wanted) {
            return Ok(());
        }
        if matches_any(candidate, other) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this token may not be used here: this endpoint needs an {} token",
                    scope.name()
                ),
            ));
        }
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("invalid {} token", scope.name()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let tokens = Tokens {
            intake: vec!["in1".into(), "in2".into()],
            admin: vec!["ad".into()],
        };
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        let status = |h: &HeaderMap, s| tokens.check(h, s).err().map(|e| e.status.as_u16());
        assert_eq!(status(&HeaderMap::new(), Scope::Intake), Some(401));
        assert_eq!(status(&with("Bearer in2"), Scope::Intake), None);
        assert_eq!(status(&with("Bearer in1"), Scope::Admin), Some(403));
        assert_eq!(status(&with("Bearer ad"), Scope::Intake), Some(403));
        assert_eq!(status(&with("Bearer ad"), Scope::Admin), None);
        assert_eq!(status(&with("Bearer nope"), Scope::Admin), Some(401));
        assert_eq!(status(&with("Basic in1"), Scope::Intake), Some(401));
        assert!(!format!("{tokens:?}").contains("in1"));
    }
}
