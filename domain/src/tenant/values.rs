//! Value objects of a tenant: its slug and its display name, valid by construction.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The namespace of tenant ids: a tenant's id is the UUIDv5 of its slug in this namespace, so every
/// replica derives the same id, and two concurrent creations of one slug meet on one event stream
/// where optimistic concurrency lets exactly one win.
const TENANT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6e3c_9f52_8a41_4d0b_9c57_2f1e_a8d4_7b90);

/// Why a slug or a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// The rule of every slug (a tenant's, a VM's): 1 to 63 characters of lowercase ASCII letters,
/// digits and inner hyphens, like a DNS label.
pub fn check_slug(value: &str) -> Result<(), InvalidValue> {
    let bytes = value.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    if bytes.is_empty() || bytes.len() > 63 {
        return Err(InvalidValue(format!(
            "a slug has 1 to 63 characters, this one has {}",
            value.chars().count()
        )));
    }
    if !bytes.iter().all(allowed) {
        return Err(InvalidValue(
            "a slug may contain only lowercase letters a-z, digits and hyphens".into(),
        ));
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err(InvalidValue(
            "a slug may not start or end with a hyphen".into(),
        ));
    }
    Ok(())
}

/// A tenant's slug: the stable name that addresses it everywhere (`/api/v1/tenants/{slug}`).
///
/// 1 to 63 characters of lowercase ASCII letters, digits and inner hyphens, like a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantSlug(String);

impl TenantSlug {
    /// Checks and wraps a slug.
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_slug(&value)?;
        Ok(Self(value))
    }

    /// The slug as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant id this slug stands for (stable, derived from the slug alone).
    pub fn tenant_id(&self) -> Uuid {
        Uuid::new_v5(&TENANT_ID_NAMESPACE, self.0.as_bytes())
    }
}

impl TryFrom<String> for TenantSlug {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<TenantSlug> for String {
    fn from(slug: TenantSlug) -> Self {
        slug.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant's display name: 1 to 200 characters, no control characters, no surrounding blanks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantName(String);

impl TenantName {
    /// Checks and wraps a display name.
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidValue> {
        check_text(value.into(), "a name", 200).map(Self)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a tenant was suspended, as the operator wrote it: 1 to 500 characters, no control
/// characters, no surrounding blanks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SuspensionReason(String);

impl SuspensionReason {
    /// Checks and wraps a reason.
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidValue> {
        check_text(value.into(), "a reason", 500).map(Self)
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SuspensionReason {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<SuspensionReason> for String {
    fn from(reason: SuspensionReason) -> Self {
        reason.0
    }
}

/// Checks a line of text written by a person: 1 to `max` characters, no control characters, no
/// surrounding blanks; `what` names it in the refusal.
fn check_text(value: String, what: &str, max: usize) -> Result<String, InvalidValue> {
    let length = value.chars().count();
    if length == 0 || length > max {
        return Err(InvalidValue(format!(
            "{what} has 1 to {max} characters, this one has {length}"
        )));
    }
    if value.trim() != value {
        return Err(InvalidValue(format!(
            "{what} may not start or end with white space"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidValue(format!(
            "{what} may not contain control characters"
        )));
    }
    Ok(value)
}

impl TryFrom<String> for TenantName {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<TenantName> for String {
    fn from(name: TenantName) -> Self {
        name.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_accepts_dns_label_shapes() {
        for ok in ["a", "acme", "acme-prod", "a1-b2", &"x".repeat(63)] {
            assert!(TenantSlug::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn slug_refuses_what_is_not_a_dns_label() {
        for bad in [
            "",
            "Acme",
            "-acme",
            "acme-",
            "ac_me",
            "acme prod",
            "é",
            &"x".repeat(64),
        ] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_id_is_stable_and_distinct_per_slug() {
        let acme = TenantSlug::parse("acme").unwrap();
        assert_eq!(
            acme.tenant_id(),
            TenantSlug::parse("acme").unwrap().tenant_id()
        );
        assert_ne!(
            acme.tenant_id(),
            TenantSlug::parse("acme2").unwrap().tenant_id()
        );
        assert_eq!(acme.tenant_id().get_version_num(), 5);
    }

    #[test]
    fn name_refuses_blank_padded_and_control_text() {
        assert!(TenantName::parse("Acme Corp").is_ok());
        for bad in ["", " Acme", "Acme ", "Ac\nme", &"n".repeat(201)] {
            assert!(TenantName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reason_takes_500_characters_and_refuses_blank_or_longer_text() {
        assert!(SuspensionReason::parse("r".repeat(500)).is_ok());
        for bad in ["", " unpaid", "un\tpaid", &"r".repeat(501)] {
            assert!(SuspensionReason::parse(bad).is_err(), "{bad:?}");
        }
    }
}
