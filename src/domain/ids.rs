//! Identifiers that cross the API boundary, parsed once.

use std::fmt;

use serde::Serialize;

/// The tenant every row belongs to: 1–63 characters of `A-Z a-z 0-9 . _ -`, starting with a
/// letter or digit (the same rule as the `tenants` table's check).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid_first = text
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphanumeric());
        let valid_rest = text
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "._-".contains(character));
        if text.len() <= 63 && valid_first && valid_rest {
            Ok(Self(text.to_owned()))
        } else {
            Err("must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a letter or digit".to_owned())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Longest source id accepted.
pub const MAX_SOURCE_ID_LEN: usize = 256;

/// A resource's identity in the system that produced it: the idempotency key within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SourceKey {
    /// The producing system (e.g. `hangup_push`, or a named dialer).
    pub system: String,
    /// The source's own id (callid, uuid, callId, …).
    pub id: String,
}

impl SourceKey {
    /// Validates both parts: the system is 1–64 characters of `A-Z a-z 0-9 . _ : -`; the id is
    /// 1–256 characters without control characters.
    pub fn parse(system: &str, id: &str) -> Result<Self, (&'static str, String)> {
        let system_valid = !system.is_empty()
            && system.len() <= 64
            && system
                .chars()
                .all(|character| character.is_ascii_alphanumeric() || "._:-".contains(character));
        if !system_valid {
            return Err((
                "source_system",
                "must be 1-64 characters of letters, digits, '.', '_', ':' or '-'".to_owned(),
            ));
        }
        let id = id.trim();
        if id.is_empty() {
            return Err(("source_id", "must not be empty".to_owned()));
        }
        if id.len() > MAX_SOURCE_ID_LEN || id.chars().any(char::is_control) {
            return Err((
                "source_id",
                format!("must be at most {MAX_SOURCE_ID_LEN} bytes without control characters"),
            ));
        }
        Ok(Self {
            system: system.to_owned(),
            id: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_follow_the_table_rule() {
        assert!(TenantId::parse("acme").is_ok());
        assert!(TenantId::parse("acme-cn.prod_1").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("-acme").is_err());
        assert!(TenantId::parse("acme corp").is_err());
        assert!(TenantId::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn source_keys_reject_empty_and_oversized_ids() {
        assert_eq!(
            SourceKey::parse("hangup_push", " db57f262 ").map(|key| key.id),
            Ok("db57f262".to_owned())
        );
        assert_eq!(
            SourceKey::parse("hangup_push", "").unwrap_err().0,
            "source_id"
        );
        assert_eq!(SourceKey::parse("", "x").unwrap_err().0, "source_system");
        assert_eq!(SourceKey::parse("a b", "x").unwrap_err().0, "source_system");
        assert_eq!(
            SourceKey::parse("s", &"x".repeat(257)).unwrap_err().0,
            "source_id"
        );
    }
}
