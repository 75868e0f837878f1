//! API keys: their text form, and the hash that is all the store keeps of a secret.
//!
//! A key reads `csk1.<tenant>.<key id>.<secret>`: the tenant in base64url (`*` for an operator
//! key), 16 hex digits of key id and 32 random bytes of secret in base64url. The tenant and id
//! say which row to check; the secret is compared by its SHA-256, in constant time. A secret
//! of 256 random bits needs no slow hash: nothing can be guessed from its digest.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::domain::TenantId;

/// The prefix of this key format.
const PREFIX: &str = "csk1";

/// The tenant column of an operator key.
pub const OPERATOR_TENANT: &str = "*";

/// Whom a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyOwner {
    Tenant(TenantId),
    /// Acts for the tenant each request names.
    Operator,
}

impl KeyOwner {
    /// The value of the `tenant_id` column.
    pub fn column(&self) -> &str {
        match self {
            Self::Tenant(tenant) => tenant.as_str(),
            Self::Operator => OPERATOR_TENANT,
        }
    }

    pub fn from_column(text: &str) -> Option<Self> {
        if text == OPERATOR_TENANT {
            Some(Self::Operator)
        } else {
            TenantId::parse(text).ok().map(Self::Tenant)
        }
    }
}

/// A key as presented, split into its parts (not yet checked against the store).
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey {
    pub owner: KeyOwner,
    pub key_id: String,
    secret: String,
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PresentedKey")
            .field("owner", &self.owner)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl PresentedKey {
    /// Splits a key's text; `None` when it is not a key of this format.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let (Some(PREFIX), Some(tenant), Some(key_id), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let tenant = String::from_utf8(URL_SAFE_NO_PAD.decode(tenant).ok()?).ok()?;
        let owner = KeyOwner::from_column(&tenant)?;
        let valid_id = key_id.len() == 16 && key_id.bytes().all(|byte| byte.is_ascii_hexdigit());
        let valid_secret = secret.len() == 43 && URL_SAFE_NO_PAD.decode(secret).is_ok();
        (valid_id && valid_secret).then(|| Self {
            owner,
            key_id: key_id.to_ascii_lowercase(),
            secret: secret.to_owned(),
        })
    }

    /// The digest the store keeps.
    pub fn secret_sha256(&self) -> Vec<u8> {
        Sha256::digest(self.secret.as_bytes()).to_vec()
    }

    /// Whether `stored` is this key's digest, compared in constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        let digest = self.secret_sha256();
        digest.len() == stored.len()
            && digest
                .iter()
                .zip(stored)
                .fold(0_u8, |difference, (left, right)| {
                    difference | (left ^ right)
                })
                == 0
    }
}

/// A new key: its text (shown once) and what the store keeps.
#[derive(Clone)]
pub struct NewKey {
    pub text: String,
    pub key_id: String,
    pub secret_sha256: Vec<u8>,
}

impl NewKey {
    /// A fresh random key for `owner`.
    pub fn generate(owner: &KeyOwner) -> Self {
        let mut rng = rand::rng();
        let mut id = [0_u8; 8];
        rng.fill_bytes(&mut id);
        let mut secret = [0_u8; 32];
        rng.fill_bytes(&mut secret);
        let key_id: String = id.iter().map(|byte| format!("{byte:02x}")).collect();
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let text = format!(
            "{PREFIX}.{}.{key_id}.{secret}",
            URL_SAFE_NO_PAD.encode(owner.column())
        );
        let secret_sha256 = Sha256::digest(secret.as_bytes()).to_vec();
        Self {
            text,
            key_id,
            secret_sha256,
        }
    }
}

/// SHA-256 of a DER certificate: how a client-certificate principal is recognised.
pub fn certificate_sha256(der: &[u8]) -> Vec<u8> {
    Sha256::digest(der).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_and_matches_only_its_digest() {
        let owner = KeyOwner::Tenant(TenantId::parse("acme.cn-1").expect("tenant"));
        let key = NewKey::generate(&owner);
        let presented = PresentedKey::parse(&key.text).expect("parses");
        assert_eq!(presented.owner, owner);
        assert_eq!(presented.key_id, key.key_id);
        assert!(presented.matches(&key.secret_sha256));
        let other = NewKey::generate(&owner);
        assert!(!presented.matches(&other.secret_sha256));
        assert!(!presented.matches(&[]));
        assert!(!format!("{presented:?}").contains(&key.text[key.text.len() - 10..]));
    }

    #[test]
    fn operator_keys_and_malformed_texts() {
        let key = NewKey::generate(&KeyOwner::Operator);
        assert_eq!(
            PresentedKey::parse(&key.text).map(|key| key.owner),
            Some(KeyOwner::Operator)
        );
        for text in [
            "",
            "csk1",
            "Bearer x",
            &key.text.replace("csk1", "csk2"),
            &format!("{}.extra", key.text),
            &key.text[..key.text.len() - 1],
            // A tenant that is not a tenant id.
            &format!(
                "csk1.{}.0123456789abcdef.{}",
                URL_SAFE_NO_PAD.encode("a b"),
                "A".repeat(43)
            ),
        ] {
            assert_eq!(PresentedKey::parse(text), None, "{text}");
        }
    }
}
