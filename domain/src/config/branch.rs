//! Branch names and branch points: where a tenant's branches start and what they may be called.

use serde::{Deserialize, Serialize};

/// The branch every tenant starts with.
pub const MAIN_BRANCH: &str = "main";

/// Where a branch starts: a branch and one of its revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchPoint {
    /// The branch.
    pub branch: String,
    /// The revision of that branch.
    pub revision: u64,
}

/// Whether `name` may name a new branch: 1 to 63 lower-case letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit, and not `main`.
pub fn valid_branch_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if name == MAIN_BRANCH {
        Err("`main` exists in every tenant and cannot be created".to_owned())
    } else if !starts_well || !rest_ok || name.len() > 63 {
        Err(format!(
            "`{name}` is not a branch name: 1 to 63 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit"
        ))
    } else {
        Ok(())
    }
}
