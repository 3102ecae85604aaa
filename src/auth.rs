//! Authentication: the `Authorization` header checked against the configured users.

use http::HeaderValue;
use sha2::{Digest, Sha256};

use crate::config::{SecretDigest, UserConfig};

/// The users who may call `/api/proxy`, held only as SHA-256 digests of
/// their secrets so that no plain secret stays in memory after start.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Vec<User>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub org_id: Option<String>,
    digest: SecretDigest,
}

impl Users {
    pub fn new(configs: &[UserConfig]) -> Self {
        let users = configs
            .iter()
            .map(|u| User {
                name: u.name.clone(),
                org_id: u.org_id.clone(),
                digest: u.secret,
            })
            .collect();
        Users { users }
    }

    /// Finds the user whose secret the header carries, in the Dashboard's
    /// form (`Authorization: <secret>`) or as `Bearer <secret>` (RFC 6750
    /// section 2.1).
    ///
    /// Every user's digest is compared, in constant time, whether or not an
    /// earlier one matched: neither the position of a match nor the length
    /// of a common prefix shows in the timing. Comparing digests rather
    /// than secrets also hides the secrets' lengths.
    pub fn authenticate(&self, header: Option<&HeaderValue>) -> Option<&User> {
        let secret = presented_secret(header?)?;
        let digest: [u8; 32] = Sha256::digest(secret).into();

        let mut found = None;
        for user in &self.users {
            if digests_equal(&user.digest.0, &digest) {
                found = Some(user);
            }
        }
        found
    }
}

/// The secret part of the header value; `None` when it is empty.
fn presented_secret(header: &HeaderValue) -> Option<&[u8]> {
    let value = header.as_bytes();
    let secret = match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => value,
    };
    let secret = secret.trim_ascii();
    (!secret.is_empty()).then_some(secret)
}

/// Compares without branching on the data, so the time taken does not
/// depend on where the first difference is.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        let user = |name: &str, org: Option<&str>, secret: &str| UserConfig {
            name: name.into(),
            org_id: org.map(Into::into),
            secret: SecretDigest::of(secret.as_bytes()),
        };
        Users::new(&[
            user("ops", Some("acme"), "s3cret"),
            user("ci", None, "other"),
        ])
    }

    fn who(users: &Users, header: &'static str) -> Option<String> {
        let value = HeaderValue::from_static(header);
        users.authenticate(Some(&value)).map(|u| u.name.clone())
    }

    #[test]
    fn accepts_dashboard_and_bearer_forms() {
        let users = users();
        assert_eq!(who(&users, "s3cret").as_deref(), Some("ops"));
        assert_eq!(who(&users, "Bearer s3cret").as_deref(), Some("ops"));
        assert_eq!(who(&users, "bearer other").as_deref(), Some("ci"));
    }

    #[test]
    fn rejects_missing_empty_wrong_and_prefix_secrets() {
        let users = users();
        assert!(users.authenticate(None).is_none());
        assert_eq!(who(&users, ""), None);
        assert_eq!(who(&users, "Bearer "), None);
        assert_eq!(who(&users, "s3cre"), None);
        assert_eq!(who(&users, "s3cret2"), None);
        assert_eq!(who(&users, "Basic s3cret"), None);
    }

    #[test]
    fn user_debug_does_not_show_the_digest() {
        let users = users();
        let shown = format!("{users:?}");
        assert!(shown.contains("SecretDigest(..)"), "{shown}");
        assert!(!shown.contains("digest: ["), "{shown}");
    }
}
