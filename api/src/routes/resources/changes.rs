//! What a create or replace body asks to change: the Envoy resource itself, or a declaration from
//! a template; and the change that restores a stored resource.

use efms_domain::config::{Change, Expect};
use efms_domain::envoy::{ResourceKind, Violation};
use serde_json::Value;

use crate::error::{ApiError, FieldError};

/// Schema violations as a 422.
pub fn invalid(violations: Vec<Violation>) -> ApiError {
    ApiError::Validation(
        violations
            .into_iter()
            .map(|violation| FieldError::at(violation.pointer, violation.message))
            .collect(),
    )
}

/// The name of the resource a change touches.
pub(super) fn change_name(change: &Change) -> String {
    change.key().1.to_owned()
}

pub use efms_domain::config::writes::TEMPLATE_KEY;

/// The change a create or replace body asks for: the resource itself, or a declaration from a
/// template (`efms_domain::config::writes::change_of`); what is wrong is a 422.
pub fn change_of(
    kind: ResourceKind,
    body: &Value,
    expect: Expect,
    path_name: Option<&str>,
) -> Result<Change, ApiError> {
    efms_domain::config::writes::change_of(kind, body, expect, path_name).map_err(invalid)
}

/// The change that restores a stored resource: its document, or its template declaration.
pub fn restore(
    kind: ResourceKind,
    document: &Value,
    derivation: Option<&Value>,
    expect: Expect,
) -> Result<Change, ApiError> {
    efms_domain::config::plans::restore(kind, document, derivation, expect).map_err(invalid)
}

/// 422 when the body names another resource than the path.
pub(super) fn check_path_name(
    kind: ResourceKind,
    name: &str,
    change: &Change,
) -> Result<(), ApiError> {
    let body_name = change_name(change);
    if body_name == name {
        Ok(())
    } else {
        Err(renamed(kind, name, &body_name))
    }
}

/// The 422 of a body naming `body_name` where the path names `name`.
pub(super) fn renamed(kind: ResourceKind, name: &str, body_name: &str) -> ApiError {
    ApiError::Validation(vec![FieldError::at(
        format!("/{}", kind.name_field()),
        format!(
            "the body names `{body_name}`, the path `{name}`; renaming is a create and a delete"
        ),
    )])
}
