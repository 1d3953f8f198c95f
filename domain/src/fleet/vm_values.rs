//! A VM's name, labels, watched images and placement, as the API sets them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tenant::{check_slug, InvalidValue};

/// A VM's name: a slug, unique in its tenant, never reused once the VM is removed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    /// Checks and wraps a name.
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidValue> {
        let value = value.into();
        check_slug(&value)?;
        Ok(Self(value))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VmName {
    type Error = InvalidValue;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<VmName> for String {
    fn from(name: VmName) -> Self {
        name.0
    }
}

impl std::fmt::Display for VmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks one label of a VM: a key of 1 to 63 characters of letters, digits, `.`, `_`, `/` and
/// `-`, and a value of at most 253 characters.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-');
    if key.is_empty() || key.len() > 63 || !key.chars().all(allowed) {
        return Err(
            "a label key has 1 to 63 characters: letters, digits, `.`, `_`, `/` and `-`".into(),
        );
    }
    if value.len() > 253 || value.chars().any(char::is_control) {
        return Err("a label value has at most 253 characters and no control character".into());
    }
    Ok(())
}

/// The most images a VM's agent may be told to watch.
pub const MAX_WATCHED_IMAGES: usize = 32;

/// Checks an image reference a VM's agent is told to watch (`envoyproxy/envoy`,
/// `registry:5000/team/envoy:v1.36`): 1 to 255 characters of letters, digits, `.`, `_`, `-`, `/`,
/// `:` and `@`, starting with a letter or digit.
pub fn check_image(reference: &str) -> Result<(), String> {
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@');
    let starts_well = reference
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if reference.len() > 255 || !starts_well || !reference.chars().all(allowed) {
        return Err(
            "an image reference has 1 to 255 characters: letters, digits, `.`, `_`, `-`, \
                    `/`, `:` and `@`, starting with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// Where a VM is, how it is labelled and what its agent watches, as the API set it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPlacement {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its region.
    pub region: Option<String>,
    /// Its zone.
    pub zone: Option<String>,
    /// Images whose containers its agent reports besides those labelled `efms.node_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch_images: Vec<String>,
}
